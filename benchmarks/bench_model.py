#!/usr/bin/env python
"""Speed, memory and output agreement of this LAVT against the official code, in one run.

Both sides get the same random weights: the official `LAVT` (yz93/LAVT-RIS, imported from a
checkout given with `--official PATH`) is built and randomised, and ours is made from its
state_dict with `lavt.load_official`. BERT is transformers' `BertModel` on both sides (the
official code's vendored BERT has the same keys and numerics). Measured, each as a ratio of
medians over alternating repeats:

- float32 inference, batch 1, eval, `torch.inference_mode` (text encoder + LAVT), and the
  logits' max abs difference to the official model;
- bfloat16 autocast inference (ours; the official under autocast too, for information) against
  the official float32, with the output difference (mean abs diff / logits std);
- one training step at batch `--train-batch` (forward + backward + AdamW), float32 and bf16
  autocast, each side in a fresh subprocess so that its peak resident memory is its own; ours
  keeps freed memory for reuse as `lavt.engine.train` does on a CPU (`lavt.engine.memory`), and
  runs once more with glibc's default behaviour, for information;
- evaluation throughput in expressions/s: the official loop (one forward per expression, batch
  1, as test.py) against ours (`segment_expressions`: all expressions of an image batched, the
  text-independent stem computed once), float32 and bf16;
- FLOPs of one forward (torch.utils.flop_counter on the official model) and the achieved
  GFLOP/s against a float32 / bfloat16 matmul peak measured in the same run.

Without `--official` only our side runs (absolute numbers, no ratios).

    python benchmarks/bench_model.py --official /path/to/LAVT-RIS            # Swin-B w12, 480, 20 tokens
    python benchmarks/bench_model.py --official /path/to/LAVT-RIS --preset tiny --size 224 --bert-layers 2
    python benchmarks/bench_model.py                                          # ours only

The official code imports timm, mmcv and mmseg; this script installs small stand-ins for the
few names it uses (DropPath, to_2tuple, trunc_normal_, load_checkpoint, get_root_logger) in
`sys.modules` before importing it. Nothing of the official code is copied here.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import types
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RESULT_TAG = "@@RESULT "
OFFICIAL_PKG = "_lavt_official_lib"


# ---------------------------------------------------------------------------- official code
def _timm_drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


class _DropPath(nn.Module):
    """Stand-in for timm.models.layers.DropPath (same semantics)."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _timm_drop_path(x, self.drop_prob, self.training)


def _to_2tuple(x: Any) -> tuple:
    if isinstance(x, (list, tuple)):
        return tuple(x)
    return (x, x)


def _no_load_checkpoint(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("the benchmark never loads Swin checkpoints through mmcv")


def import_official(path: str | Path) -> types.SimpleNamespace:
    """Import the official `lib/backbone.py`, `lib/mask_predictor.py`, `lib/_utils.py` from a
    checkout, under a private package name, with stand-ins for timm/mmcv/mmseg/bert."""
    root = Path(path).resolve()
    lib = root / "lib"
    for name in ("backbone.py", "mask_predictor.py", "_utils.py"):
        if not (lib / name).is_file():
            sys.exit(f"error: {lib / name} not found: --official must be a checkout of yz93/LAVT-RIS")

    def module(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    if "timm.models.layers" not in sys.modules:
        module("timm", __path__=[])
        module("timm.models", __path__=[])
        module("timm.models.layers", DropPath=_DropPath, to_2tuple=_to_2tuple, trunc_normal_=nn.init.trunc_normal_)
    if "mmseg.utils" not in sys.modules:
        module("mmseg", __path__=[])
        module("mmseg.utils", get_root_logger=lambda *a, **k: logging.getLogger("official"))
    if "bert.modeling_bert" not in sys.modules:
        from transformers import BertModel

        module("bert", __path__=[])
        module("bert.modeling_bert", BertModel=BertModel)
    if OFFICIAL_PKG not in sys.modules:
        module(OFFICIAL_PKG, __path__=[str(lib)])
        # lib/mmcv_custom imports mmcv and torchvision; the backbone only needs load_checkpoint.
        module(f"{OFFICIAL_PKG}.mmcv_custom", __path__=[], load_checkpoint=_no_load_checkpoint)
    return types.SimpleNamespace(
        backbone=importlib.import_module(f"{OFFICIAL_PKG}.backbone"),
        mask_predictor=importlib.import_module(f"{OFFICIAL_PKG}.mask_predictor"),
        utils=importlib.import_module(f"{OFFICIAL_PKG}._utils"),
    )


def build_official(mods: types.SimpleNamespace, cfg: Any) -> nn.Module:
    """The official `lavt` model exactly as lib/segmentation.py builds it, with our config's sizes."""
    backbone = mods.backbone.MultiModalSwinTransformer(
        embed_dim=cfg.embed_dim,
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_size=cfg.window_size,
        ape=False,
        drop_path_rate=0.3,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        use_checkpoint=False,
        num_heads_fusion=list(cfg.pwam_heads),
        fusion_drop=0.0,
    )
    backbone.init_weights()
    classifier = mods.mask_predictor.SimpleDecoding(8 * cfg.embed_dim)
    return mods.utils.LAVT(backbone, classifier)


def build_bert(bert_cfg: dict[str, Any]) -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**bert_cfg), add_pooling_layer=False)


