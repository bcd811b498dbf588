"""Torch datasets over a refer-format dataset, with the official sampling and preprocessing.

- `ReferDataset(mode='train')`: one item per ref (object); each epoch picks one of the
  ref's expressions at random, as the official training does. The pick comes from an RNG
  seeded by (seed, epoch, ref index), so it is the same in every worker and on every rank
  and does not depend on the order in which items are fetched. The official best-checkpoint
  validation is this mode on the val split.
- `ReferDataset(mode='eval')`: one item per (ref, expression), in ref order then sentence
  order like the official test.py, with the mask at the original resolution kept beside the
  resized one (for scoring at the original resolution).
- `ReferImageGroups`: one item per image holding every expression of every ref in it, so
  the engine can run the image once through a batch of expressions.

Generalised datasets (gRefCOCO layout, `lavt.data.grefcoco`) read the same way; their items
also carry `no_target` (a bool tensor; `no_targets` per image group), and the mask of a
no-target expression is all background.

Images: bilinear resize to `image_size` squared, ImageNet mean/std; masks: nearest.
`kinds` keeps only expressions of those kinds (synthref sentences carry a `kind`:
attribute, position or relation), for curricula and per-kind scores.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lavt.data.grefcoco import open_refer
from lavt.data.refer import MASK_MODES
from lavt.data.tokenization import ExpressionTokenizer
from lavt.data.transforms import image_to_tensor, mask_to_tensor
from lavt.errors import LAVTUserError

MODES = ("train", "eval")


class _ReferBase(Dataset):
    """Shared loading: the refs of one split, their tokenised expressions, image checks."""

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split_by: str,
        split: str,
        *,
        tokenizer: ExpressionTokenizer,
        image_size: int = 480,
        mask_mode: str = "any",
        skip_unreadable: bool = False,
        max_images: int | None = None,
        image_dir: str | Path | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise LAVTUserError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if int(image_size) < 1:
            raise LAVTUserError(f"image_size must be positive, got {image_size}")
        if max_images is not None and int(max_images) < 1:
            raise LAVTUserError(f"max_images must be positive or None, got {max_images}")
        self.refer = open_refer(root, dataset, split_by, image_dir=image_dir)
        self.generalized = bool(getattr(self.refer, "generalized", False))
        self.split = split
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mask_mode = mask_mode

        ref_ids = self.refer.ref_ids(split)
        image_ids = self.refer.image_ids(ref_ids)
        if max_images is not None:
            image_ids = image_ids[: int(max_images)]
        self.skipped = 0
        self.skipped_files: list[tuple[Path, str]] = []
        if skip_unreadable:
            usable = []
            for image_id in image_ids:
                reason = self.refer.check_image(image_id, decode=True)
                if reason is None:
                    usable.append(image_id)
                else:
                    self.skipped_files.append((self.refer.image_path(image_id), reason))
            self.skipped = len(self.skipped_files)
            if self.skipped:
                shown = "; ".join(f"{p} ({why})" for p, why in self.skipped_files[:3])
                warnings.warn(
                    f"{dataset}/{split}: skipped {self.skipped} unreadable image(s) and their refs: {shown}"
                    + (" ..." if self.skipped > 3 else ""),
                    stacklevel=3,
                )
            image_ids = usable
        else:
            for image_id in image_ids:
                if not self.refer.image_path(image_id).is_file():
                    ref_id = next(r for r in ref_ids if int(self.refer.refs[r]["image_id"]) == image_id)  # one of this split's
                    raise LAVTUserError(
                        f"image {self.refer.image_path(image_id)} (image_id {image_id}, ref_id {ref_id}, "
                        f"split {split}) does not exist; put the images under {self.refer.image_dir} or "
                        "open the dataset with skip_unreadable=True to skip and count such images"
                    )
        prepare = getattr(self.refer, "prepare_images", None)
        if prepare is not None:  # RRSIS-D: read the images' sizes and count those that differ from their masks'
            prepare(image_ids)
        keep = set(image_ids)
        ref_ids = [r for r in ref_ids if int(self.refer.refs[r]["image_id"]) in keep]
        if not ref_ids:
            raise LAVTUserError(f"{dataset}/{split}: no refs left to read (all images unreadable?)")
        self.kinds = None if kinds is None else tuple(kinds)
        if self.kinds is not None:
            stored = {s.get("kind") for r in ref_ids for s in self.refer.refs[r]["sentences"]}
            if None in stored:
                raise LAVTUserError(
                    f"{self.refer.refs_file}: its sentences have no 'kind' field, so kinds={list(self.kinds)} "
                    "cannot select expressions (only generated synthref data has kinds); pass kinds=None"
                )

        # Tokenise every expression once: rows of `self._ids` follow refs then sentences.
        texts: list[str] = []
        self.ref_ids: list[int] = []
        self._sent_ids: list[int] = []
        self._kinds: list[str] = []
        self._first: list[int] = []
        for ref_id in ref_ids:
            sentences = [s for s in self.refer.refs[ref_id]["sentences"]
                         if self.kinds is None or s["kind"] in self.kinds]
            if not sentences:
                continue  # no expression of the requested kinds: the object is not referred
            self.ref_ids.append(ref_id)
            self._first.append(len(texts))
            for sentence in sentences:
                texts.append(sentence["raw"])
                self._sent_ids.append(int(sentence["sent_id"]))
                self._kinds.append(str(sentence.get("kind", "")))
        self._first.append(len(texts))
        if not self.ref_ids:
            raise LAVTUserError(f"{dataset}/{split}: no expressions of kinds {list(self.kinds or ())} to read")
        self._texts = texts
        self._ids, self._mask = tokenizer(texts)

    # ------------------------------------------------------------------ counts
    @property
    def num_refs(self) -> int:
        """Refs (objects) in this split after skipping."""
        return len(self.ref_ids)

    @property
    def num_expressions(self) -> int:
        """Expressions of those refs."""
        return len(self._texts)

    @property
    def num_images(self) -> int:
        """Distinct images of those refs."""
        return len({int(self.refer.refs[r]["image_id"]) for r in self.ref_ids})

    # ------------------------------------------------------------------ loading
    def _load(
        self, ref_id: int, augment: Callable[[Image.Image], Image.Image] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(image (3,S,S), mask (S,S) int64, mask at the original resolution uint8 (H,W)); `augment`
        changes the image as read, before it is resized."""
        ref = self.refer.refs[ref_id]
        image_id = int(ref["image_id"])
        image = self.refer.load_image(image_id)
        if augment is not None:
            image = augment(image)
        mask = self.refer.mask(ref_id, self.mask_mode)
        if mask.shape != (image.height, image.width):
            raise LAVTUserError(
                f"{self.refer.instances_file}: image_id {image_id} is declared {mask.shape[1]}x{mask.shape[0]} "
                f"(width x height) but {self.refer.image_path(image_id)} is {image.width}x{image.height}"
            )
        return image_to_tensor(image, self.image_size), mask_to_tensor(mask, self.image_size), mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.refer.dataset}/{self.refer.split_by}/{self.split}: "
            f"{self.num_refs} refs, {self.num_expressions} expressions, {self.num_images} images, "
            f"size {self.image_size}, skipped {self.skipped})"
        )


