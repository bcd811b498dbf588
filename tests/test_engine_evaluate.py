"""`lavt evaluate`: every expression, both protocols in the JSON, per-expression lines that
add up to the reported numbers, overlays; and `load_model` for every kind of saved model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, TINY_TEXT, make_synth
from lavt.cli import main
from lavt.engine.evaluate import score_image_group
from lavt.errors import LAVTUserError
from lavt.loading import load_model
from lavt.metrics import ReferringMetrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
    from lavt.models import LAVT, build_config

    base = tmp_path_factory.mktemp("evaluate")
    data = make_synth(base / "data")
    torch.manual_seed(0)
    model = LAVT(build_config("tiny", **{**TINY_MODEL, "text_dim": 16, "text_encoder": dict(TINY_TEXT), "image_size": 32}))
    model.save_pretrained(base / "model", tokenizer=ExpressionTokenizer.from_pretrained(default_text_encoder_dir()))
    return {"data": data, "model": base / "model", "base": base}


def test_evaluate_writes_both_protocols(setup: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from lavt.data import ReferImageGroups
    from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir

    out = setup["base"] / "out"
    argv = ["evaluate", "--checkpoint", str(setup["model"]), "--data-root", str(setup["data"]), "--dataset", "synthref",
            "--split", "val", "--json", str(out / "val.json"), "--per-expression", str(out / "val.jsonl"),
            "--overlays", str(out / "worst"), "--num-worst", "3", "--device", "cpu", "--workers", "0", "--no-progress",
            "--max-batch", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "official 32x32" in printed and "original resolution" in printed

    report = json.loads((out / "val.json").read_text())
    assert report["checkpoint"] == str(setup["model"]) and report["checkpoint_kind"] == "folder"
    assert (report["dataset"], report["split_by"], report["split"], report["image_size"]) == ("synthref", "unc", "val", 32)
    assert set(report["protocols"]) == set(report["metrics"]) == {"official", "original"}
    ds = ReferImageGroups(
        setup["data"], "synthref", "unc", "val", tokenizer=ExpressionTokenizer.from_pretrained(default_text_encoder_dir()), image_size=32
    )
    assert report["counts"]["expressions"] == ds.num_expressions > 0
    assert report["counts"]["images"] == ds.num_images and report["counts"]["refs"] == ds.num_refs

    lines = [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    assert len(lines) == ds.num_expressions
    for proto in ("official", "original"):
        m = ReferringMetrics()
        for r in lines:
            m.add(r[proto]["I"], r[proto]["U"])
        for k, v in m.compute().items():
            assert report["metrics"][proto][k] == pytest.approx(v, abs=1e-9), (proto, k)
    assert len(list((out / "worst").glob("*.png"))) == 3


def test_protocols_differ_only_by_resolution(setup: dict[str, Path]) -> None:
    """A model whose 32x32 output is exactly the resized ground truth scores 100 under the
    official protocol; at the original resolution the same logits, upsampled, score less."""
    from lavt.data import ReferImageGroups
    from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir

    ds = ReferImageGroups(
        setup["data"], "synthref", "unc", "val", tokenizer=ExpressionTokenizer.from_pretrained(default_text_encoder_dir()), image_size=32
    )
    group = ds[0]

    class Oracle(torch.nn.Module):
        def segment_expressions(self, image, input_ids, attention_mask):  # noqa: ANN001, D102
            rows = [int((group["input_ids"] == input_ids[i]).all(1).nonzero()[0]) for i in range(len(input_ids))]
            fg = group["masks"][rows].float()
            return torch.stack([1 - fg, fg], 1) * 10

    square, original, preds = score_image_group(Oracle(), group, torch.device("cpu"), max_batch=2)
    assert len(square) == len(original) == len(preds) == len(group["sent_ids"])
    assert all(i == u for i, u in square if u)
    m = ReferringMetrics()
    for i, u in original:
        m.add(i, u)
    assert 40 < m.compute()["mIoU"] < 100
    assert preds[0].shape == tuple(group["orig_masks"][0].shape)


def test_load_model_dispatch(setup: dict[str, Path], tmp_path: Path, golden_dir: Path) -> None:
    loaded = load_model(setup["model"] / "model.safetensors")
    assert loaded.kind == "folder" and loaded.tokenizer is not None and not loaded.model.training

    case = torch.load(golden_dir / "lavt_one_tiny.pt", weights_only=True)
    official = tmp_path / "official.pth"
    # As train.py writes it: the PWAM heads (--mha) are only known from the saved args.
    mha = "-".join(str(h) for h in case["config"]["num_heads_fusion"])
    torch.save({"model": case["state_dict"], "epoch": 39, "args": argparse.Namespace(mha=mha, model="lavt_one")}, official)
    loaded = load_model(official)
    assert loaded.kind == "official" and loaded.tokenizer is None and loaded.info["epoch"] == 39
    with torch.no_grad():
        logits = loaded.model(case["image"], case["input_ids"], case["attention_mask"])
    torch.testing.assert_close(logits, case["logits"], rtol=0, atol=5e-5)

    with pytest.raises(LAVTUserError, match="holds no model"):
        load_model(tmp_path)
    with pytest.raises(LAVTUserError, match="does not exist"):
        load_model(tmp_path / "missing.pth")


def test_one_table_layout_for_evaluate_and_demo() -> None:
    from lavt.engine.report import format_table, metrics_table

    keys = ("oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9")
    m = dict(zip(keys, (86.456, 86.81, 93.87, 91.92, 91.64, 89.144, 69.64)))
    e = dict(zip(keys, (10.54, 12.27, 5.85, 5.01, 4.18, 2.51, 0.0)))
    # the layout `lavt demo` has always printed
    assert metrics_table([("with expression", m), ("empty expression", e)]).splitlines() == [
        "                    oIoU    mIoU   P@0.5   P@0.6   P@0.7   P@0.8   P@0.9",
        "with expression    86.46   86.81   93.87   91.92   91.64   89.14   69.64",
        "empty expression   10.54   12.27    5.85    5.01    4.18    2.51    0.00",
    ]
    report = {"dataset": "refcoco", "split_by": "unc", "split": "val", "image_size": 480, "checkpoint": "m",
              "counts": {"expressions": 3, "refs": 2, "images": 1}, "metrics": {"official": m, "original": e}}
    assert format_table(report).splitlines() == [
        "refcoco (unc) val: 3 expressions, 2 objects, 1 images; checkpoint m",
        "protocol               oIoU    mIoU   P@0.5   P@0.6   P@0.7   P@0.8   P@0.9",
        "official 480x480      86.46   86.81   93.87   91.92   91.64   89.14   69.64",
        "original resolution   10.54   12.27    5.85    5.01    4.18    2.51    0.00",
    ]