def official_param_groups(model: nn.Module, bert: nn.Module) -> list[dict[str, Any]]:
    """The official train.py's AdamW groups: backbone no-decay / decay, classifier, BERT encoder
    layers 0-9."""
    keys = ("norm", "absolute_pos_embed", "relative_position_bias_table")
    backbone = list(model.backbone.named_parameters())
    return [
        {"params": [p for n, p in backbone if any(k in n for k in keys)], "weight_decay": 0.0},
        {"params": [p for n, p in backbone if not any(k in n for k in keys)]},
        {"params": list(model.classifier.parameters())},
        {"params": [p for i in range(min(10, len(bert.encoder.layer))) for p in bert.encoder.layer[i].parameters()]},
    ]


# ---------------------------------------------------------------------------- shared set-up
def make_config(args: argparse.Namespace, **overrides: Any) -> Any:
    from lavt.models import BERT_BASE_UNCASED, build_config

    bert = dict(BERT_BASE_UNCASED, num_hidden_layers=args.bert_layers)
    return build_config(args.preset, window_size=args.window, text_encoder=bert, text_dim=768, **overrides)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, strip: str = "") -> None:
    """Seeded random weights, a function of (seed, key) only, so that two models with the same
    keys (ours, the official) get identical weights without copying.

    LAVT (the golden vectors' recipe, weights at the scale of trained ones): linear/conv
    N(0, 1/fan_in), biases N(0, 0.1), norm scales U(0.5, 1.5) and shifts N(0, 0.2), BatchNorm
    running statistics, relative position tables N(0, 0.5). BERT: its own initialisation
    (N(0, 0.02) matrices and embeddings, zero biases, unit LayerNorms): with fan-in-scaled
    weights a 12-layer random BERT maps all tokens to nearly the same vector, PWAM's attention
    output is then almost constant over the pixels, and its instance norms amplify float32
    rounding to ~1e-3 in the logits of *both* implementations (a float64 run shows it).
    """
    sd = module.state_dict()
    for key, t in sd.items():
        if not t.is_floating_point():
            continue
        k = key[len(strip):] if strip and key.startswith(strip) else key
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(k.encode()))
        shape = t.shape

        def randn(std: float, shape: torch.Size = shape, g: torch.Generator = g) -> torch.Tensor:
            return torch.randn(shape, generator=g) * std

        if k.startswith(("embeddings.", "encoder.")):  # BERT
            if t.ndim >= 2:
                new = randn(0.02)
            else:
                new = torch.ones(shape) if k.endswith("LayerNorm.weight") else torch.zeros(shape)
        elif k.endswith("relative_position_bias_table"):
            new = randn(0.5)
        elif k.endswith("running_mean"):
            new = randn(0.2)
        elif k.endswith("running_var"):
            new = 0.5 + 1.5 * torch.rand(shape, generator=g)
        elif t.ndim >= 2:
            new = randn(1.0) if "embeddings" in k else randn(float(t[0].numel()) ** -0.5)
        elif k.endswith("weight"):
            new = 0.5 + torch.rand(shape, generator=g)
        else:
            sibling = sd.get(key[: -len("bias")] + "weight")
            new = randn(0.2) if sibling is not None and sibling.ndim == 1 else randn(0.1)
        t.copy_(new)


