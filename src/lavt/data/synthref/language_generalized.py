"""synthgref: the generalised variant of synthref (multi-target and no-target expressions).

`generate_generalized` reads a synthref dataset that `generate` wrote and writes, beside it,
`<root>/synthgref/grefs(unc).json` and `<root>/synthgref/instances.json` in the gRefCOCO
layout (`lavt.data.grefcoco`; the images stay in `images/synthref/`). The synthref files
are read, never changed, and the new expressions draw from their own RNG, so synthref's
files stay byte-identical for a seed. The scene of each image is rebuilt from the
annotations (shape, colour, size and centre of every object). Expressions:

- single-target: every synthref ref and its expressions, as they are;
- multi-target: an attribute filter that fits two or more objects ("the two red circles",
  "all the squares", "the large shapes"), or such a class restricted to one half of the
  image with every member clearly on one side ("the stars on the left");
- no-target: attribute values that occur in the scene but never together ("the green star"
  when there are green things and stars but no green star).

Each meaning is checked against the scene (`resolve_generalized`): a multi-target one must
fit exactly its set, a no-target one no object. The mix aims at gRefCOCO's: about 20 % of
the expressions no-target and 25 % multi-target (what a scene cannot offer moves on to the
next scenes).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from lavt.data.refer import _load_json, _load_pickle
from lavt.data.synthref.language import COLOUR_WORDS, GENERIC_NOUNS, SIZE_WORDS, Filter, _noun_phrase, _pick, refer_sentence
from lavt.data.synthref.scenes import GROUP_A, GROUP_B, SHAPES
from lavt.data.synthref.writer import DATASET as SOURCE
from lavt.data.synthref.writer import SPLITS
from lavt.errors import LAVTUserError

GDATASET = "synthgref"
NO_TARGET_SHARE = 0.20  # of all expressions
MULTI_TARGET_SHARE = 0.25
_MARGIN = 0.08  # an object "on the left" is at least this share of the width left of the middle
_PLURALS = {"circle": ("circles", "discs"), "square": ("squares", "blocks"), "triangle": ("triangles",),
            "star": ("stars",), "ring": ("rings", "donuts"), "cross": ("crosses",)}
_GENERIC_PLURALS = tuple(f"{n}s" for n in GENERIC_NOUNS)
_COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}
_HALF_WORDS = {"left": ("on the left", "in the left half"), "right": ("on the right", "in the right half"),
               "top": ("at the top", "in the upper half"), "bottom": ("at the bottom", "in the lower half")}


@dataclass(frozen=True)
class Obj:
    """What the expressions can see of an object: its attributes and centre."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float

    def attribute(self, name: str) -> str:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}[name]


@dataclass(frozen=True)
class GSpec:
    """A generalised meaning: the objects fitting `target` (kind 'multi'), those of them in one
    half of the image (kind 'half', `direction` left/right/top/bottom), or none ('none')."""

    kind: str
    target: Filter
    direction: str = ""


def _fits(obj: Obj, flt: Filter) -> bool:
    return all(obj.attribute(a) == v for a, v in flt)


def resolve_generalized(spec: GSpec, objects: Sequence[Obj], width: int, height: int) -> list[int] | None:
    """The objects `spec` names (possibly none), or None when a half is borderline (a member
    within the margin of the middle)."""
    members = [i for i, o in enumerate(objects) if _fits(o, spec.target)]
    if spec.kind != "half":
        return members
    horizontal = spec.direction in ("left", "right")
    middle, margin = (width / 2, _MARGIN * width) if horizontal else (height / 2, _MARGIN * height)
    sign = -1.0 if spec.direction in ("left", "top") else 1.0
    out = []
    for i in members:
        offset = sign * ((objects[i].cx if horizontal else objects[i].cy) - middle)
        if abs(offset) < margin:
            return None
        if offset > 0:
            out.append(i)
    return out


