"""The catalogue of bad inputs, part 2: checkpoints and model folders, and safe loading.

Same promise as test_bad_inputs.py: exit code 2, one `error:` line with the row's key phrase,
no traceback, nothing written, no input changed; the Python API raises `LAVTUserError`. The
safe-loading table feeds every model-loading entry point a pickle whose payload would create
a marker file (through `os.system` or `builtins.open`) and proves that the file is refused and
the marker never appears. The entry points of training and `lavt data info` are in
test_bad_inputs_data.py.
"""
from __future__ import annotations

import errno
import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig

from helpers import TINY_BERT, marker_payloads, one_error_line, snapshot, tiny_config, tiny_model_folder
from lavt import load_official
from lavt.cli import main
from lavt.errors import LAVTUserError
from lavt.loading import load_model
from lavt.models import LAVT


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_models")
    torch.manual_seed(0)
    no_text = LAVT(tiny_config(text_encoder=None))
    torch.save(no_text.state_dict(), root / "official_lavt.pth")  # an official `lavt` file: no BERT
    torch.save({"model": LAVT(tiny_config()).state_dict()}, root / "official_one.pth")
    (root / "data" / "refcoco").mkdir(parents=True)
    return {
        "root": root,
        "model": tiny_model_folder(root / "model"),
        "no_text": no_text.save_pretrained(root / "no_text"),
        "wide": tiny_model_folder(root / "wide", embed_dim=16),
        "window12": tiny_model_folder(root / "window12", window_size=12),
        "image": _photo(root),
        "data": root / "data",
    }


def _photo(root: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (32, 24), (200, 30, 30)).save(root / "photo.png")
    return root / "photo.png"


# ---------------------------------------------------------------------- model folders to break
def copy_model(d: Path, e: dict, edit: Callable[[dict], Any] | None = None, weights_from: str | None = None,
               base: str = "model") -> Path:
    """A copy of a model folder of the fixture with its config.json edited and/or another one's weights."""
    folder = shutil.copytree(e[base], d / "m")
    if edit is not None:
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    if weights_from is not None:
        shutil.copy(e[weights_from] / "model.safetensors", folder / "model.safetensors")
    return folder


def folder(d: Path, name: str) -> Path:
    (d / name).mkdir()
    return d / name


