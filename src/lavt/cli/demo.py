"""`lavt demo`: segment fresh generated scenes with the shipped model, or train one from scratch.

Parsing only: `lavt.demo.run.main` does the work (and `DemoRecipe.from_options` turns the
training options into a recipe).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lavt.demo.recipe import AERIAL, AERIAL_MINUTES, DEFAULT_MINUTES, STYLES, DemoRecipe

# option dest -> DemoRecipe field, for the recipe options (None: the recipe's default)
RECIPE_OPTIONS = {
    "batch_size": "batch_size", "lr": "lr", "warmup_steps": "warmup_steps", "curriculum": "curriculum",
    "kind_weights": "kind_weights", "image_size": "image_size", "patch_size": "patch_size", "embed_dim": "embed_dim",
    "depths": "depths", "num_heads": "num_heads", "window_size": "window_size", "decoder_hidden": "decoder_hidden",
    "pwam_norm": "pwam_norm", "train_images": "train_images", "data_seed": "data_seed", "train_seed": "seed",
    "drop_path": "drop_path_rate",
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(a) for a in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _kind_weights(text: str) -> dict[str, float]:
    """KIND=WEIGHT[,KIND=WEIGHT...]; which kinds exist and which weights are valid the recipe checks."""
    out = {}
    for item in filter(None, text.split(",")):
        kind, sep, value = item.partition("=")
        try:
            out[kind.strip()] = float(value if sep else "missing")
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT pairs such as relation=2,position=1, got {item!r}") from None
    return out


def register(sub: argparse._SubParsersAction) -> None:
    d = DemoRecipe()
    p = sub.add_parser(
        "demo",
        help="run the embedded default: the shipped demo model on fresh generated scenes (or --train one)",
        description="Without --train: generates fresh scenes, segments every expression with the shipped "
        "demo model, prints oIoU/mIoU/P@X beside the same model given empty expressions, writes "
        "overlays, results.json and the model (DIR/model). With --train: trains the model from scratch "
        "first (minutes on 2 CPU cores).",
    )
    p.add_argument("--out", "-o", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--train", action="store_true", help="train a demo model from scratch instead of using the shipped one")
    p.add_argument("--model", type=Path, default=None, help="evaluate this demo model folder instead of the shipped one")
    p.add_argument("--seed", type=int, default=None, help="seed of the fresh evaluation scenes (default: one never used in training)")
    p.add_argument("--images", type=int, default=120, help="number of fresh evaluation scenes (default 120)")
    p.add_argument("--generalized", action="store_true",
                   help="generalised referring segmentation: fresh scenes with multi-target and no-target expressions, "
                   "scored with gIoU/cIoU/N-acc/T-acc/Pr@t (no-target expressions are marked in the overlays); with "
                   "--train, train only the no-target head of the --init model on generated generalised scenes, every "
                   "other weight frozen (its masks stay exactly the init model's)")
    p.add_argument("--style", default="synthref", choices=STYLES,
                   help="the generated scenes: synthref's shapes (default) or top-down aerial scenes (synthrs, as in "
                   "remote sensing); with --train --style aerial the shipped model is fine-tuned on aerial scenes "
                   "unless --init or --scratch says otherwise")
    g = p.add_argument_group("training recipe (with --train)")
    g.add_argument("--minutes", type=float, default=None,
                   help=f"train for this many minutes of wall time, the schedule following the time spent "
                   f"(default without --steps: {DEFAULT_MINUTES:g}, the 10-minute run; {AERIAL_MINUTES:g} with --style aerial)")
    g.add_argument("--steps", type=int, default=None, help="train for exactly this many optimiser steps instead (reproducible)")
    g.add_argument("--quick", action="store_true", help="a very short run (CI smoke test): 20 steps on 60 scenes")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    aerial = "fine-tuning with --style aerial"
    g.add_argument("--lr", type=float, default=None, help=f"default {d.lr:g}; {AERIAL['lr']:g} {aerial}")
    g.add_argument("--warmup-steps", type=int, default=None, help=f"default {d.warmup_steps}; {AERIAL['warmup_steps']} {aerial}")
    g.add_argument(
        "--curriculum", type=float, default=None,
        help=f"share of the run (steps or minutes) on attribute expressions only (default {d.curriculum:g}; "
        f"{AERIAL['curriculum']:g} {aerial})",
    )
    g.add_argument("--kind-weights", type=_kind_weights, default={},
                   help="sampling weight per expression kind after the curriculum, e.g. relation=2 (others weigh 1; "
                   "default: every expression of an object equally likely)")
    g.add_argument("--image-size", type=int, default=None, help=f"default: the --init model's, else {d.image_size}")
    g.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help=f"stem stride: the mask comes out at 1/patch resolution (default: the --init model's, else {d.patch_size})",
    )
    g.add_argument("--embed-dim", type=int, default=None, help=f"default: the --init model's, else {d.embed_dim}")
    g.add_argument(
        "--depths", type=_ints, default=None, help=f"blocks per stage (default: the --init model's, else {','.join(map(str, d.depths))})"
    )
    g.add_argument("--num-heads", type=_ints, default=None, help=f"default: the --init model's, else {','.join(map(str, d.num_heads))}")
    g.add_argument("--window-size", type=int, default=None, help=f"default: the --init model's, else {d.window_size}")
    g.add_argument("--decoder-hidden", type=int, default=None, help=f"default: the --init model's, else {d.decoder_hidden}")
    g.add_argument("--pwam-norm", default=None, choices=["instance", "layer", "none"],
                   help=f"PWAM normalisation (official: instance; default: the --init model's, else {d.pwam_norm})")
    g.add_argument("--train-images", type=int, default=None, help=f"default {d.train_images}; {AERIAL['train_images']} {aerial}")
    g.add_argument("--data-seed", type=int, default=d.data_seed)
    g.add_argument("--train-seed", type=int, default=d.seed)
    g.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16"])
    g.add_argument("--init", type=Path, default=None, help="continue from this demo model folder instead of from scratch; the "
                   "architecture options default to its own (same widths; --patch-size may differ, the stem is resampled; "
                   "--depths may add blocks, which start as identities; default with --style aerial: the shipped model)")
    g.add_argument("--scratch", action="store_true",
                   help="with --style aerial: train from scratch instead of fine-tuning the shipped model")
    g.add_argument("--drop-path", type=float, default=d.drop_path_rate, help=f"stochastic depth rate (default {d.drop_path_rate})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: the library loads torch, which `lavt --help` must not wait for
    from lavt.demo.run import main

    main(
        args.out, train=args.train, model=args.model, seed=args.seed, images=args.images, precision=args.precision,
        quick=args.quick, steps=args.steps, minutes=args.minutes, init=args.init, generalized=args.generalized,
        style=args.style, scratch=args.scratch,
        recipe_options={field: getattr(args, dest) for dest, field in RECIPE_OPTIONS.items()},
    )
    return 0
