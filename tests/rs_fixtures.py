"""Small remote-sensing datasets made in the tests: RRSIS-D's refer layout (RLE-list
segmentations, two images whose file size differs from their 40 x 40 masks) and RefSegRS's
folder layout (RGB and five-band TIFF tiles, 0/255 masks, phrase files)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils

RRSISD_SIDE = 40  # the "800 x 800" every RLE of the fixture says
# image_id -> (split, file height, file width, object box x0, y0, x1, y1 in the 40 x 40 mask)
RRSISD_IMAGES = {
    1: ("train", 40, 40, 2, 3, 12, 9),
    2: ("train", 37, 40, 5, 30, 15, 40),  # the file lost three rows: the mask is cropped
    3: ("train", 40, 40, 20, 20, 30, 28),
    4: ("train", 40, 40, 0, 0, 8, 8),
    5: ("val", 41, 40, 10, 32, 20, 40),  # the file has one row more: the mask is padded
    6: ("val", 40, 40, 4, 4, 16, 16),
    7: ("test", 40, 40, 24, 6, 36, 14),
    8: ("test", 40, 40, 6, 22, 14, 34),
}
RRSISD_TEXT = {i: f"the {w} vehicle" for i, w in zip(RRSISD_IMAGES, ["red", "long", "white", "small", "grey", "blue", "dark", "last"])}


def rrsisd_drawn_mask(image_id: int) -> np.ndarray:
    """The 40 x 40 mask an RLE of the fixture encodes."""
    _, _, _, x0, y0, x1, y1 = RRSISD_IMAGES[image_id]
    mask = np.zeros((RRSISD_SIDE, RRSISD_SIDE), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def rrsisd_expected_mask(image_id: int) -> np.ndarray:
    """The mask at the file's size: cropped or zero-padded at the bottom/right, by hand."""
    _, h, w, *_ = RRSISD_IMAGES[image_id]
    drawn = rrsisd_drawn_mask(image_id)
    out = np.zeros((h, w), dtype=np.uint8)
    out[: min(h, RRSISD_SIDE), : min(w, RRSISD_SIDE)] = drawn[:h, :w]
    return out


def build_rrsisd(root: Path) -> Path:
    """`root/rrsisd/refs(unc).p`, `instances.json` with [RLE] segmentations, JPEGs under images/rrsisd/JPEGImages."""
    images = root / "images/rrsisd/JPEGImages"
    images.mkdir(parents=True, exist_ok=True)
    (root / "rrsisd").mkdir(parents=True, exist_ok=True)
    refs, infos, anns = [], [], []
    for image_id, (split, h, w, *_) in RRSISD_IMAGES.items():
        name = f"{image_id:05d}.jpg"
        Image.new("RGB", (w, h), (30 * image_id, 120, 200 - 20 * image_id)).save(images / name, quality=95)
        rle = mask_utils.encode(np.asfortranarray(rrsisd_drawn_mask(image_id)))
        rle["counts"] = rle["counts"].decode("ascii")  # as in the published instances.json
        infos.append({"id": image_id, "file_name": name, "height": RRSISD_SIDE, "width": RRSISD_SIDE})
        anns.append({"id": 100 + image_id, "image_id": image_id, "category_id": 1, "segmentation": [rle], "iscrowd": 0})
        raw = RRSISD_TEXT[image_id]
        refs.append({"ref_id": image_id, "ann_id": 100 + image_id, "image_id": image_id, "category_id": 1, "split": split,
                     "file_name": name, "sent_ids": [image_id],
                     "sentences": [{"sent_id": image_id, "raw": raw, "sent": raw, "tokens": raw.split()}]})
    instances = {"images": infos, "annotations": anns, "categories": [{"id": 1, "name": "vehicle"}]}
    (root / "rrsisd/instances.json").write_text(json.dumps(instances))
    (root / "rrsisd/refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


# RefSegRS: id -> (split lines, object box x0, y0, x1, y1); tiles are 32 x 32. Tile "t03" has five bands.
REFSEGRS_SIDE = 32
REFSEGRS_TILES = {
    "t01": (4, 4, 12, 20),
    "t02": (16, 2, 30, 10),
    "t03": (0, 20, 10, 32),
    "t04": (10, 10, 22, 22),
    "t05": (2, 24, 30, 30),
    "t06": (20, 16, 28, 30),
}
REFSEGRS_LINES = {
    "train": ["t01 road along the river", "t02 the long building", "t03 trees at the lower left", "t01 the road",
              "t04 parking lot in the middle"],
    "val": ["t05 the lane at the bottom"],
    "test": ["t06 the car on the right"],
}
MULTIBAND = "t03"


def refsegrs_mask(name: str) -> np.ndarray:
    x0, y0, x1, y1 = REFSEGRS_TILES[name]
    mask = np.zeros((REFSEGRS_SIDE, REFSEGRS_SIDE), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def refsegrs_bands(name: str) -> np.ndarray:
    """The tile's pixels: (32, 32, 3), or (32, 32, 5) for the multi-band one; distinct per band."""
    bands = 5 if name == MULTIBAND else 3
    yy, xx = np.mgrid[0:REFSEGRS_SIDE, 0:REFSEGRS_SIDE]
    return np.stack([(xx * 7 + yy * 3 + 40 * b + int(name[1:]) * 11) % 256 for b in range(bands)], axis=-1).astype(np.uint8)


def build_refsegrs(root: Path, lines: dict[str, list[str]] | None = None, folder: str = "RefSegRS") -> Path:
    """`root/RefSegRS/{images,masks}/<id>.tif` and `output_phrase_<split>.txt`."""
    base = root / folder
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    for name in REFSEGRS_TILES:
        pixels = refsegrs_bands(name)
        if pixels.shape[-1] == 3:
            Image.fromarray(pixels, "RGB").save(base / "images" / f"{name}.tif")
        else:
            tifffile.imwrite(base / "images" / f"{name}.tif", pixels, photometric="rgb", extrasamples=["unspecified"] * 2)
        Image.fromarray(refsegrs_mask(name) * 255, "L").save(base / "masks" / f"{name}.tif")
    for split, rows in (lines or REFSEGRS_LINES).items():
        (base / f"output_phrase_{split}.txt").write_text("\n".join(rows) + "\n")
    return root
