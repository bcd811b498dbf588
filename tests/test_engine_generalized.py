"""Training and evaluation on a generated generalised set (synthgref) with a tiny LAVT: a classic model
learns the no-target head from `init_from`, `lavt evaluate` reports the generalised metrics and the
classic ones over the targeted expressions, and the area threshold is picked on the split."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import TINY_MODEL, make_tiny_text_encoder, run_torchrun, tiny_train_config
from lavt.cli import main
from lavt.data.synthref import generate
from lavt.data.synthref.language_generalized import generate_generalized
from lavt.engine.config import EvalConfig
from lavt.engine.evaluate import evaluate
from lavt.engine.generalized import NoTargetTerm, pick_area_threshold
from lavt.engine.loop import TrainStep
from lavt.engine.losses import SegmentationLoss
from lavt.engine.optim import PolyWarmup, PolyWarmupLR, adamw
from lavt.engine.train import train
from lavt.errors import LAVTUserError
from lavt.metrics import GeneralizedReferringMetrics
from lavt.models import LAVT

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gengine")
    data = base / "data"
    generate(data, seed=0, num_images=24, image_size=(40, 56))
    generate_generalized(data, seed=0)
    text = make_tiny_text_encoder(base / "tinybert")
    common = dict(dataset="synthgref", epochs=1, steps_per_epoch=2, val_max_images=2, max_images=12)
    classic = train(tiny_train_config(data, text, base / "classic", **common))
    head = train(tiny_train_config(
        data, text, base / "head", init_from=str(classic.last_model),
        model_overrides={**TINY_MODEL, "no_target": "head"}, no_target_loss_weight=1.0, **common,
    ))
    return {"data": data, "classic": classic.last_model, "head": head.last_model, "base": base}


def test_a_classic_model_learns_the_head(runs: dict[str, Path]) -> None:
    classic, head = LAVT.from_pretrained(runs["classic"]), LAVT.from_pretrained(runs["head"])
    assert classic.no_target_head is None and head.config.no_target == "head"
    assert json.loads((runs["head"] / "config.json").read_text())["no_target"] == "head"
    assert "no_target" not in json.loads((runs["classic"] / "config.json").read_text())
    log = [json.loads(line) for line in (runs["base"] / "head" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("train") == 2 and log[0]["init_from"] == str(runs["classic"])
    shared = [k for k in classic.state_dict() if not k.startswith("text_encoder.")]
    assert any(not torch.equal(classic.state_dict()[k], head.state_dict()[k]) for k in shared)


def _epochs(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["event"] == "epoch"]


def test_validation_scores_the_decisions_and_model_best_follows_giou(runs: dict[str, Path]) -> None:
    """With a no-target head, validation on the generalised split adds ReLA's gIoU, cIoU, N-acc
    and T-acc, and model_best is chosen by gIoU; a classic model there is chosen by oIoU."""
    head = _epochs(runs["base"] / "head")[-1]
    assert {"gIoU", "cIoU", "N-acc", "T-acc", "no_target", "oIoU"} <= head["val"].keys()
    assert 0 < head["val"]["no_target"] < head["val"]["expressions"]
    assert 0.0 <= head["val"]["gIoU"] <= 100.0
    assert head["best"] == {"metric": "gIoU", "score": head["val"]["gIoU"], "epoch": 1}
    classic = _epochs(runs["base"] / "classic")[-1]
    assert "gIoU" not in classic["val"] and classic["best"]["metric"] == "oIoU"
    assert classic["best"]["score"] == classic["val"]["oIoU"]


def test_evaluate_reports_generalised_and_classic_metrics(runs: dict[str, Path], capsys) -> None:
    out = runs["base"] / "eval.json"
    code = main(["evaluate", "-c", str(runs["head"]), "--data-root", str(runs["data"]), "--dataset", "synthgref",
                 "--split", "val", "--json", str(out), "--per-expression", str(runs["base"] / "per.jsonl"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    g = report["generalized"]
    assert g["no_target"] == "head"
    m = g["metrics"]["original"]
    assert set(m) >= {"gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9", "TP", "TN", "FP", "FN"}
    counts = report["counts"]
    assert counts["expressions"] == m["expressions"] == m["targeted"] + m["no_target"] and m["no_target"] > 0
    assert counts["targeted"] == m["targeted"]
    records = [json.loads(line) for line in (runs["base"] / "per.jsonl").read_text().splitlines()]
    assert len(records) == m["expressions"] and all(0.0 <= r["no_target_probability"] <= 1.0 for r in records)
    assert sum(r["pred_no_target"] and r["gt_no_target"] for r in records) == m["TP"]
    # the classic table covers the targeted expressions only: recompute its oIoU from the records
    targeted = [r for r in records if not r["gt_no_target"]]
    oiou = 100 * sum(r["original"]["I"] for r in targeted) / sum(r["original"]["U"] for r in targeted)
    assert report["metrics"]["original"]["oIoU"] == pytest.approx(oiou)
    assert "generalised:" in printed and f"classic metrics over the {m['targeted']} targeted expressions" in printed
    assert "gIoU    cIoU   N-acc   T-acc  Pr@0.7" in printed


def test_area_threshold_is_picked_on_the_split(runs: dict[str, Path]) -> None:
    cfg = dict(checkpoint=str(runs["classic"]), data_root=str(runs["data"]), dataset="synthgref", split="val", progress=False)
    zero = evaluate(EvalConfig(**cfg, no_target="area", no_target_threshold=0.0))
    picked = evaluate(EvalConfig(**cfg, no_target="area", pick_no_target_threshold=True))
    g0, gp = zero.report["generalized"], picked.report["generalized"]
    assert gp["picked"] and 0.0 <= gp["no_target_threshold"] < 1.0
    assert gp["metrics"]["original"]["gIoU"] >= g0["metrics"]["original"]["gIoU"]
    again = evaluate(EvalConfig(**cfg, no_target="area", no_target_threshold=gp["no_target_threshold"]))
    for protocol in ("official", "original"):
        assert again.report["generalized"]["metrics"][protocol] == pytest.approx(gp["metrics"][protocol])
    assert evaluate(EvalConfig(**cfg)).report["generalized"]["no_target"] == "none"  # the model's rule
    with pytest.raises(LAVTUserError, match="no_target=head needs a model with a no-target head"):
        evaluate(EvalConfig(**cfg, no_target="head"))


def test_two_processes_train_and_score_as_one(runs: dict[str, Path]) -> None:
    """torchrun with 2 gloo processes: the head run takes the same steps as in one process (same
    losses, same head), and the sharded evaluation and threshold picking give the same numbers."""
    base = runs["base"]
    args = base / "ddp_args.json"
    args.write_text(json.dumps({
        "data_root": str(runs["data"]), "text_dir": str(base / "tinybert"), "init_from": str(runs["classic"]),
        "out": str(base / "ddp"), "eval_json": str(base / "ddp_eval.json"), "pick_json": str(base / "ddp_pick.json"),
    }))
    worker = Path(__file__).resolve().parent / "engine_generalized_ddp_worker.py"
    run_torchrun(worker, args)

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["event"] == "train"]

    assert losses(base / "ddp") == pytest.approx(losses(base / "head"), rel=1e-5)
    # the validation's generalised sums are all-reduced: two shards score as one process
    ddp_val, one_val = _epochs(base / "ddp")[-1]["val"], _epochs(base / "head")[-1]["val"]
    assert ddp_val.keys() == one_val.keys() and ddp_val == pytest.approx(one_val, abs=1e-3)
    one, two = LAVT.from_pretrained(runs["head"]).state_dict(), LAVT.from_pretrained(base / "ddp" / "model_last").state_dict()
    for key in [k for k in one if k.startswith("no_target_head.")]:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    cfg = dict(data_root=str(runs["data"]), dataset="synthgref", split="val", progress=False)
    single = evaluate(EvalConfig(checkpoint=str(base / "ddp" / "model_last"), **cfg)).report
    sharded = json.loads((base / "ddp_eval.json").read_text())
    assert sharded["world_size"] == 2
    for protocol in ("official", "original"):
        assert sharded["generalized"]["metrics"][protocol] == pytest.approx(single["generalized"]["metrics"][protocol])
        assert sharded["metrics"][protocol] == pytest.approx(single["metrics"][protocol])
    picked = evaluate(EvalConfig(checkpoint=str(runs["classic"]), no_target="area", pick_no_target_threshold=True, **cfg)).report
    sharded_pick = json.loads((base / "ddp_pick.json").read_text())["generalized"]
    assert sharded_pick["no_target_threshold"] == picked["generalized"]["no_target_threshold"]
    assert sharded_pick["metrics"]["original"] == pytest.approx(picked["generalized"]["metrics"]["original"])


def test_pick_area_threshold_by_hand() -> None:
    # rows: (I, U) square, (I, U) original, covered share, true no-target
    rows = [(0, 2, 0, 2, 0.02, True), (3, 4, 3, 4, 0.05, False), (0, 5, 0, 5, 0.10, True), (8, 10, 8, 10, 0.30, False)]
    t, metrics = pick_area_threshold(rows)
    # t=0: gIoU (0.75 + 0.8) / 4; t=0.02: (1 + 0.75 + 0.8) / 4; t=0.05: (1 + 0.8) / 4; t=0.1: (2 + 0.8) / 4 -> 0.1
    assert t == pytest.approx(0.10) and metrics["original"]["gIoU"] == pytest.approx(70.0)
    check = GeneralizedReferringMetrics()
    for row in rows:
        check.add(row[2], row[3], pred_no_target=row[4] <= 0.10, gt_no_target=row[5])
    assert check.compute() == metrics["original"]


class Toy(nn.Module):
    """LAVT's call signature: a 1x1 convolution for the mask and a linear no-target logit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.nt = nn.Linear(3, 1)

    def forward(self, image, input_ids=None, attention_mask=None, *, return_no_target=False):  # noqa: ANN001, ANN201
        logits = self.conv(image)
        return (logits, self.nt(image.mean((2, 3))).squeeze(1)) if return_no_target else logits


