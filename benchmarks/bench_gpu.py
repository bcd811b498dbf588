#!/usr/bin/env python
"""The paper-setting comparison on a GPU: this LAVT (float32 and bf16 autocast) against the
official code in float32, same random weights, one process.

Measured, as medians over `--repeats` timed calls after warm-up (CUDA synchronised around each):

- inference at batch `--batch` (text encoder + LAVT, eval, `torch.inference_mode`): images per
  second, peak GPU memory (`torch.cuda.max_memory_allocated`), and the logits' difference to
  the official float32 (max abs; mean abs over the logits' std);
- one training step at batch `--train-batch` (forward + backward + AdamW, each side's own
  optimiser as in `bench_model.py`): seconds and peak GPU memory, each side built afresh after
  the other's memory is released.

    python benchmarks/bench_gpu.py --official /path/to/LAVT-RIS --json bench_gpu.json
    python benchmarks/bench_gpu.py --device cpu --preset tiny --size 96 --bert-layers 1   # a smoke run

Model building, weights and inputs are `bench_model.py`'s (no official code is copied here).
Without `--official` only our side runs.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model as bm  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def autocast(device: torch.device, on: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def build(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Both sides from the same random weights (on the CPU first, then moved)."""
    import lavt

    cfg = bm.make_config(args)
    torch.manual_seed(args.seed)
    sides: dict[str, Any] = {"cfg": cfg}
    if args.official:
        mods = bm.import_official(args.official)
        off, bert = bm.build_official(mods, cfg), bm.build_bert(cfg.text_encoder)
        bm.randomize_(off, args.seed)
        bm.randomize_(bert, args.seed)
        sides["official_sd"] = {"model": off.state_dict(), "bert_model": bert.state_dict()}
        sides["official"] = (off.to(device), bert.to(device))
        sides["ours"] = lavt.load_official(sides["official_sd"]).to(device)
    else:
        from lavt.models import LAVT

        ours = LAVT(cfg)
        bm.randomize_(ours, args.seed, strip="text_encoder.")
        sides["ours"] = ours.to(device)
    return sides


def inference(args: argparse.Namespace, device: torch.device, sides: dict[str, Any]) -> dict[str, Any]:
    image, ids, mask = (t.to(device) for t in bm.make_inputs(args.batch, args.size, args.tokens, seed=3))
    ours = sides["ours"].eval()
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    if "official" in sides:
        off, bert = (m.eval() for m in sides["official"])
        fns["official_fp32"] = lambda: bm.official_forward(off, bert, image, ids, mask)
    fns["ours_fp32"] = lambda: ours(image, ids, mask)
    fns["ours_bf16"] = lambda: ours(image, ids, mask)
    res: dict[str, Any] = {}
    outs: dict[str, torch.Tensor] = {}
    for name, fn in fns.items():

        def run(fn: Callable[[], torch.Tensor] = fn, name: str = name) -> None:
            with torch.inference_mode(), autocast(device, name.endswith("bf16")):
                outs[name] = fn().float()

        reset_peak(device)
        times = timed(run, device, args.warmup, args.repeats)
        s = statistics.median(times)
        res[name] = {"s": s, "images_per_s": args.batch / s, "times": times, "peak_gib": peak_gib(device)}
    ref = outs["official_fp32" if "official_fp32" in outs else "ours_fp32"]
    for name, out in outs.items():
        d = (out - ref).abs()
        res[name]["max_abs_diff"] = d.max().item()
        res[name]["mean_abs_diff_over_std"] = d.mean().item() / ref.std().item()
        if "official_fp32" in res:
            res[name]["speedup_vs_official_fp32"] = res[name]["images_per_s"] / res["official_fp32"]["images_per_s"]
    return res


