"""Property-based tests (hypothesis) of the readers: whatever the input, a correct read or one
`LAVTUserError`, never another exception.

- the refer reader on refs/instances with keys removed and values replaced at random;
- the image loader on random bytes (bare, behind real format signatures, a real image cut
  short or with bytes flipped) and random arrays;
- the tokenizer on random unicode;
- the training configuration parser on random `key=value` strings and config files;
- `ReferringMetrics`: a perfect prediction scores 100, two merged halves equal one pass.

The budget is small by default (the `ci` profile: seconds in all). For a longer search:

    LAVT_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz.py -q
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from helpers import build_refer_dataset, refer_expected_masks
from lavt.data.refer import Refer
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.engine.config import TrainConfig, load_train_config
from lavt.engine.config_values import read_config_file
from lavt.errors import LAVTUserError
from lavt.inference import load_image
from lavt.metrics import ReferringMetrics

# `ci`: deterministic and small; `long`: LAVT_FUZZ_PROFILE=long, random and 50 times larger.
settings.register_profile("ci", max_examples=20, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=1000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("LAVT_FUZZ_PROFILE", "ci"))


def fuzz(scale: float = 1.0) -> settings:
    """The profile's settings with `scale` times its examples (cheap properties get more)."""
    return settings(PROFILE, max_examples=max(5, int(PROFILE.max_examples * scale)))


# ---------------------------------------------------------------------- random values
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.integers(), st.floats(), st.text(max_size=6),
    st.sampled_from([1, 2, 101, 201, "train", "val", "", " "]),  # values that collide with real ids and splits
)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                      max_leaves=6)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a nested structure, as a key/index path."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _perturb(obj: Any, data: st.DataObject) -> tuple[Any, int]:
    """`obj` with 0-3 places deleted or replaced by random values; returns (new, changes)."""
    obj = copy.deepcopy(obj)
    n = data.draw(st.integers(0, 3), label="changes")
    for _ in range(n):
        path = data.draw(st.sampled_from(_paths(obj)), label="where")
        value = data.draw(values, label="value")
        if not path:
            obj = value
            continue
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return obj, n


# ---------------------------------------------------------------------- the refer reader
@pytest.fixture(scope="module")
def refer_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict]:
    root = build_refer_dataset(tmp_path_factory.mktemp("refer"))
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    instances = json.loads((root / "refcoco" / "instances.json").read_text())
    return refs, instances


@fuzz(2)
@given(data=st.data())
def test_refer_reader_on_perturbed_records(refer_files: tuple[list, dict], data: st.DataObject) -> None:
    refs, changed_refs = _perturb(refer_files[0], data)
    instances, changed_instances = _perturb(refer_files[1], data)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "refcoco").mkdir()
        (Path(tmp) / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
        (Path(tmp) / "refcoco" / "instances.json").write_text(json.dumps(instances))
        try:
            refer = Refer(tmp, "refcoco")
        except LAVTUserError:
            assert changed_refs or changed_instances, "the unchanged fixture must read"
            return
        assert len(refer.refs) == len(refs)
        assert sum(c[1] for c in refer.split_counts().values()) == sum(len(r["sentences"]) for r in refs)
        for split in refer.split_names():
            assert set(refer.ref_ids(split)) <= set(refer.refs)
        expected = refer_expected_masks()
        for ref_id, ref in refer.refs.items():
            try:
                mask = refer.mask(ref_id)
            except LAVTUserError:
                assert changed_refs or changed_instances, "the unchanged fixture's masks must decode"
                continue
            image = refer.images[int(ref["image_id"])]
            assert mask.dtype == np.uint8 and mask.shape == (int(image["height"]), int(image["width"]))
            assert set(np.unique(mask)) <= {0, 1}
            if not (changed_refs or changed_instances):
                assert np.array_equal(mask, expected[int(ref["ann_id"])]["any"])


# ---------------------------------------------------------------------- the image loader
def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}
SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP"]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "signature", "cut", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "signature":
        return draw(st.sampled_from(SIGNATURES)) + draw(st.binary(max_size=256))
    valid = VALID[draw(st.sampled_from(sorted(VALID)))]
    if kind == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    flipped = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        flipped[draw(st.integers(0, len(valid) - 1))] ^= draw(st.integers(1, 255))
    return bytes(flipped)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # Pillow's notes on damaged TIFF tags it still decodes
@fuzz(3)
@given(payload=image_bytes(), suffix=st.sampled_from([".jpg", ".png", ".gif", ".bin"]))
def test_image_loader_on_random_bytes(payload: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"image{suffix}"
        path.write_bytes(payload)
        try:
            image = load_image(path)
        except LAVTUserError:
            return
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
        assert np.asarray(image).shape == (image.height, image.width, 3)


ARRAY_DTYPES = [np.uint8, np.uint16, np.float16, np.float32, np.float64, np.bool_, np.int32, np.int64, np.complex64]


@fuzz(3)
@given(arr=st.sampled_from(ARRAY_DTYPES).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))))
def test_image_loader_on_random_arrays(arr: np.ndarray) -> None:
    try:
        image = load_image(arr)
    except LAVTUserError:
        return
    assert image.mode == "RGB" and (image.height, image.width) == arr.shape[:2]
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        assert np.array_equal(np.asarray(image), arr)  # RGB bytes pass through unchanged