def _toy_step(seed: int = 0) -> TrainStep:
    torch.manual_seed(seed)
    model = Toy()
    opt = adamw([{"params": list(model.parameters()), "lr": 0.05}], lr=0.05, weight_decay=0.0)
    return TrainStep(model, SegmentationLoss("ce"), opt, PolyWarmupLR(opt, PolyWarmup.ramp(1, 200)), no_target=NoTargetTerm(1.0))


def _toy_batch(seed: int, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, 6, 6, generator=g) + torch.randn(n, 3, 1, 1, generator=g)
    no_target = image[:, 1].mean((1, 2)) > 0  # learnable from the second channel's mean
    mask = (image[:, 0] > 0.3).long() * (~no_target).long()[:, None, None]  # all background when no target
    return {"image": image, "mask": mask, "input_ids": torch.zeros(n, 2, dtype=torch.long),
            "attention_mask": torch.ones(n, 2, dtype=torch.long), "no_target": no_target}


def test_train_step_learns_the_no_target_logit_and_splits_exactly() -> None:
    step = _toy_step()
    batches = [_toy_batch(i) for i in range(60)]
    for batch in batches:
        step([batch])
    test = _toy_batch(1000, 64)
    with torch.no_grad():
        _, logit = step.model(test["image"], return_no_target=True)
    assert ((logit > 0) == test["no_target"]).float().mean() > 0.9
    whole, halves = _toy_step(), _toy_step()
    batch = _toy_batch(7)
    whole([batch])
    halves([{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}])
    for a, b in zip(whole.model.parameters(), halves.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_no_target_term_is_normalised_over_the_step() -> None:
    term = NoTargetTerm(0.5)
    logits = torch.tensor([0.3, -1.0, 2.0, 0.1])
    labels = torch.tensor([True, False, False, True])
    whole = term(logits, {"no_target": labels, "image": torch.zeros(4)}, None)
    parts = [{"no_target": labels[:1], "image": torch.zeros(1)}, {"no_target": labels[1:], "image": torch.zeros(3)}]
    norm = term.normalizer(parts, torch.device("cpu"))[0]
    assert norm.item() == pytest.approx(1.1 + 0.9 + 0.9 + 1.1)
    split = term(logits[:1], parts[0], norm) + term(logits[1:], parts[1], norm)
    torch.testing.assert_close(split, whole)
    unlabelled = term(logits, {"image": torch.zeros(4)}, None)  # a classic batch: every sample has a target
    torch.testing.assert_close(unlabelled, term(logits, {"no_target": torch.zeros(4, dtype=torch.bool), "image": torch.zeros(4)}, None))