def make_inputs(batch: int, size: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random normalised images and token ids ([CLS] words [SEP], zero padded, lengths varied)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=g)
    ids = torch.zeros(batch, tokens, dtype=torch.long)
    mask = torch.zeros(batch, tokens, dtype=torch.long)
    for i in range(batch):
        n = max(3, min(tokens, 6 + (5 * i) % (tokens - 2))) if tokens > 3 else tokens
        ids[i, 0] = 101
        ids[i, 1 : n - 1] = torch.randint(1000, 30000, (n - 2,), generator=g)
        ids[i, n - 1] = 102
        mask[i, :n] = 1
    return image, ids, mask


def official_forward(off: nn.Module, bert: nn.Module, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """As the official test.py/train.py: BERT outside, features channels-first, mask (B, N, 1)."""
    l = bert(ids, attention_mask=mask)[0]
    return off(image, l.permute(0, 2, 1), mask.unsqueeze(-1))


def bf16() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ---------------------------------------------------------------------------- measuring
def time_alternating(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run each function `warmup` times, then `repeats` rounds, alternating the order every
    round so that load from other processes hits every side alike. Returns seconds per call:
    wall clock, and CPU time of this process (all threads; robust to time-slicing by other
    processes on a shared machine, not to their use of caches and memory bandwidth)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul (median of repeats), the attainable compute rate here."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / med(ts) / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import transformers

    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "mkldnn_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()),
        "cuda": torch.cuda.is_available(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "KMP_", "MKL_", "GOMP_", "MALLOC_", "LD_PRELOAD"))},
    }


