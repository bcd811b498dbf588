"""Float32 inference at the paper's setting: official vs ours with and without the Winograd
decoder, one run, alternating (usage: bench_winograd_inference.py /path/to/LAVT-RIS)."""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model as bm  # noqa: E402
import lavt  # noqa: E402
from lavt.ops import winograd as W  # noqa: E402

torch.set_num_threads(2)
args = argparse.Namespace(preset="base", window=12, size=480, tokens=20, bert_layers=12, seed=0, official=sys.argv[1], train_batch=2)
cfg = bm.make_config(args)
mods = bm.import_official(args.official)
off = bm.build_official(mods, cfg).eval()
bert = bm.build_bert(cfg.text_encoder).eval()
bm.randomize_(off, 0)
bm.randomize_(bert, 0)
ours = lavt.load_official({"model": off.state_dict(), "bert_model": bert.state_dict()}).eval()
image, ids, mask = bm.make_inputs(1, 480, 20, seed=1)
orig = W.MIN_CHANNELS  # raised past every width: the fast path with direct convolutions


def ours_w():
    W.MIN_CHANNELS = orig
    return ours(image, ids, mask)


def ours_d():
    W.MIN_CHANNELS = 1 << 30
    return ours(image, ids, mask)


def offi():
    return bm.official_forward(off, bert, image, ids, mask)


with torch.inference_mode():
    ref, a, b = offi(), ours_w(), ours_d()
    print(f"max abs vs official: winograd {(a - ref).abs().max():.2e} direct {(b - ref).abs().max():.2e}")
    wall, _ = bm.time_alternating({"official": offi, "ours_winograd": ours_w, "ours_direct": ours_d}, repeats=5)
med = {k: statistics.median(v) for k, v in wall.items()}
print({k: round(v, 3) for k, v in med.items()}, "ratios vs official:", {k: round(med["official"] / v, 3) for k, v in med.items()})
