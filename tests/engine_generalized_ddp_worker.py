"""Run under `torchrun --nproc_per_node 2` by test_engine_generalized.py (gloo, CPU).

argv[1] is a JSON file: {"data_root", "text_dir", "init_from", "out", "eval_json", "pick_json"}. Trains
the no-target head for two optimiser steps of total batch 4 (2 per process) and validates, then evaluates the
result and picks an area threshold with the expressions sharded over the processes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)


def main() -> None:
    from helpers import TINY_MODEL, tiny_train_config
    from lavt.engine.config import EvalConfig
    from lavt.engine.distributed import cleanup, init_distributed
    from lavt.engine.evaluate import evaluate
    from lavt.engine.train import train

    args = json.loads(Path(sys.argv[1]).read_text())
    env = init_distributed("cpu")  # one process group for every call
    assert env.world_size == 2 and env.backend == "gloo"
    train(tiny_train_config(
        Path(args["data_root"]), Path(args["text_dir"]), Path(args["out"]), dataset="synthgref", epochs=1, steps_per_epoch=2,
        val_max_images=2, max_images=12, device="cpu", init_from=args["init_from"],
        model_overrides={**TINY_MODEL, "no_target": "head"}, no_target_loss_weight=1.0,
    ))
    common = dict(data_root=args["data_root"], dataset="synthgref", split="val", num_workers=0, progress=False, device="cpu")
    evaluate(EvalConfig(checkpoint=str(Path(args["out"]) / "model_last"), json=args["eval_json"], **common))
    evaluate(EvalConfig(checkpoint=args["init_from"], json=args["pick_json"], no_target="area", pick_no_target_threshold=True, **common))
    print(f"rank {env.rank}: done", flush=True)
    cleanup(env)


if __name__ == "__main__":
    main()
