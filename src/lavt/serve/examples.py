"""The page's examples: generated scenes with expressions the loaded model gets right.

At startup a few synthref scenes are drawn, every attribute expression ("the red circle")
of each is segmented in one forward, and the scenes whose two best expressions (of two
different objects) overlap their true masks best are kept, so a first visit shows the model
working rather than an arbitrary failure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lavt.data import Refer, generate_synthref
from lavt.serve.service import SegmentService

EXAMPLE_SEED = 20261201  # a seed of its own, never used to train the shipped model


@dataclass
class Example:
    image: Path
    expressions: list[str]
    ious: list[float]

    @property
    def text(self) -> str:
        return "\n".join(self.expressions)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def make_examples(service: SegmentService, folder: Path, count: int = 3, candidates: int = 8,
                  seed: int = EXAMPLE_SEED, image_size: tuple[int, int] = (128, 192)) -> list[Example]:
    """Up to `count` examples of two expressions each, best first, from `candidates` scenes."""
    if count < 1:
        return []
    generate_synthref(folder, seed=seed, num_images=candidates, image_size=image_size, overwrite=True)
    refer = Refer(folder, "synthref")
    scored: list[tuple[float, Example]] = []
    for image_id, ref_ids in refer.image_refs.items():
        # The shortest attribute expression of each referred object.
        picks: list[tuple[str, int]] = []
        for ref_id in ref_ids:
            attrs = [s["sent"] for s in refer.refs[ref_id]["sentences"] if s.get("kind") == "attribute"]
            if attrs:
                picks.append((min(attrs, key=len), ref_id))
        if len(picks) < 2:
            continue
        path = refer.image_path(image_id)
        image = refer.load_image(image_id)
        result = service.predict(image, [text for text, _ in picks])
        ious = [_iou(mask, refer.mask(ref_id).astype(bool)) for mask, (_, ref_id) in zip(result.masks, picks)]
        best = sorted(range(len(picks)), key=lambda k: -ious[k])[:2]
        example = Example(path, [picks[k][0] for k in best], [ious[k] for k in best])
        scored.append((min(example.ious), example))
    scored.sort(key=lambda item: -item[0])
    return [example for _, example in scored[:count]]
