"""Optimiser groups as the official train.py builds them, the poly schedule, and the losses."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lavt.engine.config import TrainConfig
from lavt.engine.losses import SegmentationLoss, dice_loss_per_sample
from lavt.engine.optim import PolyWarmup, PolyWarmupLR, build_optimizer, build_scheduler, freeze_untrained_text_layers, param_groups

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "lavt_base_window12_keys.tsv"
BUFFERS = ("relative_position_index", "num_batches_tracked", "running_mean", "running_var")


def _official_groups() -> dict[str, list[str]]:
    """Apply the official rule (train.py) to the released checkpoint's key list."""
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} not present")
    rows = [line.split("\t") for line in REFERENCE.read_text().splitlines()[1:]]
    model_keys = [k for part, k, _ in rows if part == "model" and not k.endswith(BUFFERS)]
    bert_keys = [k for part, k, _ in rows if part == "bert_model"]
    backbone = [k for k in model_keys if k.startswith("backbone.")]
    no_decay = [
        k for k in backbone if any(s in k[len("backbone.") :] for s in ("norm", "absolute_pos_embed", "relative_position_bias_table"))
    ]
    return {
        "backbone_no_decay": no_decay,
        "backbone": [k for k in backbone if k not in no_decay],
        "decoder": [k for k in model_keys if k.startswith("classifier.")],
        "text_encoder": ["text_encoder." + k for k in bert_keys if re.match(r"encoder\.layer\.[0-9]\.", k)],
    }


def test_groups_match_the_official_code() -> None:
    from lavt.models import BERT_BASE_UNCASED, LAVT, build_config

    official = _official_groups()
    with torch.device("meta"):  # the released Swin-B + BERT-base architecture, no memory
        model = LAVT(build_config("base", window_size=12, text_encoder=dict(BERT_BASE_UNCASED)))
    names = {id(p): n for n, p in model.named_parameters()}
    freeze_untrained_text_layers(model, 10)
    groups = param_groups(model, lr=5e-5, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["backbone_no_decay", "backbone", "decoder", "text_encoder"]
    for g in groups:
        got = [names[id(p)] for p in g["params"]]
        assert got == official[g["name"]], g["name"]  # same parameters, same order
    # What the official run hands to AdamW: counts per group and the no-decay set.
    assert [len(g["params"]) for g in groups] == [len(official[k]) for k in official]
    assert groups[0]["weight_decay"] == 0.0 and all(g["weight_decay"] == 0.01 for g in groups[1:])
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    assert all(("norm" in n or "relative_position_bias_table" in n) for n in no_decay)
    assert any(".fusion." in names[id(p)] for p in groups[1]["params"])  # PWAMs are backbone parameters
    # embeddings and layers 10-11 are frozen, not optimised
    frozen = [n for n, p in model.text_encoder.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("embeddings.", "encoder.layer.10.", "encoder.layer.11.")) for n in frozen)


def test_switchable_text_layers_and_group_lrs() -> None:
    from lavt.models import LAVT, build_config

    bert = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, max_position_embeddings=24)
    model = LAVT(
        build_config("tiny", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, text_dim=16, text_encoder=bert)
    )
    cfg = TrainConfig(lr=1e-4, lr_decoder=1e-3, lr_text=1e-5, text_layers_trained=None, warmup_steps=2)
    opt = build_optimizer(model, cfg)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decoder"]["lr"] == 1e-3 and by_name["text_encoder"]["lr"] == 1e-5 and by_name["backbone"]["lr"] == 1e-4
    assert len(by_name["text_encoder"]["params"]) == len(list(model.text_encoder.parameters()))  # all, with embeddings
    sched = build_scheduler(opt, total_steps=10, config=cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[2]["lr"])
        opt.step()
        sched.step()
    poly = PolyWarmup(10, 0.9, 2, 0.001)
    assert lrs == pytest.approx([1e-3 * poly(i) for i in range(4)])
    assert lrs[0] < lrs[1] < lrs[2] > lrs[3]  # warm-up, then decay
    model2 = LAVT(model.config)
    assert freeze_untrained_text_layers(model2, 0) == len(list(model2.text_encoder.parameters()))
    assert "text_encoder" not in [g["name"] for g in param_groups(model2, 1e-4)]


def test_poly_schedule_is_the_official_lambda() -> None:
    total = 7 * 40
    f = PolyWarmup(total)
    for it in (0, 1, 100, total - 1, total):
        assert f(it) == pytest.approx((1 - it / total) ** 0.9)
    assert f(total + 5) == 0.0


def test_weighted_ce_is_the_official_criterion(golden_dir: Path) -> None:
    case = torch.load(golden_dir / "lavt_tiny.pt", weights_only=True)
    loss = SegmentationLoss("ce")(case["logits"], case["target"])
    assert loss.item() == pytest.approx(case["loss"].item(), abs=1e-6)


def test_normalizers_make_split_batches_exact() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(4, 2, 9, 7), torch.randint(0, 2, (4, 9, 7))
    for kind in ("ce", "dice", "ce+dice"):
        crit = SegmentationLoss(kind, dice_weight=0.5)
        whole = crit(logits, target)
        norms = crit.normalizers(target[:2]) + crit.normalizers(target[2:])
        split = crit(logits[:2], target[:2], norms) + crit(logits[2:], target[2:], norms)
        assert split.item() == pytest.approx(whole.item(), rel=1e-6), kind
    ref = F.cross_entropy(logits, target, weight=torch.tensor([0.9, 1.1]))
    assert SegmentationLoss("ce")(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)


