"""The tests' shared helpers, imported one way (`from helpers import ...`).

- paths: `REPO`, `SHARED`, `GOLDEN` (the official code's test vectors beside the repository);
- tiny models: `TINY_BERT`, `tiny_config`, `randomise` (weights at a trained scale),
  `random_inputs`, `grad_fn_names`, `count_caches`;
- the engine: `TINY_TEXT`, `TINY_MODEL`, `make_synth`, `make_tiny_text_encoder`,
  `tiny_train_config`;
- a hand-made refer dataset: `build_refer_dataset`, `refer_expected_masks`, `REFER_COUNTS`,
  `REFER_IMAGE_DIR` (below).
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import BertConfig, BertModel

from lavt.data.synthref import generate as generate_synthref
from lavt.engine.config import TrainConfig
from lavt.models import LAVTConfig, default_text_encoder_dir
from lavt.ops.cache import CACHE_ATTR

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"


# ---------------------------------------------------------------------- tiny models
TINY_BERT = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
)


def tiny_config(**overrides):
    """A small but complete LAVT (every stage padded at 40x56 with window 4)."""
    kw = dict(
        embed_dim=8,
        depths=(1, 2, 1, 2),
        num_heads=(1, 2, 2, 4),
        window_size=4,
        pwam_heads=(1, 2, 1, 2),
        text_dim=32,
        text_encoder=dict(TINY_BERT),
        image_size=48,
        drop_path_rate=0.0,
    )
    kw.update(overrides)
    return LAVTConfig(**kw)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights at the scale of trained ones (Swin's init makes attention and gates trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim >= 2:
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 if "bias_table" in name else t[0].numel() ** -0.5))
            elif name.endswith("weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def random_inputs(b=2, n=6, dim=32, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, h, w, generator=g)
    l = torch.randn(b, n, dim, generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[0, 4:] = 0
    return image, l, mask


def grad_fn_names(t: torch.Tensor) -> set[str]:
    """The names of every node in t's autograd graph."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return {type(fn).__name__ for fn in seen}


def count_caches(model: torch.nn.Module) -> int:
    """How many modules hold an inference cache."""
    return sum(CACHE_ATTR in m.__dict__ for m in model.modules())


# ---------------------------------------------------------------------- the engine
TINY_TEXT = dict(
    vocab_size=30522,  # the uncased BERT vocabulary the tokenizer produces ids for
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,  # deterministic: one process and two take comparable steps
    attention_probs_dropout_prob=0.0,
)

TINY_MODEL = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, drop_path_rate=0.0)


def make_synth(root: Path, num_images: int = 24) -> Path:
    """The generated referring dataset (`synthref`, split_by unc) with small images."""
    if not (root / "synthref").is_dir():
        generate_synthref(root, seed=0, num_images=num_images, image_size=(40, 56), overwrite=True)
    return root


def make_tiny_text_encoder(folder: Path) -> Path:
    """A randomly initialised two-layer BERT saved as a local Hugging Face folder, with the
    packaged uncased vocabulary beside it."""
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_TEXT), add_pooling_layer=False).save_pretrained(folder)
    shutil.copy(default_text_encoder_dir() / "vocab.txt", folder / "vocab.txt")
    return folder


def tiny_train_config(data_root: Path, text_dir: Path, out: Path, **overrides: Any):
    """A TrainConfig for a 32x32 tiny LAVT on the synthref data."""
    kw: dict[str, Any] = dict(
        data_root=str(data_root),
        dataset="synthref",
        text_encoder=str(text_dir),
        output_dir=str(out),
        model="tiny",
        model_overrides=dict(TINY_MODEL),
        image_size=32,
        epochs=1,
        batch_size=4,
        lr=1e-3,
        num_workers=0,
        val_max_images=2,
        progress=False,
        plot=False,
        log_every=1,
    )
    kw.update(overrides)
    return TrainConfig(**kw).validate()


# ---------------------------------------------------------------------- a hand-made refer dataset
"""A tiny hand-made refer-format dataset in the official field layout (RefCOCO style).

Two images under images/mscoco/images/train2014/, refs(unc).p as a protocol-2 pickle and
instances.json. Objects cover every segmentation form the reader must handle:

- ann 101 (image 1): one object drawn as two overlapping rectangles, so the official
  `== 1` mask drops their overlap while `> 0` keeps it;
- ann 102 (image 1): a triangle polygon;
- ann 103 (image 1): an uncompressed RLE (counts as a list);
- ann 201 (image 2): a compressed RLE (counts as a string);
- ann 202 (image 2): a rectangle polygon.

`EXPECTED` holds the masks each object must decode to, written out by hand.
"""

REFER_IMAGE_DIR = "images/mscoco/images/train2014"
REFER_SIZES = {1: (30, 40), 2: (48, 32)}  # image_id -> (height, width)


