"""The engine's one training step and the recipe loop: a tiny segmenter for exact checks of
the step (accumulation, schedule, budgets, divergence), then the demo recipe driven by it."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lavt.data.synthref import generate
from lavt.demo.recipe import DemoRecipe
from lavt.demo.scenes import load_scenes
from lavt.demo.trainer import train_demo
from lavt.engine.loop import StepBudget, TimeBudget, TrainingDiverged, TrainStep, run_steps
from lavt.engine.losses import SegmentationLoss
from lavt.engine.optim import PolyWarmup, PolyWarmupLR, adamw
from lavt.errors import LAVTUserError

SRC = Path(__file__).resolve().parents[1] / "src" / "lavt"


class Segmenter(nn.Module):
    """A 1x1 convolution with LAVT's call signature (the text is ignored)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, image, input_ids=None, attention_mask=None, *, text_features=None, text_mask=None):  # noqa: ANN001, ANN201
        return self.conv(image)


def _batch(seed: int, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, 8, 8, generator=g)
    mask = (image[:, 0] > 0.3).long()  # learnable from the first channel
    return {
        "image": image,
        "mask": mask,
        "input_ids": torch.zeros(n, 4, dtype=torch.long),
        "attention_mask": torch.ones(n, 4, dtype=torch.long),
    }


def _step(lr: float = 0.05, total: int = 100, warmup: int = 1, **kw) -> TrainStep:  # noqa: ANN003
    torch.manual_seed(0)
    model = Segmenter()
    opt = adamw([{"params": list(model.parameters()), "lr": lr}], lr=lr, weight_decay=0.0)
    return TrainStep(model, SegmentationLoss("ce"), opt, PolyWarmupLR(opt, PolyWarmup.ramp(warmup, total)), **kw)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_backward_in_the_package() -> None:
    calls = {str(p.relative_to(SRC)): p.read_text().count(".backward(") for p in SRC.rglob("*.py")}
    assert {k: v for k, v in calls.items() if v} == {"engine/loop.py": 1}


def test_step_budget_loss_falls_and_schedule_follows_the_steps() -> None:
    step = _step(total=30, warmup=5)
    results = []
    done = run_steps(step, lambda progress: [_batch(len(results))], StepBudget(30), results.append)
    assert done == len(results) == 30 and [r.step for r in results] == list(range(1, 31))
    assert sum(r.loss for r in results[-5:]) < 0.7 * sum(r.loss for r in results[:5])
    # the lr each step used: the demo's warm-up min(1, (it+1)/W) times the poly decay of the steps done
    for it, r in enumerate(results):
        assert r.lr == pytest.approx(0.05 * min(1.0, (it + 1) / 5) * (1 - it / 30) ** 0.9, rel=1e-12)
        assert r.progress == (it + 1) / 30


def test_accumulated_micro_batches_take_the_whole_batch_step() -> None:
    """Two micro-batches with the global normaliser: the same loss and update as one batch
    of both (the official gradient accumulation); 'local' averages the micro-batch means."""
    whole, split = _step(), _step()
    a, b = _batch(1, 2), _batch(2, 2)
    both = {k: torch.cat([a[k], b[k]]) for k in a}
    r1, r2 = whole([both]), split([a, b])
    assert r2.loss == pytest.approx(r1.loss, rel=1e-6)
    for p, q in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    local = _step(loss_normalization="local")
    crit = SegmentationLoss("ce")
    expected = 0.5 * (crit(local.model(a["image"]), a["mask"]) + crit(local.model(b["image"]), b["mask"]))
    assert local([a, b]).loss == pytest.approx(expected.item(), rel=1e-6)


def test_time_budget_stops_at_the_first_step_past_it() -> None:
    step = _step(total=10**6)
    seconds = []

    def slow_batches(progress: float) -> list[dict[str, torch.Tensor]]:
        time.sleep(0.02)
        return [_batch(0)]

    budget = TimeBudget(0.3)
    results = []
    run_steps(step, slow_batches, budget, lambda r: (results.append(r), seconds.append(budget.elapsed)))
    assert len(results) >= 3
    assert results[-1].progress >= 1.0 > results[-2].progress  # stopped at the first step past the budget
    assert results[-2].progress > 0.5  # ... and not long before it
    assert seconds[-1] == pytest.approx(0.3 * results[-1].progress, rel=1e-9)
    # the lr of each step follows the share of the budget spent before it
    for r, prev in zip(results[1:], results):
        assert r.lr == pytest.approx(0.05 * (1 - prev.progress) ** 0.9, rel=1e-12)


def test_non_finite_loss_raises_naming_the_step_before_any_update() -> None:
    step = _step()
    step([_batch(0)])
    before = [p.detach().clone() for p in step.model.parameters()]
    bad = _batch(1)
    bad["image"][0, 0, 0, 0] = float("nan")
    step.advice = "Lower --lr."
    with pytest.raises(
        TrainingDiverged, match=r"non-finite at optimiser step 2; the weights were not updated by that step\. Lower --lr\."
    ) as e:
        step([bad])
    assert isinstance(e.value, LAVTUserError)  # the CLI prints one `error:` line, exit code 2
    for p, q in zip(before, step.model.parameters()):
        assert torch.equal(p, q)


def test_the_demo_recipe_runs_on_the_engine(tmp_path: Path) -> None:
    generate(tmp_path, seed=5, num_images=4, image_size=(64, 96), split_fractions=(1.0, 0.0, 0.0, 0.0), overwrite=True)
    scenes = load_scenes(tmp_path, "train", 64)
    recipe = DemoRecipe(image_size=64, embed_dim=8, num_heads=(1, 1, 1, 1), pwam_heads=(1, 1, 1, 1), decoder_hidden=8,
                        window_size=4, steps=40, batch_size=4, warmup_steps=5, lr=3e-3, drop_path_rate=0.0, curriculum=0.0)
    result = train_demo(recipe, scenes, progress=False)
    losses = [h["loss"] for h in result.history]
    assert result.steps == len(losses) == 40 and not result.model.training
    assert sum(losses[-8:]) < 0.8 * sum(losses[:8]), losses
    # the same seed draws the same refs, expressions and initialisation: the same run
    again = train_demo(recipe, scenes, progress=False)
    assert [h["loss"] for h in again.history] == losses
