"""The demo's data: a generated split held in memory, cached frozen text features, and the
batch source that plugs into the engine's training loop.

On 2 CPU cores nothing may be recomputed per step that can be computed once: the images are
decoded and resized once (`SceneSet`), and the frozen text encoder runs once per distinct
expression (`TextCache`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lavt.data.grefcoco import open_refer
from lavt.data.synthref import generate
from lavt.data.synthref.aerial import DATASET as AERIAL_DATASET
from lavt.data.synthref.aerial import generate_aerial
from lavt.data.synthref.language_generalized import generate_generalized
from lavt.data.transforms import image_to_tensor, mask_to_tensor

SCENE_SIZE = (128, 192)  # (height, width) of the generated scenes, training and evaluation
# Side of the (square) aerial scenes: objects scale with the side, so a larger side only adds
# rendering detail that the model's input size then drops again
AERIAL_SIDE = 128


@dataclass
class SceneSet:
    """A split held in memory: normalised images (I,3,S,S), masks (R,S,S) per ref, the
    original-size masks, per ref its expressions with their kind and (a generalised set)
    whether it names no object (empty: every ref names one)."""

    images: torch.Tensor
    image_of_ref: torch.Tensor
    masks: torch.Tensor
    orig_masks: list[np.ndarray]
    expressions: list[list[tuple[str, str]]]
    file_names: list[str] = field(default_factory=list)
    image_files: list[Path] = field(default_factory=list)
    no_target: list[bool] = field(default_factory=list)

    @property
    def num_expressions(self) -> int:
        return sum(len(e) for e in self.expressions)

    def refs_by_image(self) -> dict[int, list[int]]:
        """Image index -> its refs, in ref order."""
        out: dict[int, list[int]] = {}
        for r, i in enumerate(self.image_of_ref.tolist()):
            out.setdefault(i, []).append(r)
        return out


def scene_dataset(style: str) -> str:
    """The dataset name under which `generate_scenes(style=style)` writes its scenes."""
    return AERIAL_DATASET if style == "aerial" else "synthref"


def generate_scenes(folder: Path, seed: int, images: int, train_only: bool = False, style: str = "synthref") -> Path:
    """`images` fresh synthref scenes in `folder` (overwritten); `train_only`: all in the
    train split (a training set), else the usual split fractions. `style` "aerial": square
    aerial scenes (`synthrs`, always split 80/10/10: load every split to train on all)."""
    if style == "aerial":
        generate_aerial(folder, seed=seed, num_images=images, image_size=(AERIAL_SIDE, AERIAL_SIDE), overwrite=True)
        return folder
    extra: dict[str, Any] = {"split_fractions": (1.0, 0.0, 0.0, 0.0)} if train_only else {}
    generate(folder, seed=seed, num_images=images, image_size=SCENE_SIZE, overwrite=True, **extra)
    return folder


def generate_generalized_scenes(folder: Path, seed: int, images: int, train_only: bool = False) -> Path:
    """`generate_scenes`, then their generalised expressions (multi-target and no-target) in
    `folder/synthgref` (`lavt data synth --generalized`); load them with dataset=GDATASET."""
    generate_scenes(folder, seed, images, train_only)
    generate_generalized(folder, seed=seed)
    return folder


def load_scenes(root: str | Path, split: str | None, size: int, dataset: str = "synthref", split_by: str = "unc") -> SceneSet:
    """Read a refer-format split (None = every split) into memory at `size` x `size`; a
    gRefCOCO-layout dataset (GDATASET, grefcoco) also gives each ref's no-target flag."""
    refer = open_refer(root, dataset, split_by)
    generalized = getattr(refer, "generalized", False)  # a gRefCOCO-layout reader
    ref_ids = refer.ref_ids(split)
    index: dict[int, int] = {}
    image_of_ref, masks, orig, exprs, no_target = [], [], [], [], []
    for rid in ref_ids:
        ref = refer.refs[rid]
        iid = int(ref["image_id"])
        index.setdefault(iid, len(index))
        image_of_ref.append(index[iid])
        m = refer.mask(rid)
        orig.append(m.astype(bool))
        masks.append(mask_to_tensor(m, size).bool())
        exprs.append([(s["raw"], str(s.get("kind", ""))) for s in ref["sentences"]])
        if generalized:
            no_target.append(bool(refer.no_target(rid)))
    order = sorted(index, key=index.get)
    images = torch.stack([image_to_tensor(refer.load_image(i), size) for i in order])
    return SceneSet(
        images=images,
        image_of_ref=torch.tensor(image_of_ref),
        masks=torch.stack(masks),
        orig_masks=orig,
        expressions=exprs,
        file_names=[refer.images[i]["file_name"] for i in order],
        image_files=[refer.image_path(i) for i in order],
        no_target=no_target,
    )


