"""The catalogue of bad inputs, part 4: configurations and flags of `lavt train`, and its
safe loading (`--resume`, `--init-from`, `--pretrained-backbone`, `--text-encoder`).

Same promise as test_bad_inputs.py: exit code 2, one `error:` line with the row's key phrase,
no traceback, nothing written (no run folder), no input changed; `load_train_config` raises
`LAVTUserError` with the same phrase where the mistake is in the configuration itself.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import BertConfig

from helpers import (
    TINY_MODEL,
    TINY_TEXT,
    make_synth,
    make_tiny_text_encoder,
    marker_payloads,
    one_error_line,
    snapshot,
    tiny_train_config,
)
from lavt.checkpoint_format import FORMAT, VERSION
from lavt.cli import main
from lavt.engine.config import load_train_config
from lavt.errors import LAVTUserError
from lavt.models import LAVT, build_config
from onnx_helpers import tiny_export


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_config")
    data, text = make_synth(root / "data", num_images=12), make_tiny_text_encoder(root / "text")
    config = tiny_train_config(data, text, root / "unused").to_dict()
    config.pop("output_dir")
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    wide = LAVT(build_config("tiny", **{**TINY_MODEL, "embed_dim": 16, "text_dim": 16, "text_encoder": dict(TINY_TEXT)}))
    torch.save({"format": FORMAT, "version": VERSION, "model": wide.state_dict()}, root / "wide_checkpoint.pt")
    backbone = {k[len("backbone."):]: v for k, v in wide.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, root / "swin_wide.pth")
    torch.save({"model": wide.state_dict()}, root / "lavt_not_swin.pth")
    return {"root": root, "data": data, "text": text, "config": root / "train.yaml"}


def write(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def old_run(d: Path) -> Path:
    """A run folder with what an earlier `lavt train` left there."""
    run = d / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    (run / "config.yaml").write_text("epochs: 1\n")
    return run


@dataclass
class Case:
    """`args(d, env)` makes any input in the case folder `d` and returns the arguments added to
    `lavt train --config TINY.yaml --output-dir d/run`. `api`: the same mistake through
    `load_train_config` (overrides as `key=value` strings), when it is the configuration's."""

    name: str
    phrase: str
    args: Callable[[Path, dict], list[str]]
    api: list[str] | None = None