def train_step(args: argparse.Namespace, device: torch.device, side: str, precision: str, sd: dict | None) -> dict[str, Any]:
    """One side's training steps, built afresh on the device; returns times, peak memory, losses."""
    import lavt
    from lavt.engine.optim import adamw, freeze_untrained_text_layers, param_groups

    torch.manual_seed(0)
    image, ids, mask = (t.to(device) for t in bm.make_inputs(args.train_batch, args.size, args.tokens, seed=1))
    gen = torch.Generator().manual_seed(2)
    target = (torch.rand(args.train_batch, args.size, args.size, generator=gen) > 0.5).long().to(device)
    weight = torch.tensor([0.9, 1.1], device=device)
    reset_peak(device)
    if side == "official":
        mods = bm.import_official(args.official)
        cfg = bm.make_config(args)
        model, bert = bm.build_official(mods, cfg), bm.build_bert(cfg.text_encoder)
        model.load_state_dict(sd["model"])
        bert.load_state_dict(sd["bert_model"])
        model, bert = model.to(device).train(), bert.to(device).train()
        opt = torch.optim.AdamW(bm.official_param_groups(model, bert), lr=5e-5, weight_decay=0.01)
        forward = lambda: bm.official_forward(model, bert, image, ids, mask)  # noqa: E731
    else:
        if sd is not None:
            model = lavt.load_official(sd)
        else:
            from lavt.models import LAVT

            model = LAVT(bm.make_config(args))
            bm.randomize_(model, args.seed, strip="text_encoder.")
        model = model.to(device).train()
        freeze_untrained_text_layers(model, 10)
        opt = adamw(param_groups(model, 5e-5, 0.01, text_layers_trained=10), lr=5e-5, weight_decay=0.01)
        forward = lambda: model(image, ids, mask)  # noqa: E731
    losses: list[float] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision == "bf16"):
            loss = F.cross_entropy(forward().float(), target, weight=weight)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    times = timed(step, device, args.warmup, args.train_steps)
    out = {"step_s": statistics.median(times), "steps": times, "peak_gib": peak_gib(device), "losses": losses}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, default=None, help="checkout of yz93/LAVT-RIS (omit: ours only)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    p.add_argument("--preset", default="base", choices=["tiny", "small", "base", "large"])
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--bert-layers", type=int, default=12)
    p.add_argument("--batch", type=int, default=8, help="inference batch (default 8)")
    p.add_argument("--train-batch", type=int, default=8, help="training batch (default 8, the paper's per-GPU batch)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 on both sides
        torch.backends.cudnn.allow_tf32 = False
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "setting": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    sides = build(args, device)
    res["inference"] = inference(args, device, sides)
    sd = sides.get("official_sd")
    del sides
    if not args.skip_train:
        res["train"] = {}
        runs = ([("official", "fp32")] if args.official else []) + [("ours", "fp32"), ("ours", "bf16")]
        for side, prec in runs:
            res["train"][f"{side}_{prec}"] = train_step(args, device, side, prec, sd)
            reset_peak(device)
        if args.official:
            o = res["train"]["official_fp32"]
            for r in res["train"].values():
                r["speedup_vs_official_fp32"] = o["step_s"] / r["step_s"]
                if o["peak_gib"]:
                    r["peak_vs_official"] = r["peak_gib"] / o["peak_gib"]
    print(f"# {res['device']}, torch {res['torch']}, batch {args.batch} (train {args.train_batch}), {args.size}x{args.size}")
    for name, r in res["inference"].items():
        mem = f"  peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        ratio = f"  x{r['speedup_vs_official_fp32']:.2f}" if "speedup_vs_official_fp32" in r else ""
        print(
            f"inference {name:14s} {r['images_per_s']:8.2f} img/s{ratio}{mem}  max|d| {r['max_abs_diff']:.1e}  "
            f"mean|d|/std {r['mean_abs_diff_over_std']:.4f}"
        )
    for name, r in res.get("train", {}).items():
        mem = f"  peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""
        ratio = f"  x{r['speedup_vs_official_fp32']:.2f}" if "speedup_vs_official_fp32" in r else ""
        print(f"train step {name:13s} {r['step_s']:8.3f} s{ratio}{mem}  first loss {r['losses'][0]:.4f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
