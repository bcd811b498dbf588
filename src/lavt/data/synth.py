"""synthref: a generated referring-segmentation dataset in the refer-API layout.

No RefCOCO images can be fetched where this project runs, so tests and the embedded
default run use scenes drawn here. Each image holds 2-6 coloured shapes on a textured
background; each object gets several expressions that single it out:

- attribute: colour, shape and size ("the red circle", "the big blue shape", "the
  larger star");
- position: the extreme object of a class ("the leftmost square", "the red shape at the
  top", "the lower ring" when there are two rings);
- relation: an ambiguous class plus a unique anchor ("the star left of the green ring",
  "the circle closest to the small cross").

Every expression is checked against the scene by `resolve` (one interpreter of the
expression meaning) and kept only when it picks out exactly its object, with clear
margins for positions and relations. Scenes draw their shapes and colours from small
per-scene pools, so most images hold several objects sharing a colour or a shape and
the image alone cannot tell which one an expression means.

Appearance: muted textured backgrounds (noise, blotches, stripes, checks, gradients),
jittered and shaded object colours, small rotations, pixel noise, JPEG compression, and
occasional partial occlusion (the annotation is then the visible part, stored as RLE;
other objects are stored as polygons; rings are two overlapping half-rings, so the
official `== 1` mask mode drops their overlap, as it does on real data). Sizes are two
classes, small and large, at least 1.5x apart.

Splits, by image (like RefCOCO): train, val, testA, testB. As RefCOCO's testA refers only
to people and testB only to other objects, synthref's testA refers only to the round
shapes (circle, ring, star) and testB only to the angular ones (square, triangle,
cross); their images hold at least two objects of that group, and the other shapes stay
in the scene as context and anchors. train and val refer to every object.

The same seed gives byte-identical annotation files (and images): each image draws from
its own RNG seeded by (seed, image index).
"""
from __future__ import annotations

import colorsys
import io
import json
import math
import pickle
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from lavt.errors import LAVTUserError

DATASET = "synthref"
SPLIT_BY = "unc"
VERSION = 1

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
GROUP_A: tuple[str, ...] = ("circle", "ring", "star")  # referred in testA
GROUP_B: tuple[str, ...] = ("square", "triangle", "cross")  # referred in testB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 36, 36),
    "green": (40, 170, 60),
    "blue": (36, 84, 222),
    "yellow": (238, 214, 36),
    "purple": (142, 58, 196),
    "orange": (250, 136, 24),
    "white": (238, 238, 238),
}
SIZES: tuple[str, ...] = ("small", "large")
KINDS: tuple[str, ...] = ("attribute", "position", "relation")
SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")

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

# Shape geometry relative to the size scale s: (circumradius for spacing, parameters).
_CIRCUMRADIUS = {"circle": 1.0, "ring": 1.05, "square": 0.88 * math.sqrt(2), "triangle": 1.3, "star": 1.3,
                 "cross": math.hypot(1.1, 0.38)}
_SMALL_SCALE = 0.095  # small objects: s = 0.095 * min(width, height), +-6 %
_LARGE_RATIO = 1.75  # large objects: 1.75x the small scale, so any large is >= 1.55x any small
_MARGIN = 0.08  # position and relation margins, as a fraction of the image width/height
_NEAR_RATIO = 1.4  # "closest to": the next candidate is at least 1.4x farther from the anchor
_MIN_VISIBLE = 0.6  # an occluded object keeps at least this share of its area


@dataclass
class SynthSummary:
    """What `generate` wrote: paths, counts per split and per expression kind, time taken."""

    root: Path
    refs_file: Path
    instances_file: Path
    image_dir: Path
    images: dict[str, int] = field(default_factory=dict)
    refs: dict[str, int] = field(default_factory=dict)
    expressions: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def format(self) -> str:
        """Human-readable summary (for the CLI)."""
        lines = [f"wrote {self.refs_file}, {self.instances_file} and images under {self.image_dir}"]
        lines.append(f"{'split':<8}{'images':>8}{'refs':>8}{'expressions':>13}")
        for split in SPLITS:
            lines.append(f"{split:<8}{self.images.get(split, 0):>8}{self.refs.get(split, 0):>8}"
                         f"{self.expressions.get(split, 0):>13}")
        lines.append("expression kinds: " + ", ".join(f"{k} {v}" for k, v in self.kinds.items()))
        total = sum(self.images.values())
        rate = total / self.seconds * 60 if self.seconds > 0 else float("inf")
        lines.append(f"{total} images in {self.seconds:.1f} s ({rate:.0f} images/minute)")
        return "\n".join(lines)