class TextCache:
    """Frozen text encoder outputs per distinct expression (the encoder never changes)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.encoder = model.text_encoder
        self.tokenizer = tokenizer
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            ids, mask = self.tokenizer(chunk)
            # Encode only up to the longest expression of the chunk (~half the padded 20
            # tokens): with the attention mask BERT's outputs for the words do not depend on
            # the padding, and LAVT masks the padding positions out (PWAM zeroes their keys
            # and values)
            n = max(1, int(mask.sum(1).max()))
            feats = self.encoder(input_ids=ids[:, :n], attention_mask=mask[:, :n])[0]
            feats = F.pad(feats, (0, 0, 0, ids.shape[1] - n))
            for i, t in enumerate(chunk):
                self._cache[t] = (feats[i].clone(), mask[i].clone())
        return (
            torch.stack([self._cache[t][0] for t in texts]),
            torch.stack([self._cache[t][1] for t in texts]),
        )


class ExpressionSampler:
    """Draws one expression of a ref: uniformly, or in proportion to its kind's weight (a ref
    whose kinds all weigh 0 falls back to uniform, so every ref stays trainable)."""

    def __init__(self, expressions: list[list[tuple[str, str]]], kind_weights: dict[str, float]) -> None:
        self.expressions = expressions
        self.cumulative: list[np.ndarray] | None = None
        if kind_weights:
            self.cumulative = []
            for ex in expressions:
                w = np.array([kind_weights.get(kind, 1.0) for _, kind in ex], dtype=np.float64)
                if not w.sum() > 0:
                    w = np.ones(len(ex))
                self.cumulative.append(np.cumsum(w))

    def __call__(self, ref: int, rng: np.random.Generator) -> str:
        ex = self.expressions[ref]
        if self.cumulative is None:
            return ex[rng.integers(len(ex))][0]  # the draw of the earlier stages, kept for reruns
        c = self.cumulative[ref]
        # min(): u * c[-1] may round up to c[-1] itself, past the last index
        return ex[min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), len(ex) - 1)][0]


class SceneBatches:
    """The demo's batch source for the engine's `run_steps`: each step, `batch_size` refs
    drawn at random with one expression each (attribute expressions only while the run's
    progress is below `curriculum`, then by `kind_weights`), their text features from the
    cache, and for a generalised set each ref's no-target label. One micro-batch per step."""

    def __init__(
        self,
        scenes: SceneSet,
        texts: TextCache,
        batch_size: int,
        rng: np.random.Generator,
        curriculum: float = 0.0,
        kind_weights: dict[str, float] | None = None,
    ) -> None:
        self.scenes, self.texts, self.batch_size, self.rng = scenes, texts, int(batch_size), rng
        self.curriculum = float(curriculum)
        self.attribute_only = ExpressionSampler([[e for e in ex if e[1] == "attribute"] or ex for ex in scenes.expressions], {})
        self.weighted = ExpressionSampler(scenes.expressions, kind_weights or {})

    def __call__(self, progress: float) -> list[dict[str, torch.Tensor]]:
        s = self.scenes
        refs = self.rng.integers(0, len(s.expressions), self.batch_size)
        draw = self.attribute_only if progress < self.curriculum else self.weighted
        feats, mask = self.texts([draw(r, self.rng) for r in refs])
        ridx = torch.from_numpy(refs)
        batch = {"image": s.images[s.image_of_ref[ridx]], "mask": s.masks[ridx].long(), "text_features": feats, "text_mask": mask}
        if s.no_target:
            batch["no_target"] = torch.tensor([s.no_target[r] for r in refs.tolist()])
        return [batch]