def test_dice() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    perfect = torch.stack([1 - target, target], 1).float() * 40 - 20
    assert dice_loss_per_sample(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss_per_sample(-perfect, target).item() > 0.9


@pytest.mark.parametrize("amsgrad", [False, True])
def test_build_optimizer_is_fused_and_takes_the_plain_adamw_step(amsgrad: bool) -> None:
    """build_optimizer uses the fused AdamW kernel; three steps of it on the official groups
    (decay and no-decay, several learning rates) match torch's per-tensor AdamW."""
    from lavt.models import LAVT, build_config

    bert = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=24)
    torch.manual_seed(0)
    model = LAVT(
        build_config(
            "tiny",
            embed_dim=8,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 2, 2),
            window_size=4,
            text_dim=16,
            text_encoder=bert,
            image_size=32,
            drop_path_rate=0.0,
        )
    )
    twin = LAVT(model.config)
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(lr=1e-3, lr_decoder=2e-3, weight_decay=0.01, amsgrad=amsgrad, text_layers_trained=None)
    fused = build_optimizer(model, cfg)
    assert fused.defaults["fused"] is True
    name_of = {id(p): n for n, p in model.named_parameters()}
    twin_params = dict(twin.named_parameters())
    plain = torch.optim.AdamW(  # the same groups over the twin's parameters, per-tensor loop
        [{**g, "params": [twin_params[name_of[id(p)]] for p in g["params"]]} for g in fused.param_groups],
        lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=amsgrad, foreach=False,
    )
    model.train(), twin.train()
    for step in range(3):
        torch.manual_seed(step)
        image, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 50, (2, 6))
        target = (torch.rand(2, 32, 32) > 0.5).long()
        for m, opt in ((model, fused), (twin, plain)):
            torch.manual_seed(100 + step)  # the same dropout masks in both
            opt.zero_grad()
            F.cross_entropy(m(image, ids, torch.ones_like(ids)), target).backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_one_schedule_for_the_official_and_the_demo_warm_up() -> None:
    # official: linear warm-up from start_factor over warmup_steps, poly decay of it / total
    f = PolyWarmup(50, 0.9, warmup_steps=10, start_factor=0.001)
    for it in (0, 3, 9, 10, 49):
        warm = 0.001 + 0.999 * it / 10 if it < 10 else 1.0
        assert f(it) == pytest.approx(warm * (1 - it / 50) ** 0.9, rel=1e-12)
    # the demo's warm-up min(1, (it+1)/W), with step progress and with time progress
    for w in (1, 4, 100):
        ramp = PolyWarmup.ramp(w, total_steps=200)
        for it in sorted({0, 1, max(0, w - 2), w - 1, w, 150}):
            assert ramp(it) == pytest.approx(min(1.0, (it + 1) / w) * (1 - it / 200) ** 0.9, rel=1e-12)
            for share in (0.0, 0.37, 1.0, 1.5):
                assert ramp.factor(it, share) == pytest.approx(min(1.0, (it + 1) / w) * max(0.0, 1 - share) ** 0.9, rel=1e-12)


def test_scheduler_follows_progress_and_reads_old_lambda_lr_state() -> None:
    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    opt = optimizer()
    sched = PolyWarmupLR(opt, PolyWarmup(10))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.step()
    sched.step(0.75)  # e.g. three quarters of a time budget spent
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25**0.9) and sched.last_epoch == 1
    # checkpoints written before PolyWarmupLR hold a LambdaLR's state (lr_lambdas removed)
    old_opt = optimizer()
    old = torch.optim.lr_scheduler.LambdaLR(old_opt, PolyWarmup(10, warmup_steps=3))
    for _ in range(4):
        old_opt.step()
        old.step()
    state = old.state_dict()
    state.pop("lr_lambdas")
    new_opt = optimizer()  # as a resumed run: optimiser and schedule built, then their states loaded
    new = PolyWarmupLR(new_opt, PolyWarmup(10, warmup_steps=3))
    new_opt.load_state_dict(old_opt.state_dict())
    new.load_state_dict(state)
    assert new.last_epoch == 4 and new_opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"]
    for _ in range(3):
        old_opt.step(), new_opt.step()
        old.step(), new.step()
        assert new_opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"]
    saved = new.state_dict()
    assert "schedule" not in saved and "optimizer" not in saved  # plain values: weights_only loading


def test_ndim_rule_decays_matrices_except_relative_positions() -> None:
    from lavt.models import LAVT, build_config

    bert = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=24)
    model = LAVT(
        build_config("tiny", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, text_dim=16, text_encoder=bert)
    )
    model.text_encoder.requires_grad_(False)  # the demo's frozen encoder
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, rule="ndim")
    assert [(g["name"], g["weight_decay"], g["lr"]) for g in groups] == [("decay", 0.05, 1e-3), ("no_decay", 0.0, 1e-3)]
    decay = [names[id(p)] for p in groups[0]["params"]]
    no_decay = [names[id(p)] for p in groups[1]["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(decay + no_decay) == sorted(trainable) and not any(n.startswith("text_encoder.") for n in decay + no_decay)
    params = dict(model.named_parameters())
    assert all(params[n].ndim >= 2 and "relative_position" not in n for n in decay)
    assert all(params[n].ndim < 2 or "relative_position" in n for n in no_decay)
    assert any("relative_position_bias_table" in n for n in no_decay) and any(n.endswith("norm1.weight") for n in no_decay)
    # the official rule on the same model is another grouping
    assert [g["name"] for g in param_groups(model, lr=1e-3)] == ["backbone_no_decay", "backbone", "decoder"]
    with pytest.raises(ValueError, match="unknown parameter-group rule"):
        param_groups(model, lr=1e-3, rule="all")