# ---------------------------------------------------------------------- the tokenizer
@pytest.fixture(scope="module")
def tokenizer() -> ExpressionTokenizer:
    return ExpressionTokenizer.from_pretrained(default_text_encoder_dir(), max_tokens=20)


@fuzz(5)
@given(texts=st.lists(st.text(st.characters(exclude_categories=()), max_size=60), min_size=1, max_size=3))
def test_tokenizer_on_random_unicode(tokenizer: ExpressionTokenizer, texts: list[str]) -> None:
    try:
        ids, mask = tokenizer(texts)
    except LAVTUserError:
        return
    assert ids.shape == mask.shape == (len(texts), 20) and ids.dtype == mask.dtype == torch.int64
    cls, sep = tokenizer.token_ids("")
    for row, text in enumerate(texts):
        n = int(mask[row].sum())
        assert mask[row].tolist() == [1] * n + [0] * (20 - n) and n >= 2
        assert ids[row, 0] == cls and (ids[row, n:] == 0).all()
        assert ((ids[row] >= 0) & (ids[row] < tokenizer.vocab_size)).all()
        if not tokenizer.is_truncated(text):
            assert ids[row, n - 1] == sep
        assert tokenizer.encode(text) == (ids[row].tolist(), mask[row].tolist())  # one at a time = batched


# ---------------------------------------------------------------------- the configuration parser
FIELDS = sorted(TrainConfig.__dataclass_fields__)
raw_values = st.one_of(
    st.text(max_size=12), st.integers().map(str), st.floats().map(repr), st.booleans().map(str),
    st.sampled_from(["[1, 2]", "{a: 1}", "null", "-1", "0", "1e-4", "'x'", "[", "{", ": :", "~", "fp16", "tiny"]),
)
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from([f"model_overrides.{k}" for k in ("window_size", "depths", "x")]),
                 st.text(max_size=12))


@fuzz(5)
@given(items=st.lists(st.tuples(keys, raw_values).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4))
def test_config_parser_on_random_overrides(items: list[str]) -> None:
    try:
        config = load_train_config(None, items, preset="debug", check_paths=False)
    except LAVTUserError:
        return
    again = TrainConfig.from_dict(config.to_dict(), source="round trip").validate(check_paths=False)
    assert again.to_dict() == config.to_dict()


MUST_LOAD = {"{}": ".json", "epochs: 2\nlr: 0.001\n": ".yaml"}  # the happy path is taken, not only the error one


@fuzz(3)
@example(text="{}", suffix=".json")
@example(text="epochs: 2\nlr: 0.001\n", suffix=".yaml")
@given(text=st.one_of(st.text(max_size=80), st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=4)
                      .map(json.dumps)), suffix=st.sampled_from([".yaml", ".json"]))
def test_config_parser_on_random_files(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"config{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            data = read_config_file(path)
            config = load_train_config(path, [], preset="debug", check_paths=False)
        except LAVTUserError:
            assert MUST_LOAD.get(text) != suffix, (text, suffix)
            return
        assert isinstance(data, dict) and isinstance(config, TrainConfig)
        again = TrainConfig.from_dict(config.to_dict(), source="round trip").validate(check_paths=False)
        assert again.to_dict() == config.to_dict()


# ---------------------------------------------------------------------- metrics
masks = hnp.arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)))


@fuzz(5)
@given(gt=masks)
def test_perfect_prediction_scores_100(gt: np.ndarray) -> None:
    m = ReferringMetrics()
    ious = m.update_batch(gt, gt)
    scores = m.compute()
    assert ious == [1.0 if g.any() else 0.0 for g in gt]  # an empty target and prediction: IoU 0, as officially
    assert scores["oIoU"] == (100.0 if gt.any() else 0.0)
    if all(g.any() for g in gt):
        assert all(v == 100.0 for v in scores.values())


@fuzz(5)
@given(pair=st.integers(1, 8).flatmap(lambda e: st.tuples(
    *[hnp.arrays(np.bool_, (e, 4, 3))] * 2, st.integers(0, e))))
def test_merging_two_halves_equals_one_pass(pair: tuple[np.ndarray, np.ndarray, int]) -> None:
    pred, gt, cut = pair
    whole = ReferringMetrics()
    whole.update_batch(pred, gt)
    first, second = ReferringMetrics(), ReferringMetrics()
    for i in range(len(gt)):
        (first if i < cut else second).update(pred[i], torch.from_numpy(gt[i]))
    first.merge(second)
    assert first.count == whole.count and first.compute() == whole.compute()
    shards = ReferringMetrics()  # as after an all-reduce: sums only
    shards.load_state(first.state())
    for k, v in whole.compute().items():
        assert math.isclose(shards.compute()[k], v, rel_tol=1e-12, abs_tol=1e-12), k
