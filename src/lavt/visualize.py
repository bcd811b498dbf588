"""Pictures for people: masks over images, legends, captions and training curves.

One module for every picture the project draws (`lavt predict`, `lavt evaluate --overlays`,
`lavt demo`, the web page, `lavt data view`), so that a mask looks the same everywhere.
Images are PIL RGB images; masks are bool numpy arrays of the image's (H, W).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

# Distinct, colour-blind-friendly colours (Okabe-Ito first), then more hues for many masks.
PALETTE: tuple[RGB, ...] = (
    (230, 25, 75),
    (0, 114, 178),
    (240, 228, 66),
    (0, 158, 115),
    (213, 94, 0),
    (204, 121, 167),
    (86, 180, 233),
    (230, 159, 0),
    (145, 30, 180),
    (70, 240, 240),
    (210, 245, 60),
    (128, 128, 0),
)
GT_COLOUR: RGB = (0, 200, 0)
PRED_COLOUR: RGB = (230, 30, 30)
LINE_HEIGHT = 14


def colour(index: int) -> RGB:
    """The palette colour of the index-th mask (cycling past the palette's end)."""
    return PALETTE[index % len(PALETTE)]


def contour(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """The inner border of a bool mask, `width` pixels wide (default: 1/160 of the short side)."""
    m = np.asarray(mask, dtype=bool)
    width = max(1, round(min(m.shape) / 160)) if width is None else width
    eroded = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(2 * width + 1))) > 0
    return m & ~eroded


def overlay(
    image: Image.Image,
    mask: np.ndarray,
    color: RGB = PRED_COLOUR,
    alpha: float = 0.45,
    outline: bool = True,
) -> Image.Image:
    """The image with one mask tinted in `color` and (by default) its contour drawn."""
    return overlay_masks(image, [mask], [color], alpha=alpha, outline=outline)


def overlay_masks(
    image: Image.Image,
    masks: Sequence[np.ndarray],
    colors: Sequence[RGB] | None = None,
    alpha: float = 0.45,
    outline: bool = True,
) -> Image.Image:
    """The image with every mask tinted in its colour (palette order by default), later masks
    drawn over earlier ones, each with its contour."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base.copy()
    colors = [colour(i) for i in range(len(masks))] if colors is None else list(colors)
    if len(colors) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(colors)} colours")
    for mask, c in zip(masks, colors):
        m = np.asarray(mask, dtype=bool)
        if m.shape != base.shape[:2]:
            raise ValueError(f"mask of shape {m.shape} does not match the image's {base.shape[:2]}")
        rgb = np.array(c, dtype=np.float32)
        out[m] = (1 - alpha) * base[m] + alpha * rgb
        if outline:
            out[contour(m)] = rgb
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def compare(image: Image.Image, pred: np.ndarray, gt: np.ndarray) -> Image.Image:
    """Prediction against ground truth on a darkened image: ground truth only in green,
    prediction only in red, both in yellow."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32) * 0.5
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    base[g & ~p] += np.array([0, 110, 0])
    base[p & ~g] += np.array([120, 0, 0])
    base[p & g] += np.array([110, 110, 0])
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def enlarge(image: Image.Image, min_width: int) -> Image.Image:
    """Scale a small image up by an integer factor (nearest) until it is `min_width` wide."""
    scale = max(1, -(-min_width // image.width))
    return image if scale == 1 else image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def caption(
    image: Image.Image,
    lines: Sequence[str],
    colors: Sequence[RGB] | None = None,
    background: RGB = (0, 0, 0),
    foreground: RGB = (255, 255, 255),
    wrap: bool = True,
) -> Image.Image:
    """The image with a strip of text lines underneath; `colors` gives each line a swatch
    (a legend). Long lines are wrapped to the image width."""
    chars = max(16, image.width // 7)
    rows: list[tuple[str, RGB | None]] = []
    for i, line in enumerate(lines):
        swatch = colors[i] if colors is not None else None
        parts = textwrap.wrap(line, width=chars - (3 if swatch else 0)) if wrap else [line]
        for k, part in enumerate(parts or [""]):
            rows.append((part, swatch if k == 0 else None))
    canvas = Image.new("RGB", (image.width, image.height + LINE_HEIGHT * len(rows) + 6), background)
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    indent = 14 if colors is not None else 0
    for i, (text, swatch) in enumerate(rows):
        y = image.height + 3 + LINE_HEIGHT * i
        if swatch is not None:
            draw.rectangle((4, y + 2, 12, y + 10), fill=swatch)
        draw.text((4 + indent, y), text, fill=foreground)
    return canvas


def annotate(
    image: Image.Image,
    masks: Sequence[np.ndarray],
    labels: Sequence[str],
    alpha: float = 0.45,
    min_width: int = 320,
) -> Image.Image:
    """One colour per mask over the image, and a legend underneath naming each label in its
    colour: what the web page and `lavt predict` show for several expressions at once."""
    if len(masks) != len(labels):
        raise ValueError(f"{len(masks)} masks but {len(labels)} labels")
    colors = [colour(i) for i in range(len(masks))]
    tinted = overlay_masks(image, masks, colors, alpha=alpha)
    scaled = enlarge(tinted, min_width)
    return caption(scaled, list(labels), colors=colors, background=(255, 255, 255), foreground=(0, 0, 0))


def side_by_side(panels: Sequence[Image.Image], gap: int = 0, background: RGB = (255, 255, 255)) -> Image.Image:
    """Panels in a row, top-aligned."""
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in panels)), background)
    x = 0
    for p in panels:
        canvas.paste(p.convert("RGB"), (x, 0))
        x += p.width + gap
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG through a temporary name, so no half-written picture is ever left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
