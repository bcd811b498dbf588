"""Pictures for people: masks over images, legends, captions and training curves.

One module for every picture the project draws (`lavt predict`, `lavt evaluate --overlays`,
`lavt demo`, the web page, `lavt data view`), so that a mask looks the same everywhere.
Images are PIL RGB images; masks are bool numpy arrays of the image's (H, W).
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

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


def spotlight(image: Image.Image, mask: np.ndarray, color: RGB = GT_COLOUR, dim: float = 0.45,
              alpha: float = 0.35) -> Image.Image:
    """The image darkened to `dim` outside the mask and the mask tinted with its contour, so
    one object stands out whatever its own colour (the tiles of `lavt data view`)."""
    m = np.asarray(mask, dtype=bool)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if m.shape != pixels.shape[:2]:
        raise ValueError(f"mask of shape {m.shape} does not match the image's {pixels.shape[:2]}")
    pixels[~m] *= dim
    return overlay(Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)), m, color=color, alpha=alpha)


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
    return _with_legend(overlay_masks, image, masks, labels, alpha, min_width)


def _with_legend(tint, image: Image.Image, maps: Sequence[np.ndarray], labels: Sequence[str], alpha: float,
                 min_width: int) -> Image.Image:
    """`tint(image, maps, colours, alpha=...)` in palette order, enlarged to `min_width`, with
    the legend strip naming each label in its colour underneath."""
    if len(maps) != len(labels):
        raise ValueError(f"{len(maps)} masks or maps but {len(labels)} labels")
    colors = [colour(i) for i in range(len(labels))]
    tinted = enlarge(tint(image, maps, colors, alpha=alpha), min_width)
    return caption(tinted, list(labels), colors=colors, background=(255, 255, 255), foreground=(0, 0, 0))


def overlay_probabilities(
    image: Image.Image,
    probabilities: Sequence[np.ndarray],
    colors: Sequence[RGB] | None = None,
    alpha: float = 0.7,
) -> Image.Image:
    """Every probability map tinted in its colour with opacity `alpha * P(object)` per pixel
    (later maps over earlier ones): the model's confidence before the 0.5 threshold, so a
    hesitant mask shows as a faint tint where a confident one is solid."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base.copy()
    colors = [colour(i) for i in range(len(probabilities))] if colors is None else list(colors)
    if len(colors) != len(probabilities):
        raise ValueError(f"{len(probabilities)} probability maps but {len(colors)} colours")
    for prob, c in zip(probabilities, colors):
        p = np.asarray(prob, dtype=np.float32)
        if p.shape != base.shape[:2]:
            raise ValueError(f"probability map of shape {p.shape} does not match the image's {base.shape[:2]}")
        a = (alpha * np.clip(p, 0.0, 1.0))[:, :, None]
        out = (1 - a) * out + a * np.array(c, dtype=np.float32)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def annotate_probabilities(
    image: Image.Image,
    probabilities: Sequence[np.ndarray],
    labels: Sequence[str],
    alpha: float = 0.7,
    min_width: int = 320,
) -> Image.Image:
    """`annotate` for probability maps: the same colours and legend, each expression's
    P(object) as the opacity of its colour (the web page's probability view)."""
    return _with_legend(overlay_probabilities, image, probabilities, labels, alpha, min_width)


def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool mask as a 1-bit image (white = object), the form masks are saved in."""
    return Image.fromarray(np.asarray(mask, dtype=bool))


def side_by_side(panels: Sequence[Image.Image], gap: int = 0, background: RGB = (255, 255, 255)) -> Image.Image:
    """Panels in a row, top-aligned."""
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in panels)), background)
    x = 0
    for p in panels:
        canvas.paste(p.convert("RGB"), (x, 0))
        x += p.width + gap
    return canvas


def grid(panels: Sequence[Image.Image], columns: int, gap: int = 4, background: RGB = (255, 255, 255)) -> Image.Image:
    """Panels in rows of `columns`, each top-left in a cell as wide as the widest panel and as
    tall as the tallest of its row (a contact sheet)."""
    if not panels:
        raise ValueError("no panels to arrange")
    columns = max(1, min(int(columns), len(panels)))
    rows = [panels[i : i + columns] for i in range(0, len(panels), columns)]
    cell = max(p.width for p in panels)
    heights = [max(p.height for p in row) for row in rows]
    canvas = Image.new("RGB", (columns * cell + (columns + 1) * gap, sum(heights) + (len(rows) + 1) * gap), background)
    y = gap
    for row, height in zip(rows, heights):
        for k, p in enumerate(row):
            canvas.paste(p.convert("RGB"), (gap + k * (cell + gap), y))
        y += height + gap
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG through a temporary name, so no half-written picture is ever left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_training(
    path: str | Path,
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    lrs: Sequence[float] | None = None,
    validation: dict[int, dict[str, float]] | None = None,
    loss_label: str = "training loss",
    title: str | None = None,
) -> Path:
    """Training curves as a PNG: the loss against the optimiser step (with its running mean
    over 1/50 of the run once there are 100 points), then the learning rate when `lrs` is
    given, then validation oIoU/mIoU per epoch when `validation` ({epoch: scores}) is given.
    `lavt train`'s curves.png and `lavt demo --train`'s training_curve.png."""
    # matplotlib is imported only here, when a curve is drawn: it is slow to import, and
    # every other picture in this module needs only PIL.
    from matplotlib.figure import Figure

    panels = 1 + (lrs is not None) + (validation is not None)
    fig = Figure(figsize=(5 * panels, 3.6))
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    loss = np.asarray(losses, dtype=np.float64)
    ax = axes.pop(0)
    k = len(loss) // 50
    if k >= 2:
        ax.plot(steps, loss, alpha=0.3, lw=1, label="loss")
        ax.plot(list(steps)[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
        ax.legend()
    else:
        ax.plot(steps, loss, lw=1)
    ax.set(xlabel="optimiser step", ylabel=loss_label, title="loss")
    if lrs is not None:
        ax = axes.pop(0)
        ax.plot(steps, lrs)
        ax.set(xlabel="optimiser step", ylabel="learning rate", title="schedule")
    if validation is not None:
        ax = axes.pop(0)
        epochs = sorted(validation)
        if epochs:
            for key in ("oIoU", "mIoU"):
                ax.plot(epochs, [validation[e].get(key, float("nan")) for e in epochs], marker="o", label=key)
            ax.legend()
        ax.set(xlabel="epoch", ylabel="%", title="validation")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(path)
    return path
