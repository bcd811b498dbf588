"""Run under `torchrun --nproc_per_node 2` by test_engine_train.py (gloo, CPU).

argv[1] is a JSON file: {"data_root", "text_dir", "out", "eval_model", "eval_json"}. Trains
two optimiser steps of total batch 4 (2 per process), then evaluates `eval_model` with the
expressions sharded over the processes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)


def main() -> None:
    from helpers import tiny_train_config
    from lavt.engine.config import EvalConfig
    from lavt.engine.distributed import cleanup, init_distributed
    from lavt.engine.evaluate import evaluate
    from lavt.engine.train import train

    args = json.loads(Path(sys.argv[1]).read_text())
    # One process group for both calls (a gloo group cannot be re-created under torchrun).
    env = init_distributed("cpu")
    assert env.world_size == 2 and env.backend == "gloo"
    cfg = tiny_train_config(
        Path(args["data_root"]), Path(args["text_dir"]), Path(args["out"]), steps_per_epoch=1, val_split=None, device="cpu"
    )
    train(cfg)
    print(f"rank {env.rank}: trained", flush=True)
    evaluate(
        EvalConfig(
            checkpoint=args["eval_model"], data_root=args["data_root"], dataset="synthref", split="val",
            json=args["eval_json"], per_expression=args["eval_json"] + "l", num_workers=0, progress=False, device="cpu",
        )
    )
    print(f"rank {env.rank}: evaluated", flush=True)
    cleanup(env)
    print(f"rank {env.rank}: cleaned up", flush=True)


if __name__ == "__main__":
    main()
