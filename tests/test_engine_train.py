"""Training on the generated dataset with a tiny LAVT: the loss falls, two torchrun processes
take the same step as one, an interrupted and resumed run ends where an uninterrupted one
does, a non-finite loss stops with the step named, and evaluation reports both protocols."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import make_synth, make_tiny_text_encoder, poison_loss, run_torchrun, tiny_train_config
from lavt.engine import checkpoint as ckpt_io
from lavt.engine.train import TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("engine")
    return {"data": make_synth(base / "data"), "text": make_tiny_text_encoder(base / "tinybert"), "base": base}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load_checkpoint(run / ckpt_io.CHECKPOINT_NAME)["model"]


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_loss_falls_and_outputs_are_written(env: dict[str, Path]) -> None:
    out = env["base"] / "fall"
    events = []
    cfg = tiny_train_config(env["data"], env["text"], out, epochs=2, steps_per_epoch=6, lr=2e-3, plot=True)
    result = train(cfg, callback=events.append)
    losses = [r["loss"] for r in _records(out, "train")]
    assert len(losses) == 12 and result.global_step == 12 and result.epochs_completed == 2
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    for name in (
        "checkpoint.pt",
        "config.yaml",
        "curves.png",
        "log.jsonl",
        "model_best/config.json",
        "model_last/model.safetensors",
        "model_last/vocab.txt",
    ):
        assert (out / name).is_file(), name
    epochs = _records(out, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2] and set(epochs[0]["val"]) >= {"oIoU", "mIoU", "P@0.5", "P@0.9"}
    assert [e.kind for e in events].count("step") == 12 and events[-1].kind == "done"
    ckpt = ckpt_io.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["lr"] == 2e-3 and ckpt["lr_scheduler"]["last_epoch"] == 12

    from lavt.loading import load_model

    loaded = load_model(out)  # the run folder -> model_best/
    assert loaded.kind == "folder" and loaded.tokenizer is not None
    ids, mask = loaded.tokenizer(["the red circle"])
    logits = loaded.model(torch.zeros(1, 3, 32, 32), ids, mask)
    assert logits.shape == (1, 2, 32, 32)
    from_ckpt = load_model(out / "checkpoint.pt")
    assert from_ckpt.kind == "training" and from_ckpt.info["epoch"] == 1
    last = load_model(out / "model_last")
    for k, v in from_ckpt.model.state_dict().items():
        assert torch.equal(v, last.model.state_dict()[k]), k


def test_interrupt_and_resume_equals_uninterrupted(env: dict[str, Path]) -> None:
    # Drop path on: the resumed run must also restore the random streams.
    model = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4, "drop_path_rate": 0.2}
    # Gradient accumulation on: total batch 4 in two micro-batches of 2.
    common = dict(epochs=2, steps_per_epoch=3, model_overrides=model, val_max_images=1, micro_batch_size=2)
    full = env["base"] / "full"
    train(tiny_train_config(env["data"], env["text"], full, **common))

    cut = env["base"] / "cut"
    first = train(tiny_train_config(env["data"], env["text"], cut, **common), callback=lambda e: not (e.kind == "step" and e.step == 5))
    assert first.stopped and first.epochs_completed == 1  # stopped inside epoch 2: checkpoint stays at epoch 1
    assert ckpt_io.load_checkpoint(cut / "checkpoint.pt")["epoch"] == 0
    resumed = train(tiny_train_config(env["data"], env["text"], cut, resume="auto", **common))
    assert resumed.global_step == 6 and not resumed.stopped

    a, b = ckpt_io.load_checkpoint(full / "checkpoint.pt"), ckpt_io.load_checkpoint(cut / "checkpoint.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for s1, s2 in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    assert a["history"][-1]["val"] == b["history"][-1]["val"]
    assert _records(cut, "resume") and _records(full, "start")[0]["accumulation_steps"] == 2


def test_non_finite_loss_stops_naming_the_step(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    poison_loss(monkeypatch, float("nan"), at_call=4)
    out = env["base"] / "nan"
    with pytest.raises(
        TrainingDiverged, match=r"epoch 2, step 1 of the epoch \(optimiser step 4\).*last good checkpoint is .*checkpoint\.pt"
    ):
        train(tiny_train_config(env["data"], env["text"], out, epochs=2, steps_per_epoch=3, val_split=None))
    assert ckpt_io.load_checkpoint(out / "checkpoint.pt")["epoch"] == 0



def test_divergence_in_the_cli_is_one_error_line(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    from lavt.cli import main
    from lavt.engine.losses import SegmentationLoss

    monkeypatch.setattr(SegmentationLoss, "forward", lambda self, logits, target, normalizers=None: logits.sum() * float("inf"))
    cfg = tiny_train_config(env["data"], env["text"], env["base"] / "nan_cli", steps_per_epoch=2, val_split=None)
    path = env["base"] / "nan_cli.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the loss became non-finite at epoch 1, step 1 of the epoch (optimiser step 1)")
    assert "No checkpoint had been written yet" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_two_processes_equal_one(env: dict[str, Path]) -> None:
    """Total batch 4: one process (4 per forward) vs torchrun with 2 gloo processes (2 each)
    take the same optimiser step; then the same evaluation in one process and sharded over two.

    Compared: the loss, the gradients (Adam's first moment after one step is 0.1 * grad), the
    synchronised BatchNorm statistics, and the parameters. Some parameters have a gradient
    that is zero in exact arithmetic (biases right before an InstanceNorm, the text encoder's
    last LayerNorm bias, which softmax and InstanceNorm cancel); their float-noise gradients
    (~1e-9) differ between the runs and Adam's first step moves them by +-lr whatever their
    size, so for those only |difference| <= 2 lr is asserted.
    """
    from lavt.engine.config import EvalConfig
    from lavt.engine.evaluate import evaluate

    one = env["base"] / "one"
    train(tiny_train_config(env["data"], env["text"], one, steps_per_epoch=1, val_split=None, device="cpu"))

    two = env["base"] / "two"
    args = env["base"] / "ddp_args.json"
    eval_json = env["base"] / "eval_two.json"
    args.write_text(json.dumps({"data_root": str(env["data"]), "text_dir": str(env["text"]), "out": str(two),
                                "eval_model": str(one / "model_last"), "eval_json": str(eval_json)}))
    run_torchrun(Path(__file__).resolve().parent / "engine_ddp_worker.py", args)

    c1, c2 = ckpt_io.load_checkpoint(one / "checkpoint.pt"), ckpt_io.load_checkpoint(two / "checkpoint.pt")
    assert (c1["world_size"], c2["world_size"]) == (1, 2)
    l1, l2 = _records(one, "train"), _records(two, "train")
    assert [r["loss"] for r in l1] == pytest.approx([r["loss"] for r in l2], rel=1e-6)

    grads1 = {i: s["exp_avg"] / 0.1 for i, s in c1["optimizer"]["state"].items()}
    grads2 = {i: s["exp_avg"] / 0.1 for i, s in c2["optimizer"]["state"].items()}
    scale = max(g.abs().max().item() for g in grads1.values())
    for i, g in grads1.items():
        torch.testing.assert_close(grads2[i], g, rtol=1e-4, atol=1e-6 * scale)

    lr = c1["optimizer"]["param_groups"][0]["initial_lr"] * 1.0
    names = [n for n in c1["model"] if n.startswith(("backbone.", "classifier.", "text_encoder."))]
    index = _param_index(c1, one)
    checked = 0
    for name in names:
        a, b = c1["model"][name], c2["model"][name]
        if not a.is_floating_point():
            continue
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # synchronised statistics
            checked += 1
            continue
        if name not in index or index[name] not in grads1:
            # frozen (text embeddings) or without gradient (the last stage's language gate,
            # whose output no later stage reads, as in the official model)
            assert torch.equal(a, b), name
            continue
        g = grads1[index[name]]
        significant = g.abs() > 1e-5 * scale
        torch.testing.assert_close(b[significant], a[significant], rtol=0, atol=1e-6, msg=name)
        noise = (b[~significant] - a[~significant]).abs()
        assert noise.numel() == 0 or noise.max().item() <= 2 * lr + 1e-6, name
    assert checked >= 8  # the decoder's BatchNorm layers

    single = evaluate(EvalConfig(checkpoint=str(one / "model_last"), data_root=str(env["data"]), dataset="synthref",
                                 split="val", num_workers=0, progress=False, device="cpu"))
    sharded = json.loads(eval_json.read_text())
    assert sharded["world_size"] == 2 and sharded["counts"] == single.counts
    for proto in ("official", "original"):
        for k, v in single.metrics[proto].items():
            assert sharded["metrics"][proto][k] == pytest.approx(v, abs=1e-9), (proto, k)
    lines = (env["base"] / "eval_two.jsonl").read_text().splitlines()
    assert len(lines) == single.counts["expressions"]


def _param_index(ckpt: dict, run: Path) -> dict[str, int]:
    """Parameter name -> optimiser state index, rebuilt with the run's own grouping."""
    from lavt.engine.config import TrainConfig
    from lavt.engine.optim import freeze_untrained_text_layers, param_groups
    from lavt.engine.train import build_model

    cfg = TrainConfig.from_dict(ckpt["config"])
    model, _, _ = build_model(cfg)
    freeze_untrained_text_layers(model, cfg.text_layers_trained)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [
        names[id(p)]
        for g in param_groups(model, cfg.lr, cfg.weight_decay, text_layers_trained=cfg.text_layers_trained)
        for p in g["params"]
    ]
    return {n: i for i, n in enumerate(order)}


def test_build_model_initialisations(env: dict[str, Path], tmp_path: Path) -> None:
    """Fresh: text encoder from its folder, backbone from a Microsoft-Swin-style file;
    `init_from`: every weight from a saved LAVT."""
    from lavt.engine.train import build_model
    from lavt.models import LAVT

    cfg = tiny_train_config(env["data"], env["text"], tmp_path / "run")
    donor, _, _ = build_model(cfg)
    swin = {k[len("backbone."):]: v.clone() + 1 for k, v in donor.state_dict().items()
            if k.startswith("backbone.") and ".fusion." not in k and ".res_gate." not in k}
    swin["head.weight"] = torch.zeros(3, 3)  # a classification head is dropped
    torch.save({"model": swin}, tmp_path / "swin.pth")

    model, tokenizer, notes = build_model(
        tiny_train_config(env["data"], env["text"], tmp_path / "run", pretrained_backbone=str(tmp_path / "swin.pth"))
    )
    assert torch.equal(model.backbone.patch_embed.proj.weight, swin["patch_embed.proj.weight"])
    assert notes["backbone_not_loaded"]["count"] > 0  # the PWAMs and gates are new
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(env["text"]), add_pooling_layer=False)
    assert torch.equal(model.text_encoder.encoder.layer[1].output.dense.weight, bert.encoder.layer[1].output.dense.weight)
    assert tokenizer(["a b"])[0].shape == (1, model.config.max_tokens)

    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    again, _, notes = build_model(tiny_train_config(env["data"], env["text"], tmp_path / "run", init_from=str(tmp_path / "saved")))
    assert notes["init_from"] == str(tmp_path / "saved") and isinstance(again, LAVT)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
