"""synthref language: what an expression means (`Spec`, `resolve`) and how it is worded.

An expression is first a meaning over the scene (a filter of attributes, plus a direction
and an anchor for positions and relations); `resolve` interprets it and a meaning is kept
only when it picks out exactly its object with clear margins. The wording is drawn last,
from the word lists and templates here, so the same meaning reads in several ways.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from lavt.data.synthref.scenes import COLOURS, SceneObject

KINDS: tuple[str, ...] = ("attribute", "position", "relation")

SHAPE_WORDS = {
    "circle": ("circle", "circle", "disc"),
    "square": ("square", "square", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "ring": ("ring", "ring", "donut", "hoop"),
    "cross": ("cross", "cross", "plus sign"),
}
COLOUR_WORDS = {c: (c,) for c in COLOURS}
COLOUR_WORDS["purple"] = ("purple", "purple", "violet")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
COMPARATIVE_WORDS = {"small": ("smaller",), "large": ("larger", "bigger")}
GENERIC_NOUNS = ("shape", "object", "thing", "figure")

_MARGIN = 0.08  # position and relation margins, as a fraction of the image width/height
_NEAR_RATIO = 1.4  # "closest to": the next candidate is at least 1.4x farther from the anchor


# ---------------------------------------------------------------------- meaning
Filter = tuple[tuple[str, str], ...]  # sorted (attribute, value) pairs, e.g. (("colour", "red"),)
_ATTRS = ("size", "colour", "shape")


@dataclass(frozen=True)
class Spec:
    """The meaning of one expression, independent of its wording.

    kind 'attribute': the objects matching `target`. 'position': the extreme object of
    `target` in `direction` (left/right/top/bottom). 'relation': the objects of `target`
    in relation `direction` (left/right/above/below/near) to the unique `anchor` object.
    """

    kind: str
    target: Filter
    direction: str = ""
    anchor: Filter = ()


def _filters(obj: SceneObject, max_attrs: int = 3) -> list[Filter]:
    out = []
    for k in range(0, max_attrs + 1):
        for attrs in combinations(_ATTRS, k):
            out.append(tuple((a, obj.attribute(a)) for a in attrs))
    return out


def _match(objects: Sequence[SceneObject], flt: Filter, index: dict[Filter, list[int]] | None = None) -> list[int]:
    if index is not None:
        return index.get(flt, [])
    return [i for i, o in enumerate(objects) if all(o.attribute(a) == v for a, v in flt)]


def filter_index(objects: Sequence[SceneObject]) -> dict[Filter, list[int]]:
    """Members of every filter that some object satisfies (filters are sorted by _ATTRS order)."""
    index: dict[Filter, list[int]] = {}
    for i, obj in enumerate(objects):
        for flt in _filters(obj):
            index.setdefault(flt, []).append(i)
    return index


def resolve(spec: Spec, objects: Sequence[SceneObject], width: int, height: int,
            index: dict[Filter, list[int]] | None = None) -> list[int] | None:
    """Indices of the objects `spec` refers to, or None when the expression is vague or needless.

    None covers: a position or relation over a class with fewer than two members (the
    attribute alone would do), an extreme without a clear margin, an anchor that is not
    unique, and a relation that some other candidate satisfies only borderline.
    """
    members = _match(objects, spec.target, index)
    if spec.kind == "attribute":
        return members
    if len(members) < 2:
        return None
    mx, my = _MARGIN * width, _MARGIN * height
    if spec.kind == "position":
        key = {"left": lambda o: o.cx, "right": lambda o: -o.cx, "top": lambda o: o.cy,
               "bottom": lambda o: -o.cy}[spec.direction]
        margin = mx if spec.direction in ("left", "right") else my
        ranked = sorted(members, key=lambda i: key(objects[i]))
        if key(objects[ranked[1]]) - key(objects[ranked[0]]) < margin:
            return None
        return [ranked[0]]
    if spec.kind == "relation":
        anchors = _match(objects, spec.anchor, index)
        if len(anchors) != 1:
            return None
        a = objects[anchors[0]]
        candidates = [i for i in members if i != anchors[0]]
        if spec.direction == "near":
            if not candidates:
                return None
            dist = sorted((math.hypot(objects[i].cx - a.cx, objects[i].cy - a.cy), i) for i in candidates)
            if len(dist) > 1 and dist[1][0] < _NEAR_RATIO * dist[0][0]:
                return None
            return [dist[0][1]]
        offset, margin = {
            "left": (lambda o: a.cx - o.cx, mx), "right": (lambda o: o.cx - a.cx, mx),
            "above": (lambda o: a.cy - o.cy, my), "below": (lambda o: o.cy - a.cy, my),
        }[spec.direction]
        holds = []
        for i in candidates:
            d = offset(objects[i])
            if d >= margin:
                holds.append(i)
            elif d > 0:  # on that side, but barely: a reader could go either way
                return None
        return holds
    raise ValueError(spec.kind)


def _candidate_specs(objects: Sequence[SceneObject], t: int, kinds: Iterable[str], width: int, height: int,
                     rng: np.random.Generator, index: dict[Filter, list[int]]) -> dict[str, list[Spec]]:
    """Every spec of the allowed kinds that refers to exactly object `t`."""
    target = objects[t]
    out: dict[str, list[Spec]] = {}
    for kind in kinds:
        specs: list[Spec] = []
        if kind == "attribute":
            specs = [Spec("attribute", f) for f in _filters(target)[1:]]
        elif kind == "position":
            specs = [Spec("position", f, d) for f in _filters(target) for d in ("left", "right", "top", "bottom")]
        elif kind == "relation":
            for a, anchor in enumerate(objects):
                if a == t:
                    continue
                unique = [f for f in _filters(anchor, 2)[1:] if _match(objects, f, index) == [a]]
                if not unique:
                    continue
                with_shape = [f for f in unique if any(k == "shape" for k, _ in f)]
                pool = with_shape or unique
                anchor_filter = pool[int(rng.integers(len(pool)))]
                for f in _filters(target, 2):
                    for d in ("left", "right", "above", "below", "near"):
                        specs.append(Spec("relation", f, d, anchor_filter))
        out[kind] = [s for s in specs if resolve(s, objects, width, height, index) == [t]]
    return out


# ---------------------------------------------------------------------- wording
def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(flt: Filter, rng: np.random.Generator, comparative: bool = False) -> str:
    values = dict(flt)
    words = []
    if "size" in values:
        words.append(_pick(rng, (COMPARATIVE_WORDS if comparative else SIZE_WORDS)[values["size"]]))
    if "colour" in values:
        words.append(_pick(rng, COLOUR_WORDS[values["colour"]]))
    if "shape" in values:
        words.append(_pick(rng, SHAPE_WORDS[values["shape"]]))
    else:
        words.append(_pick(rng, GENERIC_NOUNS + (("one",) if words else ())))
    return " ".join(words)


_POSITION_TEMPLATES = {
    "left": ("the leftmost {np}", "the left-most {np}", "the {np} on the far left", "the {np} furthest to the left"),
    "right": ("the rightmost {np}", "the right-most {np}", "the {np} on the far right",
              "the {np} furthest to the right"),
    "top": ("the topmost {np}", "the highest {np}", "the {np} at the top", "the {np} nearest the top"),
    "bottom": ("the bottom-most {np}", "the lowest {np}", "the {np} at the bottom", "the {np} nearest the bottom"),
}
_PAIR_TEMPLATES = {  # only when the class has exactly two members
    "left": ("the {np} on the left", "the left {np}"),
    "right": ("the {np} on the right", "the right {np}"),
    "top": ("the upper {np}", "the top {np}"),
    "bottom": ("the lower {np}", "the bottom {np}"),
}
_RELATION_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "that is above"),
    "below": ("below", "under", "beneath"),
    "near": ("closest to", "nearest to", "next to", "nearest"),
}


def _words(spec: Spec, objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
    """One natural wording of `spec` (lowercase, no punctuation)."""
    if spec.kind == "attribute":
        values = dict(spec.target)
        rest = tuple(p for p in spec.target if p[0] != "size")
        comparative = "size" in values and len(_match(objects, rest)) == 2 and rng.random() < 0.5
        phrase = _noun_phrase(spec.target, rng, comparative)
        choice = rng.random()
        if not comparative and "colour" in values and "size" not in values and choice < 0.2:
            noun = _noun_phrase(tuple(p for p in spec.target if p[0] == "shape"), rng)
            return f"the {noun} that is {_pick(rng, COLOUR_WORDS[values['colour']])}"
        return phrase if choice > 0.85 else f"the {phrase}"
    if spec.kind == "position":
        phrase = _noun_phrase(spec.target, rng)
        templates = _POSITION_TEMPLATES[spec.direction]
        if len(_match(objects, spec.target)) == 2:
            templates = templates + _PAIR_TEMPLATES[spec.direction]
        return _pick(rng, templates).format(np=phrase)
    relation = _pick(rng, _RELATION_WORDS[spec.direction])
    return f"the {_noun_phrase(spec.target, rng)} {relation} the {_noun_phrase(spec.anchor, rng)}"


def refer_sentence(text: str, rng: np.random.Generator) -> tuple[str, str, list[str]]:
    """(raw, sent, tokens) in the refer style: raw as typed, sent lowercase without punctuation."""
    raw = text
    if rng.random() < 0.3:
        raw = raw[0].upper() + raw[1:]
    if rng.random() < 0.1:
        raw += "."
    sent = text.lower()
    return raw, sent, sent.split()


def expressions_for(objects: Sequence[SceneObject], t: int, kinds: Sequence[str], per_object: int,
                    width: int, height: int, rng: np.random.Generator,
                    index: dict[Filter, list[int]]) -> list[tuple[str, str]]:
    """Up to `per_object` distinct (text, kind) pairs for object `t`, spread over the kinds."""
    pools = _candidate_specs(objects, t, kinds, width, height, rng, index)
    order = [k for k in kinds if pools.get(k)]
    order = [order[i] for i in rng.permutation(len(order))]
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(chosen) < per_object and any(pools[k] for k in order):
        for kind in order:
            if len(chosen) >= per_object or not pools[kind]:
                continue
            spec = pools[kind].pop(int(rng.integers(len(pools[kind]))))
            text = _words(spec, objects, rng)
            if text not in seen:
                seen.add(text)
                chosen.append((text, kind))
    return chosen