class ReferDataset(_ReferBase):
    """Referring dataset for training (one random expression per ref) or evaluation (all).

    Items are dicts. Both modes: `image` float32 (3,S,S) normalised, `mask` int64 (S,S),
    `input_ids`/`attention_mask` int64 (N,), `ref_id`, `sent_id`, `image_id` ints.
    Eval adds `orig_mask` uint8 (H,W) at the original resolution, `expression` (raw text)
    and `kind` (the sentence's `kind` field, '' when the dataset has none).
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split_by: str,
        split: str,
        *,
        tokenizer: ExpressionTokenizer,
        mode: str = "train",
        image_size: int = 480,
        mask_mode: str = "any",
        seed: int = 0,
        skip_unreadable: bool = False,
        max_images: int | None = None,
        image_dir: str | Path | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise LAVTUserError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(
            root, dataset, split_by, split, tokenizer=tokenizer, image_size=image_size,
            mask_mode=mask_mode, skip_unreadable=skip_unreadable, max_images=max_images,
            image_dir=image_dir, kinds=kinds,
        )
        self.mode = mode
        self.seed = int(seed)
        self.epoch = 0
        # training mode: augment(image, ref index, epoch) -> image, e.g. lavt.data.augment.BoxAugment
        self.augment: Callable[[Image.Image, int, int], Image.Image] | None = None
        # eval: flat list of (ref index, expression row)
        self._items = [
            (i, row) for i in range(len(self.ref_ids)) for row in range(self._first[i], self._first[i + 1])
        ]
        self._cache: tuple[int, tuple] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose which expression each ref shows this epoch (training mode)."""
        self.epoch = int(epoch)

    def expression_row(self, index: int) -> int:
        """Row of the expression that ref `index` shows in the current epoch (training mode)."""
        first, end = self._first[index], self._first[index + 1]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return first + int(rng.integers(end - first))

    def __len__(self) -> int:
        return len(self.ref_ids) if self.mode == "train" else len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.mode == "train":
            ref_index, row = index, self.expression_row(index)
        else:
            ref_index, row = self._items[index]
        ref_id = self.ref_ids[ref_index]
        # Eval reads the expressions of one ref one after another: decode the image once.
        if self._cache is not None and self._cache[0] == ref_index:
            image, mask, orig = self._cache[1]
        else:
            augment = None
            if self.mode == "train" and self.augment is not None:
                augment = lambda im: self.augment(im, ref_index, self.epoch)  # noqa: E731
            image, mask, orig = self._load(ref_id, augment)
            self._cache = (ref_index, (image, mask, orig)) if self.mode == "eval" else None
        if self.mode == "eval":  # hand out copies: callers may modify items in place
            image, mask, orig = image.clone(), mask.clone(), orig.copy()
        item: dict[str, Any] = {
            "image": image,
            "mask": mask,
            "input_ids": self._ids[row].clone(),  # a view would carry the whole table to workers
            "attention_mask": self._mask[row].clone(),
            "ref_id": int(ref_id),
            "sent_id": self._sent_ids[row],
            "image_id": int(self.refer.refs[ref_id]["image_id"]),
        }
        if self.generalized:
            item["no_target"] = torch.tensor(self.refer.no_target(ref_id))
        if self.mode == "eval":
            item["orig_mask"] = torch.from_numpy(orig)
            item["expression"] = self._texts[row]
            item["kind"] = self._kinds[row]
        return item


