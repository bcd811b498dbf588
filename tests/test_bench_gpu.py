"""benchmarks/bench_gpu.py runs end to end (here on the CPU, our side only, a tiny model), so
the GPU comparison works when a GPU is lent; and says so in one line where CUDA is missing."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_run_on_cpu_writes_every_measurement(bench, tmp_path):
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--preset", "tiny", "--size", "64", "--bert-layers", "1", "--batch", "2"]
    argv += ["--train-batch", "1", "--warmup", "0", "--repeats", "1", "--train-steps", "2", "--json", str(out)]
    assert bench.main(argv) == 0
    res = json.loads(out.read_text())
    inf = res["inference"]
    assert set(inf) == {"ours_fp32", "ours_bf16"}
    assert 0 < inf["ours_bf16"]["mean_abs_diff_over_std"] < 0.05  # autocast really ran
    train = res["train"]
    assert set(train) == {"ours_fp32", "ours_bf16"}
    # both precisions train the same model on the same batch: their first losses agree to bf16
    first = [train[k]["losses"][0] for k in ("ours_fp32", "ours_bf16")]
    assert abs(first[0] - first[1]) < 0.02 and first[0] != first[1], first
    for r in train.values():
        assert len(r["steps"]) == 2 and len(r["losses"]) == 2
        assert all(l == l and l > 0 for l in r["losses"])  # finite, positive cross-entropy


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_missing_cuda_is_one_clear_line(bench, capsys):
    assert bench.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: no CUDA device here (use --device cpu for a smoke run)"
