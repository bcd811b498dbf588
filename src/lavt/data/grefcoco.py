"""Reader of generalised referring datasets in the gRefCOCO layout (GRES, Liu, Ding and Jiang, CVPR 2023).

Layout::

    <root>/<dataset>/grefs(<split_by>).json   (or .p) list of refs
    <root>/<dataset>/instances.json           COCO-style images, annotations, categories
    <root>/images/mscoco/images/train2014/    the COCO images, where the refer layout keeps them
    <root>/images/train2014/                  ... or where ReLA keeps them
    <root>/images/synthref/                   the generated scenes (`synthgref`, lavt.data.synthref)

A ref is a refer-API ref whose `ann_id` is a list of annotation ids (a single int is read as
a one-element list): one id is a classic single-target expression, several ids a
multi-target one, and `[-1]` (or a true `no_target` flag) an expression that names nothing
in the image. Crowd annotations (`iscrowd`) are not part of any target mask. The target
mask is the union of the target annotations' masks, all zero for no-target expressions.

`open_refer` picks this reader when the dataset folder holds a grefs file and the classic
`Refer` otherwise, so every dataset class and command reads both.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lavt.data.refer import Refer, _load_json, _load_pickle
from lavt.data.rrsis import open_remote_sensing
from lavt.errors import LAVTUserError

# Image folders tried in order (relative to the data root) when no image folder is given.
GREF_IMAGE_DIRS: dict[str, tuple[str, ...]] = {
    "grefcoco": ("images/mscoco/images/train2014", "images/train2014"),
    "synthgref": ("images/synthref",),
}
NO_TARGET_ANN = -1


def grefs_path(root: str | Path, dataset: str, split_by: str) -> Path | None:
    """`<root>/<dataset>/grefs(<split_by>).json`, else `.p`, else None when neither exists."""
    folder = Path(root) / dataset
    for suffix in (".json", ".p"):
        path = folder / f"grefs({split_by}){suffix}"
        if path.is_file():
            return path
    return None


def is_generalized(root: str | Path, dataset: str, split_by: str) -> bool:
    """Whether `<root>/<dataset>` is a generalised (gRefCOCO-layout) dataset."""
    return grefs_path(root, dataset, split_by) is not None


def open_refer(root: str | Path, dataset: str, split_by: str = "unc", *, image_dir: str | Path | None = None) -> Refer:
    """The remote-sensing readers for RRSIS-D and RefSegRS layouts (`lavt.data.rrsis`), `GRefer`
    when the dataset folder holds `grefs(<split_by>).json/.p`, else the classic `Refer`."""
    remote = open_remote_sensing(root, dataset, split_by, image_dir=image_dir)
    if remote is not None:
        return remote
    if is_generalized(root, dataset, split_by):
        return GRefer(root, dataset, split_by, image_dir=image_dir)
    return Refer(root, dataset, split_by, image_dir=image_dir)


def default_gref_image_dir(root: str | Path, dataset: str) -> Path:
    """The first existing folder of `GREF_IMAGE_DIRS[dataset]` (else the first one named),
    `<root>/images/<dataset>` for other datasets."""
    root = Path(root)
    candidates = [root / d for d in GREF_IMAGE_DIRS.get(dataset, (f"images/{dataset}",))]
    return next((c for c in candidates if c.is_dir()), candidates[0])


class GRefer(Refer):
    """Index of one generalised referring dataset; the queries of `Refer` plus `no_target`,
    `target_ann_ids` and `generalized_counts`. Opening validates the records and raises
    `LAVTUserError` naming the file and record, as `Refer` does."""

    generalized = True

    def __init__(self, root: str | Path, dataset: str, split_by: str = "unc", *, image_dir: str | Path | None = None) -> None:
        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        data_dir = self.root / dataset
        if not data_dir.is_dir():
            raise LAVTUserError(f"dataset folder {data_dir} does not exist; check --data-root and --dataset")
        found = grefs_path(self.root, dataset, split_by)
        if found is None:
            choices = sorted(p.name for p in data_dir.glob("grefs(*)*"))
            raise LAVTUserError(
                f"{data_dir} has no grefs({split_by}).json or grefs({split_by}).p (found: {', '.join(choices) or 'none'}); "
                "check --split-by (gRefCOCO: unc)"
            )
        self.refs_file = found
        self.instances_file = data_dir / "instances.json"
        if not self.instances_file.is_file():
            raise LAVTUserError(f"annotation file {self.instances_file} does not exist; it comes with the grefs file")
        self.image_dir = Path(image_dir) if image_dir is not None else default_gref_image_dir(self.root, dataset)
        refs = _load_json(found) if found.suffix == ".json" else _load_pickle(found)
        instances = _load_json(self.instances_file)
        self._reading = str(found)
        try:
            Refer._index(self, [], instances)  # images, annotations, categories; the refs follow
            self._index_grefs(refs)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise LAVTUserError(f"{self._reading} is malformed ({type(exc).__name__}: {exc}); fix or drop that record") from exc

    def _index_grefs(self, refs: Any) -> None:
        where = f"refs file {self.refs_file}"
        if not isinstance(refs, list):
            raise LAVTUserError(f"{where} must hold a list of refs, got {type(refs).__name__}")
        self._ann_ids: dict[int, list[int]] = {}
        self._targets: dict[int, list[int]] = {}
        self._no_target: set[int] = set()
        for i, ref in enumerate(refs):
            ref_id, image_id = self._ref_record(where, i, ref), int(ref["image_id"])
            if image_id not in self.images:
                raise LAVTUserError(f"{where}: ref_id {ref_id} points to image_id {image_id}, which is not in {self.instances_file}")
            ann_ids = [int(a) for a in (ref["ann_id"] if isinstance(ref["ann_id"], (list, tuple)) else [ref["ann_id"]])]
            for ann_id in ann_ids:
                if ann_id == NO_TARGET_ANN:
                    continue
                if ann_id not in self.anns:
                    raise LAVTUserError(f"{where}: ref_id {ref_id} points to ann_id {ann_id}, which is not in {self.instances_file}")
                if int(self.anns[ann_id]["image_id"]) != image_id:
                    raise LAVTUserError(
                        f"{where}: ref_id {ref_id} (image {image_id}) names ann_id {ann_id} of image {self.anns[ann_id]['image_id']}"
                    )
            real = [a for a in ann_ids if a != NO_TARGET_ANN]
            if bool(ref.get("no_target", False)) or not real:
                self._no_target.add(ref_id)
            self._ann_ids[ref_id] = real
            self._targets[ref_id] = [a for a in real if not self.anns[a].get("iscrowd", 0)]
            self._index_sentences(ref, ref_id, where)
            self.refs[ref_id] = ref
            self.image_refs.setdefault(image_id, []).append(ref_id)

    # ------------------------------------------------------------------ queries
    def no_target(self, ref_id: int) -> bool:
        """Whether the expressions of `ref_id` name no object in the image."""
        return int(ref_id) in self._no_target

    def target_ann_ids(self, ref_id: int) -> list[int]:
        """The annotations whose union is the target mask (crowd annotations left out; empty
        for a no-target ref)."""
        return [] if self.no_target(ref_id) else list(self._targets[int(ref_id)])

    def num_targets(self, ref_id: int) -> int:
        """How many objects the ref names as annotated (crowd ones included; 0 for no target)."""
        return 0 if self.no_target(ref_id) else len(self._ann_ids[int(ref_id)])

    def mask(self, ref_id: int, mode: str = "any") -> np.ndarray:
        """uint8 (H, W): the union of the target annotations' masks (all zero: no target)."""
        ref = self.refs[int(ref_id)]
        image = self.images[int(ref["image_id"])]
        height, width = int(image["height"]), int(image["width"])
        out = np.zeros((height, width), dtype=np.uint8)
        for ann_id in self.target_ann_ids(ref_id):
            out |= self._decode(self.anns[ann_id], height, width, mode, ref_id)
        return out

    def generalized_counts(self) -> dict[str, dict[str, int]]:
        """split label -> refs, expressions, images, no_target and multi_target expressions."""
        counts: dict[str, Counter] = {}
        images: dict[str, set] = {}
        for ref_id, ref in self.refs.items():
            split = str(ref["split"])
            c = counts.setdefault(split, Counter())
            n = len(ref["sentences"])
            c["refs"] += 1
            c["expressions"] += n
            c["no_target"] += n if self.no_target(ref_id) else 0
            c["multi_target"] += n if self.num_targets(ref_id) > 1 else 0
            images.setdefault(split, set()).add(int(ref["image_id"]))
        keys = ("refs", "expressions", "no_target", "multi_target")
        return {s: {**{k: c[k] for k in keys}, "images": len(images[s])} for s, c in counts.items()}

    def __repr__(self) -> str:
        return (
            f"GRefer(root={str(self.root)!r}, dataset={self.dataset!r}, split_by={self.split_by!r}, "
            f"refs={len(self.refs)}, no_target={len(self._no_target)}, images={len(self.image_refs)})"
        )