# ---------------------------------------------------------------------- scene objects
@dataclass
class _Object:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    scale: float
    rotation: float  # degrees
    polygons: list[list[float]] = field(default_factory=list)
    full: np.ndarray | None = None
    visible: np.ndarray | None = None

    @property
    def radius(self) -> float:
        return _CIRCUMRADIUS[self.shape] * self.scale

    def attribute(self, name: str) -> str:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}[name]


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _shape_polygons(obj: _Object) -> list[np.ndarray]:
    """Vertices (K, 2) of each polygon part of `obj`, in image coordinates (y down)."""
    s = obj.scale
    if obj.shape == "circle":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        parts = [np.stack([np.cos(t), np.sin(t)], 1) * s]
    elif obj.shape == "ring":
        # Two half-rings overlapping by a few degrees: a polygon cannot have a hole.
        outer, inner, extra = 1.05 * s, 0.6 * s, math.radians(4)
        parts = []
        for start in (0.0, math.pi):
            t = np.linspace(start - extra, start + math.pi + extra, 24)
            arc_out = np.stack([np.cos(t), np.sin(t)], 1) * outer
            arc_in = np.stack([np.cos(t[::-1]), np.sin(t[::-1])], 1) * inner
            parts.append(np.concatenate([arc_out, arc_in]))
    elif obj.shape == "square":
        h = 0.88 * s
        parts = [np.array([[-h, -h], [h, -h], [h, h], [-h, h]])]
    elif obj.shape == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        parts = [np.stack([np.cos(t), np.sin(t)], 1) * 1.3 * s + np.array([0.0, 0.2 * s])]
    elif obj.shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.3 * s, 0.55 * s)
        parts = [np.stack([np.cos(t) * r, np.sin(t) * r], 1) + np.array([0.0, 0.1 * s])]
    elif obj.shape == "cross":
        a, b = 1.1 * s, 0.38 * s
        parts = [np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                           [-b, b], [-a, b], [-a, -b], [-b, -b]])]
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(obj.shape)
    return [_rotate(p, obj.rotation) + np.array([obj.cx, obj.cy]) for p in parts]


def _rasterize(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(rles).any(axis=2)


# ---------------------------------------------------------------------- appearance
def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.22, 0.58)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    lo, hi = grid.min(), grid.max()
    image = Image.fromarray(((grid - lo) / (hi - lo + 1e-6) * 255).astype(np.uint8))
    up = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return up / 127.5 - 1.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted, textured background: never one flat colour, never a saturated object colour."""
    base = _muted_colour(rng)
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = base
    style = rng.integers(5)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    if style == 0:  # blotches
        for channel in range(3):
            image[..., channel] += _smooth_noise(rng, height, width, int(rng.integers(3, 9))) * rng.uniform(12, 30)
    elif style == 1:  # stripes
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(8, 26)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        image += (wave * rng.uniform(8, 20))[..., None] * (_muted_colour(rng) / 255.0 + 0.5)
    elif style == 2:  # checks of two close colours
        tile = int(rng.integers(8, 28))
        other = base + rng.uniform(-28, 28, size=3).astype(np.float32)
        checks = ((xx // tile + yy // tile) % 2).astype(bool)
        image[checks] = other
    elif style == 3:  # gradient between two muted colours
        other = _muted_colour(rng)
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        image = base * (1 - t[..., None]) + other * t[..., None]
    # style 4: plain colour with stronger noise only
    sigma = rng.uniform(8, 16) if style == 4 else rng.uniform(3, 9)
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(sigma)
    return image


def _paint(image: np.ndarray, obj: _Object, rng: np.random.Generator) -> None:
    """Paint the object's visible pixels: jittered colour, a linear shading, fine noise."""
    ys, xs = np.nonzero(obj.visible)
    colour = np.array(COLOURS[obj.colour], dtype=np.float32) + rng.uniform(-14, 14, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - obj.cx) * math.cos(angle) + (ys - obj.cy) * math.sin(angle)) / max(obj.scale, 1.0)
    shade = ramp * rng.uniform(0, 14) + rng.normal(0, 4, size=len(xs))
    image[ys, xs] = colour[None, :] + shade[:, None].astype(np.float32)