class ReferImageGroups(_ReferBase):
    """Evaluation by image: one item per image with every expression of every ref in it.

    Item: `image` (3,S,S), `input_ids`/`attention_mask` (E,N), `masks` int64 (E,S,S),
    `orig_masks` list of E uint8 (H,W), `ref_ids`, `sent_ids`, `expressions`, `kinds` (lists
    of E), `image_id`. Expressions follow ref order then sentence order, as in `ReferDataset` eval.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split_by: str,
        split: str,
        *,
        tokenizer: ExpressionTokenizer,
        image_size: int = 480,
        mask_mode: str = "any",
        skip_unreadable: bool = False,
        max_images: int | None = None,
        image_dir: str | Path | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            root, dataset, split_by, split, tokenizer=tokenizer, image_size=image_size,
            mask_mode=mask_mode, skip_unreadable=skip_unreadable, max_images=max_images,
            image_dir=image_dir, kinds=kinds,
        )
        groups: dict[int, list[int]] = {}
        for i, ref_id in enumerate(self.ref_ids):
            groups.setdefault(int(self.refer.refs[ref_id]["image_id"]), []).append(i)
        self.image_id_list = list(groups)
        self._groups = [groups[i] for i in self.image_id_list]

    def __len__(self) -> int:
        return len(self._groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        image_id = self.image_id_list[index]
        image = self.refer.load_image(image_id)
        image_tensor = image_to_tensor(image, self.image_size)
        rows: list[int] = []
        masks, orig_masks, ref_ids = [], [], []
        for ref_index in self._groups[index]:
            ref_id = self.ref_ids[ref_index]
            orig = self.refer.mask(ref_id, self.mask_mode)
            if orig.shape != (image.height, image.width):
                raise LAVTUserError(
                    f"{self.refer.instances_file}: image_id {image_id} is declared {orig.shape[1]}x{orig.shape[0]} "
                    f"(width x height) but {self.refer.image_path(image_id)} is {image.width}x{image.height}"
                )
            resized = mask_to_tensor(orig, self.image_size)
            for row in range(self._first[ref_index], self._first[ref_index + 1]):
                rows.append(row)
                masks.append(resized)
                orig_masks.append(torch.from_numpy(orig))
                ref_ids.append(int(ref_id))
        group = {
            "image": image_tensor,
            "input_ids": self._ids[rows],
            "attention_mask": self._mask[rows],
            "masks": torch.stack(masks),
            "orig_masks": orig_masks,
            "ref_ids": ref_ids,
            "sent_ids": [self._sent_ids[r] for r in rows],
            "expressions": [self._texts[r] for r in rows],
            "kinds": [self._kinds[r] for r in rows],
            "image_id": int(image_id),
        }
        if self.generalized:
            group["no_targets"] = torch.tensor([self.refer.no_target(r) for r in ref_ids])
        return group


def collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch eval items: stack same-size tensors, keep `orig_mask` (sizes differ) and other fields as lists."""
    if not items:
        raise ValueError("collate_eval needs at least one item")
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key != "orig_mask" and isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], int) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[key] = values
    return batch
