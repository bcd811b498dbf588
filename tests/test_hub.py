"""Hugging Face Hub ids through huggingface_hub's own cache code (a cache laid out in a
temporary folder, offline), local paths winning, model cards, `lavt push`'s checks."""
from __future__ import annotations

import shutil

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml

from lavt.cli import main
from lavt.errors import LAVTUserError
from lavt.hub import parse_hub_id, resolve_source, write_model_card
from lavt.inference import Predictor
from lavt.models import LAVT
from lavt.runtime import OnnxPredictor
from onnx_helpers import tiny_export, tiny_model_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id, folder, ref="main", commit=COMMIT):
    """Lay `folder` out as huggingface_hub stores a downloaded snapshot: blobs, a snapshot of
    links to them, and refs/<ref> naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for i, f in enumerate(sorted(p for p in folder.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads both when it is imported; it is imported already, so set its copies too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_ids_parse():
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("name") is None and parse_hub_id("/abs/path") is None and parse_hub_id("a/b/c") is None
    assert parse_hub_id("runs/refcoco.pth") is None and parse_hub_id("../x") is None


def _assert_same_weights(a: LAVT, b: LAVT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()  # zip alone would stop at the shorter one
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cached_ids_load_offline_and_local_paths_win(onnx_root, offline_cache, tmp_path, monkeypatch):
    saved = tiny_model_dir(onnx_root)
    snap = _cache_repo(offline_cache, "someorg/lavt-tiny", saved)
    assert resolve_source("someorg/lavt-tiny") == snap
    assert resolve_source(f"someorg/lavt-tiny@{COMMIT}") == snap
    model = LAVT.from_pretrained("someorg/lavt-tiny@main")
    ref = LAVT.from_pretrained(saved)
    _assert_same_weights(model, ref)
    scene = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    hub_pred = Predictor.from_pretrained("someorg/lavt-tiny").predict(scene, "the red one")[0]
    assert np.array_equal(hub_pred.mask, Predictor.from_pretrained(saved).predict(scene, "the red one")[0].mask)
    # A local folder spelled like the id wins over the cache.
    other = tiny_model_dir(onnx_root, seed=1)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(other, tmp_path / "someorg" / "lavt-tiny")
    local = LAVT.from_pretrained("someorg/lavt-tiny")
    _assert_same_weights(local, LAVT.from_pretrained(other))


def test_exported_folder_by_hub_id_in_cli_and_runtime(onnx_root, offline_cache, tmp_path, capsys):
    _cache_repo(offline_cache, "someorg/lavt-tiny-onnx", tiny_export(onnx_root))
    assert OnnxPredictor("someorg/lavt-tiny-onnx").image_size == (48, 48)
    from PIL import Image

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "x.png")
    code = main(["predict", "-c", "someorg/lavt-tiny-onnx", str(tmp_path / "x.png"), "the thing", "--out", str(tmp_path / "p")])
    assert code == 0 and (tmp_path / "p" / "x_1_mask.png").is_file()


def test_uncached_id_is_a_clear_error(offline_cache, tmp_path, capsys):
    with pytest.raises(LAVTUserError) as info:
        LAVT.from_pretrained("someorg/not-there@v2")
    msg = str(info.value)
    assert "someorg/not-there at revision v2" in msg and "neither in the cache" in msg and "HF_HUB_OFFLINE is set" in msg
    assert str(offline_cache) in msg
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    assert main(["predict", "-c", "someorg/not-there", str(tmp_path / "img.png"), "x", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "someorg/not-there" in err and err.count("\n") == 1


def test_model_cards(onnx_root, tmp_path):
    card = (tiny_model_dir(onnx_root) / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "lavt" and meta["pipeline_tag"] == "image-segmentation"
    assert "referring-image-segmentation" in meta["tags"] and "pytorch" in meta["tags"]
    assert "Predictor.from_pretrained" in card and "lavt predict --checkpoint" in card and "window 4" in card
    path = write_model_card(tmp_path, {"embed_dim": 128, "depths": [2, 2, 18, 2], "window_size": 12, "image_size": 480},
                            datasets=["refcoco"], metrics={"oIoU": 72.73, "mIoU": 74.46})
    text = path.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["datasets"] == ["refcoco"] and meta["metrics"] == ["oIoU", "mIoU"]
    assert "| oIoU | 72.73 |" in text and "embed dim 128, depths 2-2-18-2, window 12" in text
    from lavt.demo import shipped_model_dir

    shipped = (shipped_model_dir() / "README.md").read_text()
    assert yaml.safe_load(shipped.split("---")[1])["metrics"] == ["oIoU", "mIoU", "P@0.5", "P@0.9"] and "| oIoU | 85.65 |" in shipped
    onnx_card = (tiny_export(onnx_root) / "README.md").read_text()
    assert "onnx" in yaml.safe_load(onnx_card.split("---")[1])["tags"]
    assert "OnnxPredictor" in onnx_card and "largest logit difference to the torch model" in onnx_card


def test_push_checks_its_arguments_before_any_upload(onnx_root, tmp_path, capsys, monkeypatch):
    def no_upload(*a, **k):
        raise AssertionError("push must not reach the Hub here")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", no_upload)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_upload)
    cases = [
        ([str(tmp_path / "missing"), "org/name"], "is not a folder"),
        ([str(tmp_path), "org/name"], "holds no LAVT model"),
        ([str(tiny_model_dir(onnx_root)), "just-a-name"], "is not a Hugging Face Hub repo id"),
        ([str(tiny_model_dir(onnx_root)), "org/name@v1"], "is not a Hugging Face Hub repo id"),
    ]
    for args, message in cases:
        assert main(["push", *args]) == 2
        assert message in capsys.readouterr().err


def test_card_title_of_a_folder_written_under_a_temporary_name(tmp_path):
    """Training and `lavt convert` save into .NAME.tmp and rename it: the card names NAME."""
    folder = tmp_path / ".model_best.tmp"
    folder.mkdir()
    assert "\n# model_best\n" in write_model_card(folder, {"depths": [2]}).read_text()
