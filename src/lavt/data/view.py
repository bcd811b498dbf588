"""`lavt data view`: a contact sheet (and a static HTML page) of a referring dataset's samples.

Each sample is one ref: its image with the object's mask overlaid, the expressions under it,
and the split, ref, image and annotation ids, so a wrong import (a mask on the wrong image,
shifted or empty masks, expressions of another object) shows at a glance. Works on any
dataset `open_refer` reads (RefCOCO family, synthref, imported sets, and the generalised
gRefCOCO layout, where a ref may name several objects or none).
"""
from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lavt import visualize
from lavt.data.grefcoco import open_refer
from lavt.data.refer import Refer
from lavt.errors import LAVTUserError

TILE_BACKGROUND = (235, 235, 235)


@dataclass
class Sample:
    """One ref drawn: ids, texts and the overlaid picture (without caption)."""

    ref_id: int
    image_id: int
    ann_ids: list[int]  # the target objects: one, several, or none (generalised datasets)
    split: str
    category: str
    expressions: list[str]
    picture: Image.Image

    def label(self) -> str:
        targets = " | no target" if not self.ann_ids else f" | {len(self.ann_ids)} targets" if len(self.ann_ids) > 1 else ""
        return f"{self.split} | ref {self.ref_id} | image {self.image_id}{targets}"


def choose_refs(refer: Refer, split: str | None, num: int, seed: int = 0) -> list[int]:
    """`num` ref ids of `split` (None: all), drawn without replacement by `seed`, in file order."""
    if num < 1:
        raise LAVTUserError(f"--num must be at least 1, got {num}")
    ids = refer.ref_ids(split)
    if num >= len(ids):
        return ids
    picked = np.random.default_rng(int(seed)).choice(len(ids), size=num, replace=False)
    return [ids[i] for i in sorted(int(i) for i in picked)]


def draw_sample(refer: Refer, ref_id: int, size: int) -> Sample:
    """The ref's image scaled to fit `size` x `size` with its mask overlaid, centred on a grey
    square; a missing or unreadable image or mask gives a grey square with a warning."""
    ref = refer.refs[int(ref_id)]
    try:
        square = _picture(refer, ref, size)
    except LAVTUserError as exc:
        warnings.warn(f"ref {ref_id}: {exc}", stacklevel=2)
        square = Image.new("RGB", (size, size), TILE_BACKGROUND)
        ImageDraw.Draw(square).text((4, 4), "unreadable", fill=(200, 0, 0))
    generalized = getattr(refer, "generalized", False)
    ann_ids = refer.target_ann_ids(ref_id) if generalized else [int(ref["ann_id"])]
    category_ids = ref.get("category_id", [])
    category_ids = category_ids if isinstance(category_ids, list) else [category_ids]
    return Sample(
        ref_id=int(ref_id), image_id=int(ref["image_id"]), ann_ids=ann_ids, split=str(ref["split"]),
        category=", ".join(dict.fromkeys(refer.categories[int(c)] for c in category_ids if int(c) in refer.categories)),
        expressions=[str(s["raw"]) for s in ref["sentences"]], picture=square,
    )


def _picture(refer: Refer, ref: dict, size: int) -> Image.Image:
    image = refer.load_image(int(ref["image_id"]))
    mask = refer.mask(int(ref["ref_id"])).astype(bool)
    scale = size / max(image.width, image.height)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.resize(shape, Image.BILINEAR)
    small_mask = np.asarray(Image.fromarray(mask).resize(shape, Image.NEAREST), dtype=bool)
    tinted = visualize.spotlight(small, small_mask)
    square = Image.new("RGB", (size, size), TILE_BACKGROUND)
    square.paste(tinted, ((size - shape[0]) // 2, (size - shape[1]) // 2))
    return square


def tile(sample: Sample, max_expressions: int = 2) -> Image.Image:
    """The sample's picture with its first expressions and its ids written underneath."""
    shown = [f'"{e}"' for e in sample.expressions[:max_expressions]]
    extra = len(sample.expressions) - len(shown)
    if extra > 0:
        shown.append(f"(+{extra} more)")
    return visualize.caption(sample.picture, shown + [sample.label()], background=(255, 255, 255), foreground=(0, 0, 0))


def contact_sheet(samples: list[Sample], columns: int = 6) -> Image.Image:
    """Every sample as a captioned tile, in rows of `columns`."""
    return visualize.grid([tile(s) for s in samples], columns, gap=6)


def write_html(samples: list[Sample], folder: str | Path, title: str) -> Path:
    """`folder/index.html` with one figure per sample (all expressions, split, ids) and its
    picture in `folder/samples/`; static files, open the page in a browser."""
    folder = Path(folder)
    figures = []
    for s in samples:
        picture = visualize.save_png(s.picture, folder / "samples" / f"ref_{s.ref_id}.png")
        items = "".join(f"<li>{html.escape(e)}</li>" for e in s.expressions)
        category = f" | {html.escape(s.category)}" if s.category else ""
        anns = f" | ann {', '.join(map(str, s.ann_ids))}" if s.ann_ids else ""
        figures.append(
            f'<figure><img src="samples/{picture.name}" alt="ref {s.ref_id}"><figcaption><ul>{items}</ul>'
            f"<small>{html.escape(s.label())}{anns}{category}</small></figcaption></figure>"
        )
    page = (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>"
        "body{{font-family:sans-serif;margin:1em}}main{{display:flex;flex-wrap:wrap;gap:12px}}"
        "figure{{margin:0;width:{w}px}}figcaption ul{{margin:4px 0;padding-left:1.2em}}small{{color:#555}}"
        "</style></head><body><h1>{t}</h1><p>{n} samples; each mask is tinted green, the rest of its image darkened.</p>"
        "<main>\n{f}\n</main></body></html>\n"
    ).format(t=html.escape(title), w=samples[0].picture.width if samples else 0, n=len(samples), f="\n".join(figures))
    path = folder / "index.html"
    tmp = folder / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def view_dataset(
    root: str | Path,
    dataset: str,
    split_by: str = "unc",
    *,
    split: str | None = None,
    num: int = 24,
    seed: int = 0,
    columns: int = 6,
    size: int = 160,
    out: str | Path | None = None,
    html_dir: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> list[Path]:
    """Draw `num` samples of the dataset into a contact sheet PNG (`out`) and/or an HTML page
    (`html_dir`); returns the files written."""
    if out is None and html_dir is None:
        raise LAVTUserError("nothing to write: pass --out sheet.png, --html DIR, or both")
    if size < 32:
        raise LAVTUserError(f"--tile must be at least 32 pixels, got {size}")
    refer = open_refer(root, dataset, split_by, image_dir=image_dir)
    samples = [draw_sample(refer, ref_id, size) for ref_id in choose_refs(refer, split, num, seed)]
    written = []
    if out is not None:
        written.append(visualize.save_png(contact_sheet(samples, columns), out))
    if html_dir is not None:
        title = f"{dataset} ({split_by})" + (f", split {split}" if split else "")
        written.append(write_html(samples, html_dir, title))
    return written