# ---------------------------------------------------------------------- scenes
def _place(
    rng: np.random.Generator,
    height: int,
    width: int,
    plan: list[tuple[str, str, str]],
    occluder: int,
) -> list[_Object]:
    """Place the planned (shape, colour, size) objects without overlap, except that object
    `occluder` partly covers an earlier one of another colour; an object that does not fit
    is left out."""
    unit = min(height, width)
    objects: list[_Object] = []
    for index, (shape, colour, size) in enumerate(plan):
        for attempt in range(40):
            if attempt == 20:
                size = "small"  # a large object that keeps colliding gets a second chance as a small one
            scale = unit * _SMALL_SCALE * rng.uniform(0.94, 1.06) * (_LARGE_RATIO if size == "large" else 1.0)
            obj = _Object(shape, colour, size, 0.0, 0.0, scale, 0.0 if shape in ("circle", "ring")
                          else float(rng.uniform(-20, 20)))
            r = obj.radius
            if 2 * r + 4 >= unit:
                size = "small"
                continue
            # Only a differently coloured object may be covered: same colours would merge into one blob.
            others = [o for o in objects if o.colour != colour] if index == occluder else []
            other = others[int(rng.integers(len(others)))] if others else None
            if other is not None:
                angle = rng.uniform(0, 2 * math.pi)
                distance = (r + other.radius) * rng.uniform(0.55, 0.8)
                obj.cx, obj.cy = other.cx + distance * math.cos(angle), other.cy + distance * math.sin(angle)
                if not (r + 1 <= obj.cx <= width - r - 1 and r + 1 <= obj.cy <= height - r - 1):
                    continue
            else:
                obj.cx = float(rng.uniform(r + 1, width - r - 1))
                obj.cy = float(rng.uniform(r + 1, height - r - 1))
            gap = (0.02 if other is not None else 0.03) * unit
            if not all(math.hypot(obj.cx - o.cx, obj.cy - o.cy) >= r + o.radius + gap
                       for o in objects if o is not other):
                continue
            obj.polygons = [[round(float(v), 2) for v in part.reshape(-1)] for part in _shape_polygons(obj)]
            obj.full = _rasterize(obj.polygons, height, width)
            if other is not None:
                covered = obj.full & other.full
                if not covered.any() or (other.full & ~obj.full).sum() < _MIN_VISIBLE * other.full.sum():
                    continue
            objects.append(obj)
            break
    return objects


def _sample_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    count: int,
    group: Sequence[str] | None,
    occlusion: float,
) -> list[_Object]:
    """Plan and place `count` objects (fewer only when they do not fit after several tries).

    Shapes and colours come from small per-scene pools, so objects share attributes.
    `group`: at least two objects must have one of these shapes (testA/testB scenes).
    """
    pool_size = lambda: int(rng.choice([1, 2, 3, 4], p=[0.12, 0.45, 0.33, 0.10]))  # noqa: E731
    shapes = [str(s) for s in rng.choice(SHAPES, size=pool_size(), replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), size=pool_size(), replace=False)]
    if group is not None and not set(shapes) & set(group):
        shapes[0] = str(rng.choice(group))
    group_shapes = [s for s in shapes if group is not None and s in group]
    plan = []
    for index in range(count):
        shape = str(rng.choice(group_shapes)) if index < 2 and group_shapes else str(rng.choice(shapes))
        plan.append((shape, str(rng.choice(colours)), "large" if rng.random() < 0.35 else "small"))
    occluder = int(rng.integers(1, count)) if count > 1 and rng.random() < occlusion else -1

    best: list[_Object] = []
    for _ in range(6):
        objects = _place(rng, height, width, plan, occluder)
        enough = group is None or sum(o.shape in group for o in objects) >= min(2, count)
        if enough and len(objects) > len(best):
            best = objects
        if len(best) == count:
            break
    if not best:
        best = objects
    cover = np.zeros((height, width), dtype=bool)
    for obj in reversed(best):  # later objects lie on top
        obj.visible = obj.full & ~cover
        cover |= obj.full
    return best


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


def _filters(obj: _Object, max_attrs: int = 3) -> list[Filter]:
    out = []
    for k in range(0, max_attrs + 1):
        for attrs in combinations(_ATTRS, k):
            out.append(tuple((a, obj.attribute(a)) for a in attrs))
    return out


def _match(objects: Sequence[_Object], flt: Filter, index: dict[Filter, list[int]] | None = None) -> list[int]:
    if index is not None:
        return index.get(flt, [])
    return [i for i, o in enumerate(objects) if all(o.attribute(a) == v for a, v in flt)]