def _rect(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def refer_expected_masks() -> dict[int, dict[str, np.ndarray]]:
    """ann_id -> {'any': mask, 'official': mask}."""
    h1, w1 = REFER_SIZES[1]
    h2, w2 = REFER_SIZES[2]
    a = _rect(h1, w1, 5, 5, 20, 20)
    b = _rect(h1, w1, 15, 10, 30, 25)
    triangle = mask_utils.decode(mask_utils.frPyObjects([[32, 2, 38, 2, 35, 12]], h1, w1))[:, :, 0]
    small = _rect(h1, w1, 2, 22, 9, 28)
    rle_obj = _rect(h2, w2, 4, 6, 20, 30)
    box = _rect(h2, w2, 10, 32, 28, 44)
    union = ((a + b) > 0).astype(np.uint8)
    once = ((a + b) == 1).astype(np.uint8)
    return {
        101: {"any": union, "official": once},
        102: {"any": triangle, "official": triangle},
        103: {"any": small, "official": small},
        201: {"any": rle_obj, "official": rle_obj},
        202: {"any": box, "official": box},
    }


def _sentence(sent_id: int, raw: str) -> dict:
    sent = raw.lower().rstrip(".")
    return {"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent}


def build_refer_dataset(root: Path, dataset: str = "refcoco") -> Path:
    """Write the fixture under `root` and return `root`."""
    root = Path(root)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    image_dir = root / REFER_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    masks = refer_expected_masks()
    rng = np.random.default_rng(0)
    images = []
    for image_id, (h, w) in REFER_SIZES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(image_dir / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})

    compressed = mask_utils.encode(np.asfortranarray(masks[201]["any"]))
    annotations = [
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0.0, "bbox": [5, 5, 25, 20],
         "segmentation": [_box_polygon(5, 5, 20, 20), _box_polygon(15, 10, 30, 25)]},
        {"id": 102, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 0.0, "bbox": [32, 2, 6, 10],
         "segmentation": [[32, 2, 38, 2, 35, 12]]},
        {"id": 103, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 0.0, "bbox": [2, 22, 7, 6],
         "segmentation": _uncompressed_rle(masks[103]["any"])},
        {"id": 201, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 0.0, "bbox": [4, 6, 16, 24],
         "segmentation": {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}},
        {"id": 202, "image_id": 2, "category_id": 2, "iscrowd": 0, "area": 0.0, "bbox": [10, 32, 18, 12],
         "segmentation": [_box_polygon(10, 32, 28, 44)]},
    ]
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 2, "name": "dog", "supercategory": "animal"}]
    refs_spec = [  # ref_id, ann_id, image_id, split, sentences
        (1, 101, 1, "train", ["Man on the left", "left guy in two parts", "the person standing."]),
        (2, 102, 1, "train", ["dog top right", "small triangle dog"]),
        (3, 103, 1, "val", ["bottom left thing", "tiny box"]),
        (4, 201, 2, "testA", ["tall person", "person on top", "the man"]),
        (5, 202, 2, "testB", ["dog at the bottom"]),
    ]
    refs, sent_id = [], 0
    for ref_id, ann_id, image_id, split, raws in refs_spec:
        sentences = []
        for raw in raws:
            sent_id += 1
            sentences.append(_sentence(sent_id, raw))
        refs.append({
            "sent_ids": [s["sent_id"] for s in sentences],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "ann_id": ann_id, "ref_id": ref_id, "image_id": image_id, "split": split,
            "sentences": sentences, "category_id": 1 if ann_id in (101, 201) else 2,
        })
    (root / dataset / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / dataset / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


# Counts of the fixture per split: refs, expressions, images.
REFER_COUNTS = {"train": (2, 5, 1), "val": (1, 2, 1), "testA": (1, 3, 1), "testB": (1, 1, 1)}


# ---------------------------------------------------------------------- bad inputs
def snapshot(*roots: Path) -> dict[str, str]:
    """path -> sha256 of every file under `roots`: equal before and after a refused command
    means no input was modified and no output, partial or not, was left behind."""
    import hashlib

    out = {}
    for root in roots:
        for p in [Path(root), *sorted(Path(root).rglob("*"))]:
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


def one_error_line(err: str, phrase: str) -> str:
    """Assert that stderr is exactly one `error:` line matching the regex `phrase`."""
    import re

    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err, err
    assert re.search(phrase, lines[0]), f"{phrase!r} not in {lines[0]!r}"
    return lines[0]


class CodeRunner:
    """A pickle payload: unpickling calls `fn(*args)`. `marker_payloads(marker)` gives ones that
    would create `marker` (a shell command through os.system, a file through builtins.open)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def marker_payloads(marker: Path) -> dict[str, CodeRunner]:
    import builtins
    import os

    return {"os.system": CodeRunner(os.system, f"touch '{marker}'"), "builtins.open": CodeRunner(builtins.open, str(marker), "w")}


def tiny_model_folder(folder: Path, seed: int = 0, **overrides: Any) -> Path:
    """A tiny LAVT with its BERT text encoder saved by `save_pretrained`, with the tokenizer."""
    from lavt.data.tokenization import ExpressionTokenizer
    from lavt.models import LAVT

    torch.manual_seed(seed)
    model = LAVT(tiny_config(**overrides))
    tokenizer = ExpressionTokenizer.from_pretrained(default_text_encoder_dir(), max_tokens=model.config.max_tokens)
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


# ---------------------------------------------------------------------- torchrun
def run_torchrun(worker: Path, args: Path, timeout: int = 300) -> str:
    """`torchrun --nproc_per_node 2 WORKER ARGS` with gloo on a free local port, one thread per
    process and no inherited rank variables; fails the test (workers killed) on a timeout or a
    non-zero exit, showing how far the workers got. Returns their stdout."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import pytest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(worker), str(args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s; workers got to:\n{stdout}\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"workers got to:\n{stdout}\n{stderr[-4000:]}"
    return stdout


def poison_loss(monkeypatch: Any, factor: float, at_call: int) -> None:
    """Make the `at_call`-th SegmentationLoss forward (1-based) return its loss times `factor`
    (inf or nan: a diverging step); the other calls are unchanged."""
    from lavt.engine.losses import SegmentationLoss

    calls = {"n": 0}
    forward = SegmentationLoss.forward

    def poisoned(self, logits, target, normalizers=None):  # noqa: ANN001
        calls["n"] += 1
        loss = forward(self, logits, target, normalizers)
        return loss * factor if calls["n"] == at_call else loss

    monkeypatch.setattr(SegmentationLoss, "forward", poisoned)
