"""Typed configs: presets, files, overrides; bad input stops with one clear line before any work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lavt.cli import main
from lavt.engine.config import EvalConfig, TrainConfig, load_eval_config, load_train_config, parse_overrides
from lavt.errors import LAVTUserError


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    (tmp_path / "data" / "refcoco").mkdir(parents=True)
    return tmp_path / "data"


def test_paper_preset_is_the_official_recipe() -> None:
    c = load_train_config(check_paths=False)
    assert (c.lr, c.weight_decay, c.epochs, c.batch_size, c.image_size) == (5e-5, 0.01, 40, 32, 480)
    assert c.ce_weight == (0.9, 1.1) and c.loss == "ce" and c.poly_power == 0.9
    assert c.text_layers_trained == 10 and c.model == "base" and c.val_expressions == "one"
    assert c.resolved_split_by == "unc"
    assert TrainConfig(dataset="refcocog").resolved_split_by == "umd"


def test_file_then_overrides(tmp_path: Path, data_root: Path) -> None:
    f = tmp_path / "run.yaml"
    # YAML reads 5e-5 without a dot as a string: the typed config still takes it as a number.
    f.write_text(f"preset: debug\ndata_root: {data_root}\ndataset: refcoco\nlr: 5e-5\nce_weight: [1, 2]\n")
    c = load_train_config(f, ["lr=2e-4", "model_overrides.window_size=8", "--micro-batch-size=2"])
    assert c.lr == 2e-4 and c.ce_weight == (1.0, 2.0) and c.micro_batch_size == 2
    assert c.model == "tiny" and c.model_overrides["window_size"] == 8 and c.model_overrides["embed_dim"] == 16
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"data_root": str(data_root), "epochs": 3, "precision": "bf16"}))
    c = load_train_config(j)
    assert c.epochs == 3 and c.precision == "bf16" and c.model == "base"
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_parse_overrides() -> None:
    assert parse_overrides(["a=1", "b.c=[1, 2]", "d=null", "e=text"]) == {"a": 1, "b": {"c": [1, 2]}, "d": None, "e": "text"}
    with pytest.raises(LAVTUserError, match="key=value"):
        parse_overrides(["novalue"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_sise": 4}, r"unknown key 'batch_sise' in options; did you mean 'batch_size'\?"),
        ({"batch_size": 0}, r"batch_size = 0 is impossible: it must be a positive number"),
        ({"lr": -1e-4}, r"lr = -0.0001 is impossible: it must not be negative"),
        ({"epochs": "many"}, r"epochs in options must be an integer, got 'many'"),
        ({"loss": "focal"}, r"loss in options must be one of 'ce', 'dice', 'ce\+dice'"),
        ({"batch_size": 6, "micro_batch_size": 4}, r"micro_batch_size = 4 is impossible: it must divide batch_size 6"),
        ({"precision": "fp16", "device": "cpu"}, r"needs a CUDA device"),
        ({"data_root": "/nonexistent/lavt-data"}, r"data root /nonexistent/lavt-data does not exist"),
    ],
)
def test_bad_values_raise_one_clear_error(overrides: dict, message: str, data_root: Path) -> None:
    full = {"data_root": str(data_root), **overrides}
    with pytest.raises(LAVTUserError, match=message):
        load_train_config(overrides=full)


def test_missing_data_root_and_dataset(data_root: Path) -> None:
    with pytest.raises(LAVTUserError, match="no data root given"):
        load_train_config()
    with pytest.raises(LAVTUserError, match=r"no dataset folder 'refcoco\+' \(found: \['refcoco'\]\)"):
        load_train_config(overrides={"data_root": str(data_root), "dataset": "refcoco+"})


def test_cli_prints_one_line_and_starts_nothing(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    for argv in (
        ["train", "--data-root", str(data_root), "--output-dir", str(out), "--set", "warmup=10"],
        ["train", "--data-root", str(data_root), "--output-dir", str(out), "--batch-size", "0"],
        ["train", "--data-root", str(data_root), "--output-dir", str(out), "--lr", "-1"],
        ["train", "--data-root", str(tmp_path / "missing"), "--output-dir", str(out)],
        ["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--data-root", str(data_root)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()


def test_cli_print_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--preset", "debug", "--lr", "3e-4", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "lr: 0.0003" in text and "model: tiny" in text


def test_eval_config(data_root: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model"
    ckpt.mkdir()
    c = load_eval_config(overrides={"checkpoint": str(ckpt), "data_root": str(data_root), "dataset": "refcoco"})
    assert isinstance(c, EvalConfig) and c.split == "val" and c.resolved_split_by == "unc"
    with pytest.raises(LAVTUserError, match="max_batch = 0"):
        load_eval_config(overrides={"checkpoint": str(ckpt), "data_root": str(data_root), "max_batch": 0})
    with pytest.raises(LAVTUserError, match="presets apply to training"):
        load_eval_config(overrides={"preset": "paper"})