def _filters(values: dict[str, set[str]], max_attrs: int = 3) -> list[Filter]:
    """Every filter over the given attribute values (attributes in size, colour, shape order)."""
    out: list[Filter] = []
    attrs = [a for a in ("size", "colour", "shape") if values.get(a)]
    for k in range(1, max_attrs + 1):
        for chosen in combinations(attrs, k):
            combos: list[Filter] = [()]
            for a in chosen:
                combos = [c + ((a, v),) for c in combos for v in sorted(values[a])]
            out += combos
    return out


def candidate_specs(objects: Sequence[Obj], width: int, height: int, group: tuple[str, ...] | None) -> tuple[list, list]:
    """(multi-target specs with their targets, no-target specs), each verified on the scene.
    `group`: the shapes a test split may refer to (targets only from it)."""
    values = {a: {o.attribute(a) for o in objects} for a in ("size", "colour", "shape")}
    multi: dict[tuple[int, ...], tuple[GSpec, list[int]]] = {}
    empty: list[GSpec] = []
    for flt in _filters(values):
        for spec in [GSpec("multi", flt)] + [GSpec("half", flt, d) for d in ("left", "right", "top", "bottom")]:
            found = resolve_generalized(spec, objects, width, height)
            if found is None:
                continue
            if not found and spec.kind == "multi":
                empty.append(spec)
            elif len(found) >= 2 and (group is None or all(objects[i].shape in group for i in found)):
                multi.setdefault(tuple(found), (spec, found))  # one meaning per set: the simplest filter first
    return list(multi.values()), empty


def _plural_phrase(flt: Filter, rng: np.random.Generator) -> str:
    values = dict(flt)
    words = []
    if "size" in values:
        words.append(_pick(rng, SIZE_WORDS[values["size"]]))
    if "colour" in values:
        words.append(_pick(rng, COLOUR_WORDS[values["colour"]]))
    words.append(_pick(rng, _PLURALS[values["shape"]]) if "shape" in values else _pick(rng, _GENERIC_PLURALS))
    return " ".join(words)


def words_generalized(spec: GSpec, count: int, rng: np.random.Generator) -> str:
    """One wording of a multi-target (`count` objects) or no-target meaning."""
    if spec.kind == "none":
        return f"the {_noun_phrase(spec.target, rng)}"
    phrase = _plural_phrase(spec.target, rng)
    if spec.kind == "half":
        return f"the {phrase} {_pick(rng, _HALF_WORDS[spec.direction])}"
    templates = ["all the {p}", "the {p}", "all {p}"]
    if count in _COUNTS:
        templates += [f"the {_COUNTS[count]} {{p}}"] * 2
    if count == 2:
        templates.append("both {p}")
    return _pick(rng, templates).format(p=phrase)


@dataclass
class GeneralizedSummary:
    """What `generate_generalized` wrote: counts of expressions per split and kind of target."""

    refs_file: Path
    expressions: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> single/multi/none -> count

    def format(self) -> str:
        lines = [f"wrote {self.refs_file} (generalised: single-, multi- and no-target expressions)",
                 f"{'split':<8}{'single':>8}{'multi':>8}{'no-target':>11}"]
        for split, c in self.expressions.items():
            lines.append(f"{split:<8}{c['single']:>8}{c['multi']:>8}{c['none']:>11}")
        return "\n".join(lines)


def _scene(anns: list[dict]) -> list[Obj]:
    return [Obj(SHAPES[int(a["category_id"]) - 1], a["color"], a["size"], float(a["center"][0]), float(a["center"][1])) for a in anns]