def _filter_index(objects: Sequence[_Object]) -> dict[Filter, list[int]]:
    """Members of every filter that some object satisfies (filters are sorted by _ATTRS order)."""
    index: dict[Filter, list[int]] = {}
    for i, obj in enumerate(objects):
        for flt in _filters(obj):
            index.setdefault(flt, []).append(i)
    return index


def resolve(spec: Spec, objects: Sequence[_Object], width: int, height: int,
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


def _candidate_specs(objects: Sequence[_Object], t: int, kinds: Iterable[str], width: int, height: int,
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


def _words(spec: Spec, objects: Sequence[_Object], rng: np.random.Generator) -> str:
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


def _sentence(text: str, rng: np.random.Generator) -> tuple[str, str, list[str]]:
    """(raw, sent, tokens) in the refer style: raw as typed, sent lowercase without punctuation."""
    raw = text
    if rng.random() < 0.3:
        raw = raw[0].upper() + raw[1:]
    if rng.random() < 0.1:
        raw += "."
    sent = text.lower()
    return raw, sent, sent.split()


def _expressions(objects: Sequence[_Object], t: int, kinds: Sequence[str], per_object: int,
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


# ---------------------------------------------------------------------- driver
def _split_plan(num_images: int, fractions: Sequence[float], seed: int) -> list[str]:
    """Split of each image index: exact counts from the fractions, every split non-empty when possible."""
    if len(fractions) != 4 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise LAVTUserError(f"split_fractions must be 4 non-negative numbers (train, val, testA, testB), got {fractions}")
    total = float(sum(fractions))
    counts = [int(round(num_images * f / total)) for f in fractions[1:]]
    if num_images >= 4:
        counts = [max(1, c) if f > 0 else 0 for c, f in zip(counts, fractions[1:])]
    while sum(counts) > num_images - (1 if fractions[0] > 0 and num_images > 0 else 0) and sum(counts) > 0:
        counts[int(np.argmax(counts))] -= 1
    plan = ["val"] * counts[0] + ["testA"] * counts[1] + ["testB"] * counts[2]
    plan = ["train"] * (num_images - len(plan)) + plan
    order = np.random.default_rng([seed, 0]).permutation(num_images)
    return [plan[i] for i in order]


def _check_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    try:
        a, b = (int(value[0]), int(value[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise LAVTUserError(f"{name} must be a (min, max) pair of integers, got {value!r}") from exc
    if a < low or b < a:
        raise LAVTUserError(f"{name} must satisfy {low} <= min <= max, got ({a}, {b})")
    return a, b


def generate(
    out_root: str | Path,
    seed: int = 0,
    num_images: int = 1000,
    *,
    image_size: tuple[int, int] = (160, 256),
    objects: tuple[int, int] = (2, 6),
    kinds: Sequence[str] = KINDS,
    expressions_per_object: int = 3,
    occlusion: float = 0.25,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.05, 0.05),
    image_format: str = "jpg",
    overwrite: bool = False,
) -> SynthSummary:
    """Write the synthref dataset under `out_root` in the refer layout.

    Files: `out_root/synthref/refs(unc).p`, `out_root/synthref/instances.json`, images in
    `out_root/images/synthref/`. `image_size` bounds each image side in pixels (the aspect
    ratio stays within 4:3); `objects` bounds the objects per image (fewer when they do not
    fit); `kinds` selects the expression kinds written; each object gets up to
    `expressions_per_object` expressions (objects with none are not referred); `occlusion`
    is the chance that an image has one partly hidden object.
    """
    start = time.perf_counter()
    side_range = _check_range("image_size", image_size, 32)
    count_range = _check_range("objects", objects, 1)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise LAVTUserError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    if int(num_images) < 1:
        raise LAVTUserError(f"num_images must be at least 1, got {num_images}")
    if int(expressions_per_object) < 1:
        raise LAVTUserError(f"expressions_per_object must be at least 1, got {expressions_per_object}")
    if not 0.0 <= float(occlusion) <= 1.0:
        raise LAVTUserError(f"occlusion must be a probability in [0, 1], got {occlusion}")
    if image_format not in ("jpg", "png"):
        raise LAVTUserError(f"image_format must be 'jpg' or 'png', got {image_format!r}")

    root = Path(out_root)
    data_dir = root / DATASET
    image_dir = root / "images" / DATASET
    refs_file = data_dir / f"refs({SPLIT_BY}).p"
    instances_file = data_dir / "instances.json"
    if refs_file.exists() and not overwrite:
        raise LAVTUserError(f"{refs_file} already exists; choose another --out or pass --overwrite")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LAVTUserError(f"cannot create output folders under {root}: {exc}") from exc
    if overwrite:
        for stale in image_dir.glob(f"{DATASET}_*.*"):
            stale.unlink()

    plan = _split_plan(int(num_images), split_fractions, int(seed))
    images, annotations, refs = [], [], []
    ann_id = ref_id = sent_id = 0
    for index, split in enumerate(plan):
        rng = np.random.default_rng([int(seed), 1, index])
        for _ in range(20):
            width = int(rng.integers(side_range[0], side_range[1] + 1))
            height = int(rng.integers(side_range[0], side_range[1] + 1))
            if max(width, height) <= min(width, height) * 4 / 3:
                break
        height = min(height, int(width * 4 / 3))
        width = min(width, int(height * 4 / 3))
        group = GROUP_A if split == "testA" else GROUP_B if split == "testB" else None
        count = int(rng.integers(count_range[0], count_range[1] + 1))
        scene = _sample_scene(rng, height, width, count, group, float(occlusion))
        index_of = _filter_index(scene)

        canvas = _background(rng, height, width)
        for obj in scene:
            _paint(canvas, obj, rng)
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(3.0)
        image_id = index + 1
        file_name = f"{DATASET}_{image_id:07d}.{image_format}"
        pixels = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        if image_format == "jpg":
            pixels.save(buffer, format="JPEG", quality=92)
        else:
            pixels.save(buffer, format="PNG", compress_level=1)
        (image_dir / file_name).write_bytes(buffer.getvalue())
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})

        for t, obj in enumerate(scene):
            ann_id += 1
            occluded = bool((obj.full & ~obj.visible).any())
            ys, xs = np.nonzero(obj.visible)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if occluded:
                from pycocotools import mask as mask_utils

                rle = mask_utils.encode(np.asfortranarray(obj.visible.astype(np.uint8)))
                segmentation: Any = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            else:
                segmentation = obj.polygons
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                "segmentation": segmentation, "area": int(obj.visible.sum()), "bbox": bbox, "iscrowd": 0,
                "color": obj.colour, "size": obj.size, "center": [round(obj.cx, 2), round(obj.cy, 2)],
                "rotation": round(obj.rotation, 2), "occluded": occluded,
            })
            if group is not None and obj.shape not in group:
                continue
            expressions = _expressions(scene, t, kinds, int(expressions_per_object), width, height, rng, index_of)
            if not expressions:
                continue
            ref_id += 1
            sentences = []
            for text, kind in expressions:
                sent_id += 1
                raw, sent, tokens = _sentence(text, rng)
                sentences.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": sent, "kind": kind})
            refs.append({
                "sent_ids": [s["sent_id"] for s in sentences], "file_name": file_name, "ann_id": ann_id,
                "ref_id": ref_id, "image_id": image_id, "split": split, "sentences": sentences,
                "category_id": SHAPES.index(obj.shape) + 1,
            })

    options = {
        "seed": int(seed), "num_images": int(num_images), "image_size": list(side_range),
        "objects": list(count_range), "kinds": list(kinds), "expressions_per_object": int(expressions_per_object),
        "occlusion": float(occlusion), "split_fractions": [float(f) for f in split_fractions],
        "image_format": image_format,
    }
    instances = {
        "info": {
            "description": "synthref: generated referring segmentation scenes (lavt.data.synth)",
            "version": VERSION,
            "options": options,
            "splits": "by image; train/val refer to every object; testA refers only to circle, ring, "
                      "star; testB only to square, triangle, cross",
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)],
    }
    instances_file.write_text(json.dumps(instances, separators=(",", ":")))
    refs_file.write_bytes(pickle.dumps(refs, protocol=2))

    summary = SynthSummary(root=root, refs_file=refs_file, instances_file=instances_file, image_dir=image_dir)
    for split in SPLITS:
        split_refs = [r for r in refs if r["split"] == split]
        summary.images[split] = plan.count(split)
        summary.refs[split] = len(split_refs)
        summary.expressions[split] = sum(len(r["sentences"]) for r in split_refs)
    for kind in KINDS:
        summary.kinds[kind] = sum(1 for r in refs for s in r["sentences"] if s["kind"] == kind)
    summary.seconds = time.perf_counter() - start
    return summary


__all__ = ["generate", "resolve", "Spec", "SynthSummary", "SHAPES", "COLOURS", "SIZES", "KINDS", "SPLITS",
           "GROUP_A", "GROUP_B"]