# ---------------------------------------------------------------------------- training child
def train_child(args: argparse.Namespace) -> None:
    """One side's training steps in this (fresh) process; prints one result line."""
    torch.manual_seed(0)
    side, precision = args.child_side, args.child_precision
    cfg = make_config(args, use_checkpoint=side == "ours_ckpt")
    image, ids, mask = make_inputs(args.train_batch, args.size, args.tokens, seed=1)
    target = (torch.rand(args.train_batch, args.size, args.size, generator=torch.Generator().manual_seed(2)) > 0.5).long()
    weight = torch.tensor([0.9, 1.1])
    if side == "official":
        mods = import_official(args.official)
        model = build_official(mods, cfg)
        bert = build_bert(cfg.text_encoder)
        randomize_(model, args.seed)
        randomize_(bert, args.seed)
        model.train()
        bert.train()
        groups = official_param_groups(model, bert)

        def forward() -> torch.Tensor:
            return official_forward(model, bert, image, ids, mask)

    else:
        from lavt.engine.memory import keep_freed_memory
        from lavt.engine.optim import freeze_untrained_text_layers, param_groups
        from lavt.models import LAVT

        if side != "ours_glibc_default":
            keep_freed_memory()  # as lavt.engine.train does on a CPU

        model = LAVT(cfg)
        randomize_(model, args.seed, strip="text_encoder.")
        model.train()
        # Same groups; the text parameters no group optimises are frozen (same weights result).
        freeze_untrained_text_layers(model, 10)
        groups = param_groups(model, 5e-5, 0.01, text_layers_trained=10)

        def forward() -> torch.Tensor:
            return model(image, ids, mask)

    # Each side's own optimiser: the official train.py's torch.optim.AdamW (per-tensor loop),
    # ours lavt.engine.optim's (fused).
    if side == "official":
        opt = torch.optim.AdamW(groups, lr=5e-5, weight_decay=0.01)
    else:
        from lavt.engine.optim import adamw

        opt = adamw(groups, lr=5e-5, weight_decay=0.01)
    # Each side's own step order: the official train.py clears the gradients after the forward
    # (the previous step's gradients live through it); lavt.engine clears them before.
    zero_first = side != "official"
    rss_before = rss_gib()
    times, cpu, losses = [], [], []
    for _ in range(1 + args.train_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        if zero_first:
            opt.zero_grad(set_to_none=True)
        with bf16() if precision == "bf16" else contextlib.nullcontext():
            logits = forward()
            loss = F.cross_entropy(logits.float(), target, weight=weight)
        if not zero_first:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(loss.item())
        del logits, loss
    result = {
        "side": side,
        "precision": precision,
        "step_s": times[1:],
        "step_cpu_s": cpu[1:],
        "first_step_s": times[0],
        "rss_before_gib": rss_before,
        "peak_rss_gib": peak_rss_gib(),
        "losses": losses,
    }
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_train_child(args: argparse.Namespace, side: str, precision: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-side", side, "--child-precision", precision]
    cmd += ["--preset", args.preset, "--window", str(args.window), "--size", str(args.size), "--tokens", str(args.tokens)]
    cmd += ["--bert-layers", str(args.bert_layers), "--train-batch", str(args.train_batch)]
    cmd += ["--train-steps", str(args.train_steps), "--threads", str(args.threads), "--seed", str(args.seed)]
    if args.official:
        cmd += ["--official", str(args.official)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"training child {side}/{precision} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------------------- main
def official_and_ours(args: argparse.Namespace, cfg: Any) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The official LAVT and BERT with the same random weights, and ours loaded from them."""
    import lavt

    mods = import_official(args.official)
    off = build_official(mods, cfg).eval()
    bert = build_bert(cfg.text_encoder).eval()
    randomize_(off, args.seed)
    randomize_(bert, args.seed)
    return off, bert, lavt.load_official({"model": off.state_dict(), "bert_model": bert.state_dict()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, default=None, help="checkout of yz93/LAVT-RIS (omit: ours only)")
    p.add_argument("--preset", default="base", choices=["tiny", "small", "base", "large"], help="Swin size (default base)")
    p.add_argument("--window", type=int, default=12, help="Swin window (default 12, the released weights)")
    p.add_argument("--size", type=int, default=480, help="square image side (default 480)")
    p.add_argument("--tokens", type=int, default=20, help="tokens per expression (default 20)")
    p.add_argument("--bert-layers", type=int, default=12, help="BERT-base layers (default 12; fewer for quick runs)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (medians)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument(
        "--train-steps",
        type=int,
        default=4,
        help="timed training steps after one warm-up step (default 4: single steps vary by 10-20%% on shared machines)",
    )
    p.add_argument("--expressions", type=int, default=4, help="expressions per image in the evaluation benchmark")
    p.add_argument("--images", type=int, default=1, help="images per evaluation round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only",
        default="peak,inference,train,eval",
        help="comma list of sections: peak, inference (fp32+bf16+flops), train, eval",
    )
    p.add_argument(
        "--train-precisions",
        default="fp32,bf16",
        help="comma list of our training precisions (default fp32,bf16; bf16 is slow without AVX512-BF16/AMX)",
    )
    p.add_argument("--checkpointing", action="store_true", help="also train ours with activation checkpointing")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--child-side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-precision", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_side:
        train_child(args)
        return 0

    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    have_official = args.official is not None
    res: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": machine(),
        "setting": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("child")},
    }
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    log(f"# {res['machine']['cpu']}, {res['machine']['threads']} threads, torch {torch.__version__}")

    if "peak" in sections:
        res["matmul_peak_gflops"] = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        log(f"matmul peak: fp32 {res['matmul_peak_gflops']['fp32']:.0f} GFLOP/s, bf16 {res['matmul_peak_gflops']['bf16']:.0f} GFLOP/s")

    # Training first, while this process holds no model: each side in its own process.
    if "train" in sections:
        precisions = [x for x in args.train_precisions.split(",") if x]
        runs = [("ours", prec) for prec in precisions]
        # ours with glibc's default allocator behaviour, for information (lavt.engine.train
        # keeps freed blocks for reuse on a CPU; see lavt/engine/memory.py)
        runs.insert(1, ("ours_glibc_default", "fp32"))
        if args.checkpointing:
            runs.append(("ours_ckpt", "fp32"))
        if have_official:
            runs = [("official", "fp32")] + runs + [("official", "fp32")]  # official twice: drift check
        out: dict[str, list[dict[str, Any]]] = {}
        for side, prec in runs:
            r = run_train_child(args, side, prec)
            out.setdefault(f"{side}_{prec}", []).append(r)
            log(
                f"train {side:9s} {prec}: step {med(r['step_s']):.2f} s (cpu {med(r['step_cpu_s']):.2f} s)  "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB (before step {r['rss_before_gib']:.2f})"
            )
        train: dict[str, Any] = {}
        for name, rs in out.items():
            steps = [t for r in rs for t in r["step_s"]]
            cpus = [t for r in rs for t in r["step_cpu_s"]]
            train[name] = {
                "step_s": med(steps),
                "step_cpu_s": med(cpus),
                "steps": steps,
                "steps_cpu": cpus,
                "peak_rss_gib": max(r["peak_rss_gib"] for r in rs),
                "rss_before_step_gib": max(r["rss_before_gib"] for r in rs),
                "losses": [r["losses"] for r in rs],
            }
        if have_official:
            o = train["official_fp32"]
            for t in train.values():
                t["speedup_vs_official_fp32"] = o["step_s"] / t["step_s"]
                t["cpu_speedup_vs_official_fp32"] = o["step_cpu_s"] / t["step_cpu_s"]
                t["peak_rss_vs_official"] = t["peak_rss_gib"] / o["peak_rss_gib"]
        res["train"] = train

    cfg = make_config(args)
    torch.manual_seed(args.seed)
    if have_official:
        off, bert, ours = official_and_ours(args, cfg)
    else:
        from lavt.models import LAVT

        ours = LAVT(cfg)
        randomize_(ours, args.seed, strip="text_encoder.")
    ours.eval()

    if "inference" in sections:
        image, ids, mask = make_inputs(1, args.size, args.tokens, seed=3)
        outs: dict[str, torch.Tensor] = {}

        def call(name: str, fn: Callable[[], torch.Tensor], autocast: bool = False) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode(), bf16() if autocast else contextlib.nullcontext():
                    outs[name] = fn().float()

            return run

        fns = {
            "ours_fp32": call("ours_fp32", lambda: ours(image, ids, mask)),
            "ours_bf16": call("ours_bf16", lambda: ours(image, ids, mask), True),
        }
        if have_official:
            fns = {
                "official_fp32": call("official_fp32", lambda: official_forward(off, bert, image, ids, mask)),
                **fns,
                "official_bf16": call("official_bf16", lambda: official_forward(off, bert, image, ids, mask), True),
            }
        times, cpu_times = time_alternating(fns, args.repeats)
        inf: dict[str, Any] = {
            k: {"s": med(v), "cpu_s": med(cpu_times[k]), "times": v, "cpu_times": cpu_times[k]} for k, v in times.items()
        }
        with torch.inference_mode():
            ref_fn = (lambda: official_forward(off, bert, image, ids, mask)) if have_official else (lambda: ours(image, ids, mask))
            flops = count_flops(ref_fn)
        inf["flops_per_forward"] = flops
        peak = res.get("matmul_peak_gflops", {})
        for k in times:
            inf[k]["gflops"] = flops / inf[k]["s"] / 1e9
            dt = "bf16" if k.endswith("bf16") else "fp32"
            if dt in peak:
                inf[k]["of_matmul_peak"] = inf[k]["gflops"] / peak[dt]
        ref = outs["official_fp32" if have_official else "ours_fp32"]
        std = ref.std().item()
        inf["logits_std"] = std
        for k, v in outs.items():
            d = (v - ref).abs()
            inf[k]["max_abs_diff"] = d.max().item()
            inf[k]["mean_abs_diff_over_std"] = d.mean().item() / std
            inf[k]["argmax_disagreement"] = (v.argmax(1) != ref.argmax(1)).float().mean().item()
            if have_official:
                inf[k]["speedup_vs_official_fp32"] = inf["official_fp32"]["s"] / inf[k]["s"]
                inf[k]["cpu_speedup_vs_official_fp32"] = inf["official_fp32"]["cpu_s"] / inf[k]["cpu_s"]
        # The float32 noise floor: how far float32 itself is from a float64 run of the same
        # (official) model. A faithful float32 implementation lands at about this distance.
        import copy

        with torch.inference_mode():
            if have_official:
                off64, bert64 = copy.deepcopy(off).double(), copy.deepcopy(bert).double()
                exact = official_forward(off64, bert64, image.double(), ids, mask)
                del off64, bert64
            else:
                ours64 = copy.deepcopy(ours).double()
                exact = ours64(image.double(), ids, mask)
                del ours64
        inf["fp64_reference"] = {
            k: {
                "max_abs_diff": (outs[k].double() - exact).abs().max().item(),
                "mean_abs_diff_over_std": ((outs[k].double() - exact).abs().mean() / exact.std()).item(),
            }
            for k in outs
        }
        res["inference"] = inf
        log("distance to a float64 run: " + ", ".join(f"{k} max {v['max_abs_diff']:.1e}" for k, v in inf["fp64_reference"].items()))
        for k in times:
            log(
                f"infer {k:14s} {inf[k]['s']:.3f} s (cpu {inf[k]['cpu_s']:.3f} s)  {inf[k]['gflops']:.0f} GFLOP/s  "
                + (
                    f"x{inf[k]['speedup_vs_official_fp32']:.2f} (cpu x{inf[k]['cpu_speedup_vs_official_fp32']:.2f})  "
                    if have_official
                    else ""
                )
                + f"max|d| {inf[k]['max_abs_diff']:.2e}  mean|d|/std {inf[k]['mean_abs_diff_over_std']:.4f}"
            )

    if "eval" in sections:
        e = args.expressions
        data = [make_inputs(e, args.size, args.tokens, seed=10 + i) for i in range(args.images)]
        data = [(img[:1], ids, mask) for img, ids, mask in data]  # one image, E expressions
        outs = {}

        def official_loop() -> None:
            with torch.inference_mode():
                preds = [
                    torch.cat([official_forward(off, bert, img, ids[j : j + 1], mask[j : j + 1]) for j in range(e)])
                    for img, ids, mask in data
                ]
            outs["official_fp32"] = torch.cat(preds)

        def ours_batched(name: str, autocast: bool) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode(), bf16() if autocast else contextlib.nullcontext():
                    preds = [ours.segment_expressions(img, ids, mask).float() for img, ids, mask in data]
                outs[name] = torch.cat(preds)

            return run

        fns = {"ours_fp32": ours_batched("ours_fp32", False), "ours_bf16": ours_batched("ours_bf16", True)}
        if have_official:
            fns = {"official_fp32": official_loop, **fns}
        times, cpu_times = time_alternating(fns, max(1, args.repeats // 2 + 1), warmup=1)
        n_expr = e * args.images
        ev: dict[str, Any] = {
            k: {"expr_per_s": n_expr / med(v), "expr_per_cpu_s": n_expr / med(cpu_times[k]), "times": v, "cpu_times": cpu_times[k]}
            for k, v in times.items()
        }
        ref = outs["official_fp32" if have_official else "ours_fp32"]
        for k, v in outs.items():
            d = (v - ref).abs()
            ev[k]["max_abs_diff"] = d.max().item()
            ev[k]["mean_abs_diff_over_std"] = d.mean().item() / ref.std().item()
            if have_official:
                ev[k]["speedup_vs_official_fp32"] = ev[k]["expr_per_s"] / ev["official_fp32"]["expr_per_s"]
                ev[k]["cpu_speedup_vs_official_fp32"] = ev[k]["expr_per_cpu_s"] / ev["official_fp32"]["expr_per_cpu_s"]
        res["eval"] = ev
        for k in times:
            log(
                f"eval  {k:14s} {ev[k]['expr_per_s']:.3f} expr/s "
                + (
                    f"x{ev[k]['speedup_vs_official_fp32']:.2f} (cpu x{ev[k]['cpu_speedup_vs_official_fp32']:.2f})  "
                    if have_official
                    else ""
                )
                + f"max|d| {ev[k]['max_abs_diff']:.2e}"
            )

    print_table(res, have_official)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0


def print_table(res: dict[str, Any], have_official: bool) -> None:
    """One line per measurement: value, speed-up vs the official float32 (wall clock and CPU
    time), and the memory or output difference."""

    def ratio(r: dict[str, Any]) -> str:
        if not have_official:
            return "-"
        return f"x{r['speedup_vs_official_fp32']:.2f} (cpu x{r['cpu_speedup_vs_official_fp32']:.2f})"

    rows = [("measurement", "median", "vs official fp32", "", "")]
    inf = res.get("inference", {})
    for k in ("official_fp32", "ours_fp32", "ours_bf16", "official_bf16"):
        if k in inf:
            r = inf[k]
            rows.append(
                (f"inference {k}", f"{r['s']:.3f} s", ratio(r), f"{r['gflops']:.0f} GFLOP/s",
                 f"max|d| {r['max_abs_diff']:.1e}, mean|d|/std {r['mean_abs_diff_over_std']:.4f}")
            )
    for k, r in res.get("train", {}).items():
        rows.append(
            (f"train step {k}", f"{r['step_s']:.2f} s", ratio(r), f"peak RSS {r['peak_rss_gib']:.2f} GiB",
             f"{r['peak_rss_vs_official']:.0%} of official" if have_official else "")
        )
    for k, r in res.get("eval", {}).items():
        rows.append((f"eval {k}", f"{r['expr_per_s']:.3f} expr/s", ratio(r), "", f"max|d| {r['max_abs_diff']:.1e}"))
    if len(rows) == 1:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