def generate_generalized(out_root: str | Path, seed: int = 0, sentences_per_ref: int = 2) -> GeneralizedSummary:
    """Write `<out_root>/synthgref/` from the synthref dataset under `out_root` (see module docstring)."""
    root = Path(out_root)
    refs_file, instances_file = root / SOURCE / "refs(unc).p", root / SOURCE / "instances.json"
    if not refs_file.is_file() or not instances_file.is_file():
        raise LAVTUserError(f"{root / SOURCE} holds no synthref dataset; generate it first (`lavt data synth --out {root}`)")
    refs = _load_pickle(refs_file)
    instances = _load_json(instances_file)
    anns_of: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        anns_of.setdefault(int(ann["image_id"]), []).append(ann)
    split_of = {int(r["image_id"]): r["split"] for r in refs}
    single_of: dict[int, int] = {}
    for r in refs:
        single_of[int(r["image_id"])] = single_of.get(int(r["image_id"]), 0) + len(r["sentences"])
    grefs = [{**r, "ann_id": [int(r["ann_id"])], "category_id": [int(r["category_id"])], "no_target": False} for r in refs]
    ref_id = max((int(r["ref_id"]) for r in refs), default=0)
    sent_id = max((int(s["sent_id"]) for r in refs for s in r["sentences"]), default=0)
    rate_multi = MULTI_TARGET_SHARE / (1.0 - MULTI_TARGET_SHARE - NO_TARGET_SHARE)
    rate_none = NO_TARGET_SHARE / (1.0 - MULTI_TARGET_SHARE - NO_TARGET_SHARE)
    owed = {"multi": 0, "none": 0}
    for image in instances["images"]:
        image_id = int(image["id"])
        split = split_of.get(image_id)
        if split is None:
            continue  # no object of this image is referred: it is not part of any split
        rng = np.random.default_rng([int(seed), 2, image_id])
        anns = anns_of[image_id]
        objects = _scene(anns)
        group = GROUP_A if split == "testA" else GROUP_B if split == "testB" else None
        multi, empty = candidate_specs(objects, int(image["width"]), int(image["height"]), group)
        # expected counts plus what earlier scenes could not offer, so the mix holds over the split
        wanted = {k: rng.poisson(rate * single_of[image_id]) + owed[k] for k, rate in (("multi", rate_multi), ("none", rate_none))}
        for kind, pool in (("multi", multi), ("none", [(GSpec("none", s.target), []) for s in empty])):
            order = rng.permutation(len(pool))
            written = 0
            for j in order:
                if written >= wanted[kind]:
                    break
                spec, targets = pool[int(j)]
                texts: list[str] = []
                for _ in range(4 * sentences_per_ref):
                    text = words_generalized(spec, len(targets), rng)
                    if text not in texts:
                        texts.append(text)
                    if len(texts) == min(sentences_per_ref, wanted[kind] - written):
                        break
                ref_id += 1
                sentences = []
                for text in texts:
                    sent_id += 1
                    raw, sent, tokens = refer_sentence(text, rng)
                    sentences.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": sent, "kind": kind})
                written += len(sentences)
                grefs.append({
                    "sent_ids": [s["sent_id"] for s in sentences], "file_name": image["file_name"],
                    "ann_id": [int(anns[t]["id"]) for t in targets] or [-1],
                    "category_id": sorted({int(anns[t]["category_id"]) for t in targets}),
                    "ref_id": ref_id, "image_id": image_id, "split": split, "sentences": sentences,
                    "no_target": not targets, "meaning": {"kind": spec.kind, "target": dict(spec.target), "direction": spec.direction},
                })
            owed[kind] = max(0, wanted[kind] - written)
    out_dir = root / GDATASET
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(instances_file, out_dir / "instances.json")
    out_file = out_dir / "grefs(unc).json"
    out_file.write_text(json.dumps(grefs, separators=(",", ":")))
    summary = GeneralizedSummary(out_file)
    for split in SPLITS:
        kinds = [("none" if g["no_target"] else "multi" if len(g["ann_id"]) > 1 else "single", len(g["sentences"]))
                 for g in grefs if g["split"] == split]
        summary.expressions[split] = {k: sum(n for kind, n in kinds if kind == k) for k in ("single", "multi", "none")}
    return summary