CASES = [
    Case("unknown key (--set)", r"unknown key 'lrr' in options; did you mean 'lr'\?", lambda d, e: ["--set", "lrr=1e-4"], ["lrr=1e-4"]),
    Case("unknown key in the config file", r"unknown key 'epoch' in .*bad\.yaml; did you mean 'epochs'\?",
         lambda d, e: ["--config", str(write(d, "bad.yaml", "epoch: 3\n"))]),
    Case("unknown model_overrides key", r"unknown key 'windw_size'; did you mean 'window_size'\?",
         lambda d, e: ["--set", "model_overrides.windw_size=4"]),
    Case("wrong type (--set)", r"epochs in options must be an integer, got 'many'", lambda d, e: ["--set", "epochs=many"], ["epochs=many"]),
    Case("wrong type in the config file", r"lr in .*bad\.yaml must be a number, got 'fast'",
         lambda d, e: ["--config", str(write(d, "bad.yaml", "lr: fast\n"))]),
    Case("wrong type in model_overrides", r"window_size must be an integer, got 'wide' \(str\)",
         lambda d, e: ["--set", "model_overrides.window_size=wide"]),
    Case("a value that is not one of the choices", r"loss in options must be one of 'ce', 'dice', 'ce\+dice', got 'focal'",
         lambda d, e: ["--loss", "focal"], ["loss=focal"]),
    Case("zero epochs", r"epochs = 0 is impossible: it must be a positive number", lambda d, e: ["--epochs", "0"], ["epochs=0"]),
    Case("zero batch size", r"batch_size = 0 is impossible: it must be a positive number", lambda d, e: ["--batch-size", "0"],
         ["batch_size=0"]),
    Case("negative learning rate", r"lr = -0\.001 is impossible: it must not be negative", lambda d, e: ["--lr=-1e-3"], ["lr=-1e-3"]),
    Case("negative image size", r"image_size = -32 is impossible", lambda d, e: ["--image-size=-32"], ["image_size=-32"]),
    Case("total batch not divisible by the micro-batch", r"micro_batch_size = 4 is impossible: it must divide batch_size 6",
         lambda d, e: ["--batch-size", "6", "--micro-batch-size", "4"], ["batch_size=6", "micro_batch_size=4"]),
    Case("batch larger than the training split", r"the training split has \d+ objects, fewer than batch_size 512",
         lambda d, e: ["--batch-size", "512"]),
    Case("unknown preset", r"unknown preset 'fast'; choose one of \['debug', 'paper'", lambda d, e: ["--preset", "fast"]),
    Case("unknown device", r"device = 'gpu' is impossible: it must be auto, cpu, cuda or cuda:N", lambda d, e: ["--device", "gpu"],
         ["device=gpu"]),
    Case("fp16 on a CPU", r"precision = 'fp16' is impossible: it needs a CUDA device",
         lambda d, e: ["--device", "cpu", "--precision", "fp16"], ["device=cpu", "precision=fp16"]),
    Case("config file: missing", r"config file .*absent\.yaml does not exist", lambda d, e: ["--config", str(d / "absent.yaml")]),
    Case("config file: not YAML", r"config file .*bad\.yaml is not valid YAML",
         lambda d, e: ["--config", str(write(d, "bad.yaml", "epochs: [1, 2\nlr: {\n"))]),
    Case("config file: not a mapping", r"config file .*bad\.yaml must hold a mapping of keys to values, not list",
         lambda d, e: ["--config", str(write(d, "bad.yaml", "- epochs\n- 3\n"))]),
    Case("--data-root missing", r"data root .*nowhere does not exist", lambda d, e: ["--data-root", str(d / "nowhere")]),
    Case("--init-from missing", r"init_from .*absent does not exist; give an existing path",
         lambda d, e: ["--init-from", str(d / "absent")]),
    Case("--init-from an exported (ONNX) folder", r"--init-from .* is an exported \(ONNX\) folder: its graphs are for inference, "
         r"they hold no trainable weights; give the model folder it was exported from",
         lambda d, e: ["--init-from", str(tiny_export(e["root"]))]),
    Case("--output-dir is a file", r"output_dir .*taken is a file, not a folder; choose another path",
         lambda d, e: ["--output-dir", str(write(d, "taken", "x"))]),
    Case("--output-dir cannot be created (a file is in the way)", r"output_dir .*taken/run cannot be created: .*taken is a file",
         lambda d, e: ["--output-dir", str(write(d, "taken", "x") / "run")]),
    Case("a run folder in use, without --resume", r"output_dir .*run already holds a run \(checkpoint\.pt, config\.yaml\); "
         r"pass --resume auto to continue it, or choose a new --output-dir \(nothing was overwritten\)",
         lambda d, e: ["--output-dir", str(old_run(d))]),
    Case("--resume missing", r"resume checkpoint .*absent\.pt does not exist; give a checkpoint\.pt, its run folder, or 'auto'",
         lambda d, e: ["--resume", str(d / "absent.pt")]),
    Case("--resume a checkpoint of another architecture", r"wide_checkpoint\.pt does not fit the model: .*misshaped",
         lambda d, e: ["--resume", str(e["root"] / "wide_checkpoint.pt")]),
    Case("--resume a file that is not a training checkpoint", r"lavt_not_swin\.pth is not a lavt training checkpoint",
         lambda d, e: ["--resume", str(e["root"] / "lavt_not_swin.pth")]),
    Case("--pretrained-backbone: a Swin of the wrong size", r"Swin weights do not fit the backbone \(wrong preset\?\)",
         lambda d, e: ["--pretrained-backbone", str(e["root"] / "swin_wide.pth")]),
    Case("--pretrained-backbone: not a Swin checkpoint", r"lavt_not_swin\.pth is not a Swin checkpoint \(no 'layers\.\*' weights\)",
         lambda d, e: ["--pretrained-backbone", str(e["root"] / "lavt_not_swin.pth")]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused(case: Case, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = case.args(tmp_path, env)
    argv = ["train", "--config", str(env["config"]), "--output-dir", str(tmp_path / "run"), *args]
    before = snapshot(tmp_path, env["root"])
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, case.phrase)
    assert snapshot(tmp_path, env["root"]) == before
    if case.api is not None:
        with pytest.raises(LAVTUserError, match=case.phrase):
            load_train_config(env["config"], case.api, check_paths=False)


# ---------------------------------------------------------------------- safe loading
ASKS = r"it asks to import (posix\.system|io\.open), which could run code, so it was refused and nothing in it ran"


def evil(path: Path, runner: Any) -> Path:
    torch.save({"format": FORMAT, "version": VERSION, "model": {"x": runner}}, path)
    return path


def evil_text_encoder(d: Path, runner: Any) -> Path:
    BertConfig(**TINY_TEXT).save_pretrained(d / "bert")
    evil(d / "bert" / "pytorch_model.bin", runner)
    return d / "bert"


SAFE_LOADING: list[tuple[str, str, Callable[[Path, Any], list[str]]]] = [
    ("--resume", r"evil\.pt could not be read as a training checkpoint .*: " + ASKS,
     lambda d, r: ["--resume", str(evil(d / "evil.pt", r))]),
    ("--resume auto (the run's own checkpoint.pt)", r"checkpoint\.pt could not be read as a training checkpoint .*: " + ASKS,
     lambda d, r: ["--resume", "auto", "--output-dir", str(evil((d / "run").mkdir() or d / "run" / "checkpoint.pt", r).parent)]),
    ("--init-from", r"evil\.pth could not be read as a PyTorch checkpoint with weights_only=True: " + ASKS,
     lambda d, r: ["--init-from", str(evil(d / "evil.pth", r))]),
    ("--pretrained-backbone", r"evil\.pth could not be read as a PyTorch checkpoint with weights_only=True: " + ASKS,
     lambda d, r: ["--pretrained-backbone", str(evil(d / "evil.pth", r))]),
    ("--text-encoder", r"could not load a BERT text encoder from .*bert: " + ASKS,
     lambda d, r: ["--text-encoder", str(evil_text_encoder(d, r))]),
]


@pytest.mark.parametrize("payload", ["os.system", "builtins.open"])
@pytest.mark.parametrize("entry", SAFE_LOADING, ids=[e[0] for e in SAFE_LOADING])
def test_malicious_pickle_is_refused_before_it_runs(entry: tuple, payload: str, env: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    name, phrase, args = entry
    marker = tmp_path / "payload_ran"
    argv = ["train", "--config", str(env["config"]), "--output-dir", str(tmp_path / "run"),
            *args(tmp_path, marker_payloads(marker)[payload])]
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, phrase)
    assert not marker.exists()
    assert not (tmp_path / "run").exists() or sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]
