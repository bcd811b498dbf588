#!/usr/bin/env python
"""The best oIoU a mask predicted at 1/k of the input can reach on generated scenes.

The true masks are averaged down to the decoder's output grid, upsampled bilinearly as the model
upsamples its logits, thresholded at one half and scored at 128 x 128 (the demo's protocol):

    python benchmarks/demo_resolution_cap.py --images 80 --seed 777
"""
from __future__ import annotations

import argparse
import tempfile

import torch.nn.functional as F

from lavt.data.synthref import generate
from lavt.demo.scenes import load_scenes
from lavt.metrics import ReferringMetrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=80)
    p.add_argument("--seed", type=int, default=777)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, seed=args.seed, num_images=args.images, image_size=(128, 192), overwrite=True)
        truth = load_scenes(tmp, None, 128).masks
        for size in (128, 192):
            masks = load_scenes(tmp, None, size).masks.float()[:, None]
            for stride in (4, 2):
                low = F.avg_pool2d(masks, stride)
                up = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=True)
                pred = F.interpolate(up, size=(128, 128), mode="bilinear", align_corners=False)[:, 0] > 0.5
                m = ReferringMetrics()
                m.update_batch(pred, truth)
                print(f"input {size} px, mask at 1/{stride}: best oIoU {m.compute()['oIoU']:.1f}")


if __name__ == "__main__":
    main()