def write(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def cut(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def remove(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    return folder


def replace_text(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder


@dataclass
class Case:
    """`model(d, env)` makes the checkpoint or folder in the case folder `d`; it is given to
    `lavt predict -c` and to `load_model`. `api_phrase`: where the API's message differs."""

    name: str
    phrase: str
    model: Callable[[Path, dict], Path]
    api_phrase: str | None = None


def torch_file(d: Path, name: str, obj: Any) -> Path:
    torch.save(obj, d / name)
    return d / name


CASES = [
    Case("checkpoint: missing", r"checkpoint .*absent\.pth does not exist", lambda d, e: d / "absent.pth"),
    Case("model folder: empty", r"empty holds no model: expected config\.json \+ model\.safetensors", lambda d, e: folder(d, "empty")),
    Case("model folder: config.json missing", r"m holds no model: expected config\.json",
         lambda d, e: remove(copy_model(d, e), "config.json")),
    Case("config.json: not JSON", r"config\.json is not valid JSON \(.*\); repair it or save the model again",
         lambda d, e: replace_text(copy_model(d, e), "config.json", '{"model_type": "lavt", embed_dim: 8')),
    Case("config.json: not a LAVT model", r"config\.json does not describe a LAVT model .*written by save_pretrained",
         lambda d, e: copy_model(d, e, lambda c: c.pop("model_type"))),
    Case("config.json: unknown key", r"config\.json: unknown key 'windw_size'; did you mean 'window_size'\?",
         lambda d, e: copy_model(d, e, lambda c: c.update(windw_size=c.pop("window_size")))),
    Case("config.json: wrong type", r"config\.json: embed_dim must be an integer, got '8' \(str\); fix the value",
         lambda d, e: copy_model(d, e, lambda c: c.update(embed_dim="8"))),
    Case("config.json: wrong type in a list", r"config\.json: depths must be a list \(an integer each\), got \[1, 2, 'x', 2\]",
         lambda d, e: copy_model(d, e, lambda c: c.update(depths=[1, 2, "x", 2]))),
    Case("config.json: impossible value", r"config\.json: invalid model configuration: depths must list 4 stages",
         lambda d, e: copy_model(d, e, lambda c: c.update(depths=[1, 2, 1]))),
    Case("model.safetensors: truncated", r"model\.safetensors could not be read as safetensors .*damaged or incomplete",
         lambda d, e: cut(copy_model(d, e) / "model.safetensors").parent),
    Case("model.safetensors: wrong shapes", r"model\.safetensors does not fit the model: misshaped \(\d+\): backbone\.patch_embed",
         lambda d, e: copy_model(d, e, weights_from="wide")),
    Case("window-7 model given window-12 weights", r"another window size than this model's 7",
         lambda d, e: copy_model(d, e, lambda c: c.update(window_size=7), weights_from="window12")),
    Case("lavt_one weights in a lavt folder", r"does not fit the model: unexpected \(\d+\): text_encoder\.",
         lambda d, e: copy_model(d, e, weights_from="model", base="no_text")),
    Case("lavt weights in a lavt_one folder", r"the weights hold no text encoder",
         lambda d, e: copy_model(d, e, weights_from="no_text")),
    Case("an official lavt checkpoint (no BERT) for prediction", r"this model has no text encoder, so it cannot read expressions",
         lambda d, e: e["root"] / "official_lavt.pth", api_phrase="NOT AN ERROR"),
    Case(".pth of random bytes", r"random\.pth could not be read as a PyTorch checkpoint with weights_only=True: not a valid weights "
         r"file \(Unsupported operand \d+\); use a checkpoint that holds only weights \(download or save it again",
         lambda d, e: write(d, "random.pth", bytes(range(256)) * 8)),
    Case(".pth truncated", r"cut\.pth could not be read as a PyTorch checkpoint",
         lambda d, e: cut(write(d, "cut.pth", (e["root"] / "official_one.pth").read_bytes()))),
    Case(".pth that is a dict of something else", r"not an official LAVT checkpoint: expected a dict with 'model'",
         lambda d, e: torch_file(d, "other.pth", {"weights": torch.zeros(3)})),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused(case: Case, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = case.model(tmp_path, env)
    out = tmp_path / "out"
    before = snapshot(tmp_path, env["root"])
    assert main(["predict", "-c", str(model), str(env["image"]), "the dog", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, case.phrase)
    assert snapshot(tmp_path, env["root"]) == before
    if case.api_phrase != "NOT AN ERROR":  # an official `lavt` file loads; it only cannot read text
        with pytest.raises(LAVTUserError, match=case.api_phrase or case.phrase):
            load_model(model)


def test_config_json_of_earlier_versions_still_loads(env: dict, tmp_path: Path) -> None:
    """Keys written beside the model fields by earlier versions are ignored, not refused."""
    folder = copy_model(tmp_path, env, lambda c: c.update(lavt_version="0.1", extra={"note": "x"}))
    reference = LAVT.from_pretrained(env["model"]).state_dict()
    loaded = LAVT.from_pretrained(folder).state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_from_pretrained_names_the_file(env: dict, tmp_path: Path) -> None:
    folder = copy_model(tmp_path, env, lambda c: c.update(gate_activaton="tanh"))
    with pytest.raises(LAVTUserError, match=r"m/config\.json: unknown key 'gate_activaton'; did you mean 'gate_activation'"):
        LAVT.from_pretrained(folder)
    with pytest.raises(LAVTUserError, match=r"is not a LAVT model folder: it needs config\.json and model\.safetensors"):
        LAVT.from_pretrained(remove(folder, "config.json"))


def no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


CONVERT = [  # (name, phrase, out_dir(d) or (out_dir(d), something to patch))
    ("out_dir is a file", r"out_dir .*taken is a file, not a folder", lambda d: write(d, "taken", b"x")),
    ("out_dir under a file", r"out_dir .*taken/new cannot be created: .*taken is a file", lambda d: write(d, "taken", b"x") / "new"),
    ("out_dir not empty", r"used exists and is not empty; choose a new folder",
     lambda d: write(folder(d, "used"), "notes.txt", b"x").parent),
    ("--pwam-heads malformed", r"--pwam-heads must be four positive integers like 1-1-1-1, got '2-2'", lambda d: d / "new"),
    ("the disk fills up while writing", r"could not write .*new \(No space left on device\); nothing was kept", lambda d: d / "new"),
]


@pytest.mark.parametrize("case", CONVERT, ids=[c[0] for c in CONVERT])
def test_convert_refused(case: tuple, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    name, phrase, make_out = case
    out = make_out(tmp_path)
    extra = ["--pwam-heads", "2-2"] if "pwam" in name else []
    if "disk" in name:
        monkeypatch.setattr("lavt.models.lavt.save_file", no_space)
    before = snapshot(tmp_path, env["root"])
    assert main(["convert", str(env["root"] / "official_one.pth"), str(out), *extra]) == 2
    one_error_line(capsys.readouterr().err, phrase)
    assert snapshot(tmp_path, env["root"]) == before


# ---------------------------------------------------------------------- safe loading
ASKS = r"it asks to import (posix\.system|io\.open), which could run code, so it was refused and nothing in it ran"


def evil_file(path: Path, marker: Path, payload: str = "os.system", container: str = "zip") -> Path:
    """A checkpoint-shaped file whose unpickling would run `payload` (creating `marker`)."""
    obj = {"model": {"backbone.patch_embed.proj.weight": marker_payloads(marker)[payload]}}
    if container == "zip":
        torch.save(obj, path)
    elif container == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def evil_text_encoder_folder(d: Path, marker: Path) -> Path:
    """A model folder whose frozen text encoder is stored by reference, in a Hugging Face
    folder whose `pytorch_model.bin` would run code."""
    hf = d / "evil_bert"
    hf.mkdir()
    BertConfig(**TINY_BERT).save_pretrained(hf)
    evil_file(hf / "pytorch_model.bin", marker)
    return tiny_model_folder(d / "m", text_encoder_weights=str(hf))


@dataclass
class Entry:
    """One way a file reaches a loader: `call(d, marker, env)` writes the malicious input and
    loads it, through the CLI (returns the exit code) or the API (must raise LAVTUserError)."""

    name: str
    phrase: str
    call: Callable[[Path, Path, dict], Any]
    cli: bool = False


SAFE_LOADING = [
    *[Entry(f"lavt.load_official ({payload}, {container} file)", r"could not be read as a PyTorch checkpoint with weights_only=True: "
            + ASKS,
            lambda d, m, e, p=payload, c=container: load_official(evil_file(d / "evil.pth", m, p, c)))
      for payload in ("os.system", "builtins.open") for container in ("zip", "legacy", "pickle")],
    Entry("LAVT.from_pretrained (a pickle as model.safetensors)", r"could not be read as safetensors",
          lambda d, m, e: LAVT.from_pretrained(evil_file(copy_model(d, e) / "model.safetensors", m).parent)),
    Entry("LAVT.from_pretrained (text encoder by reference, pytorch_model.bin)",
          r"could not load a BERT text encoder from .*evil_bert: " + ASKS,
          lambda d, m, e: LAVT.from_pretrained(evil_text_encoder_folder(d, m))),
    Entry("lavt predict -c evil.pth", r"evil\.pth could not be read as a PyTorch checkpoint with weights_only=True: " + ASKS,
          lambda d, m, e: main(["predict", "-c", str(evil_file(d / "evil.pth", m)), str(e["image"]), "a", "-o", str(d / "o")]), True),
    Entry("lavt convert evil.pth", r"evil\.pth could not be read as a PyTorch checkpoint with weights_only=True: " + ASKS,
          lambda d, m, e: main(["convert", str(evil_file(d / "evil.pth", m, "builtins.open")), str(d / "converted")]), True),
    Entry("lavt evaluate -c evil.pth", r"evil\.pth could not be read as a PyTorch checkpoint with weights_only=True: " + ASKS,
          lambda d, m, e: main(["evaluate", "-c", str(evil_file(d / "evil.pth", m)), "--data-root", str(e["data"]),
                                "--device", "cpu", "--json", str(d / "r.json")]), True),
    Entry("lavt evaluate -c FOLDER (text encoder by reference)", r"could not load a BERT text encoder from .*evil_bert: " + ASKS,
          lambda d, m, e: main(["evaluate", "-c", str(evil_text_encoder_folder(d, m)), "--data-root", str(e["data"]),
                                "--device", "cpu"]), True),
]


@pytest.mark.parametrize("entry", SAFE_LOADING, ids=[e.name for e in SAFE_LOADING])
def test_malicious_pickle_is_refused_before_it_runs(entry: Entry, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "payload_ran"
    if entry.cli:
        assert entry.call(tmp_path, marker, env) == 2
        one_error_line(capsys.readouterr().err, entry.phrase)
        assert not (tmp_path / "o").exists() and not (tmp_path / "converted").exists() and not (tmp_path / "r.json").exists()
    else:
        with pytest.raises(LAVTUserError, match=entry.phrase):
            entry.call(tmp_path, marker, env)
    assert not marker.exists()


def test_the_payloads_do_run_under_plain_pickle(tmp_path: Path) -> None:
    """The files above are real attacks: full unpickling creates the marker (so its absence
    above means the loader refused, not that the payload was harmless)."""
    for payload in ("os.system", "builtins.open"):
        marker = tmp_path / f"ran_{payload}"
        torch.load(evil_file(tmp_path / f"{payload}.pth", marker, payload), weights_only=False)
        assert marker.exists()


def test_no_code_path_unpickles_with_full_pickle() -> None:
    """Every torch.load in src/lavt passes weights_only=True, nothing calls pickle.load(s), and
    the only Unpickler is refer.py's, which overrides find_class (plain data only)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "lavt"
    loads, unpicklers = [], []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(src)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                if (owner, node.func.attr) == ("torch", "load"):
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                    loads.append((where, safe))
                assert (owner, node.func.attr) not in {("pickle", "load"), ("pickle", "loads"), ("dill", "load")}, where
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                unpicklers.append((where, "find_class" in methods))
    assert len(loads) >= 2 and all(safe for _, safe in loads), loads
    assert [u[0].split(":")[0] for u in unpicklers] == ["data/refer.py"] and all(ok for _, ok in unpicklers), unpicklers
