"""`lavt train`: parse options into a TrainConfig and call `lavt.engine.train.train`.

Works the same in one process and under `torchrun --nproc_per_node N -m lavt train ...`.
"""
from __future__ import annotations

import argparse
import os

# option -> TrainConfig key, for the options common enough to deserve a flag
FLAGS: dict[str, tuple[str, type | None, str]] = {
    "--data-root": ("data_root", str, "refer-format data folder (holds <dataset>/refs(...).p)"),
    "--dataset": ("dataset", str, "refcoco, refcoco+, refcocog, synthref, grefcoco, rrsisd, refsegrs, synthrs ... (default refcoco)"),
    "--image-root": ("image_dir", str, "image folder when not the dataset's standard one"),
    "--split-by": ("split_by", str, "partition: unc (default), umd for refcocog, google"),
    "--output-dir": ("output_dir", str, "run folder: checkpoint.pt, model_best/, log.jsonl, curves.png"),
    "--model": ("model", str, "Swin size: tiny, small, base (default), large"),
    "--text-encoder": ("text_encoder", str, "local BERT folder (default: the packaged MiniLM)"),
    "--pretrained-backbone": ("pretrained_backbone", str, "Microsoft Swin checkpoint, e.g. swin_base_patch4_window12_384_22k.pth"),
    "--init-from": ("init_from", str, "start from saved LAVT weights (folder or checkpoint)"),
    "--epochs": ("epochs", int, "epochs (paper: 40)"),
    "--batch-size": ("batch_size", int, "total batch per optimiser step over all processes (paper: 32)"),
    "--micro-batch-size": ("micro_batch_size", int, "samples per forward per process; the rest is gradient accumulation"),
    "--lr": ("lr", float, "learning rate (paper: 5e-5)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay (paper: 0.01)"),
    "--loss": ("loss", str, "ce (paper), dice or ce+dice"),
    "--image-size": ("image_size", int, "square input side (paper: 480)"),
    "--precision": ("precision", str, "fp32 (default), bf16, or fp16 (CUDA)"),
    "--device": ("device", str, "auto (default), cpu, cuda, cuda:N"),
    "--workers": ("num_workers", int, "data-loading worker processes per training process"),
    "--seed": ("seed", int, "seed for initialisation, shuffling and expression sampling"),
    "--resume": ("resume", str, "checkpoint.pt or run folder to continue, or 'auto'"),
    "--max-images": ("max_images", int, "use only the first N training images (quick runs)"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train LAVT (official recipe by default; one process or torchrun)",
        description="Train LAVT. Values come from --preset, then --config FILE, then the flags and --set key=value.",
    )
    p.add_argument("--config", help="YAML or JSON file with TrainConfig keys")
    p.add_argument("--preset", help="paper (default: the official recipe), debug (tiny, seconds on a CPU), "
                                    "rrsisd or refsegrs (the remote-sensing benchmarks' published recipes)")
    for flag, (key, typ, help_) in FLAGS.items():
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)
    p.add_argument("--activation-checkpointing", dest="activation_checkpointing", action="store_true", default=None,
                   help="recompute Swin blocks in the backward pass to save memory")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    p.add_argument("--tensorboard", dest="tensorboard", action="store_true", default=None, help="also log to TensorBoard (if installed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig key, e.g. --set lr_decoder=1e-4 --set model_overrides.window_size=12 "
                        "(--set model_overrides.no_target=head: learn no-target expressions)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: the library loads torch, which `lavt --help` must not wait for
    import yaml

    from lavt.engine.config import load_train_config, parse_overrides
    from lavt.engine.train import train

    overrides = parse_overrides(args.overrides)
    keys = [key for key, _, _ in FLAGS.values()] + ["activation_checkpointing", "progress", "tensorboard"]
    overrides.update({k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    config = load_train_config(args.config, overrides, preset=args.preset, check_paths=not args.print_config)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    result = train(config)  # a diverged run raises TrainingDiverged, a user error: one `error:` line, exit 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = result.best
    score = f"best val {best['metric']} {best['score']:.2f} (epoch {best['epoch']})" if best.get("score") is not None else "no validation"
    print(f"trained {result.epochs_completed} epoch(s), {result.global_step} steps, {score}; outputs in {result.output_dir}")
    return 0
