"""Top-down aerial scenes for `synthrs`: roads, vehicles, buildings, storage tanks, trees, courts.

A scene is a textured ground (grass or soil) crossed by zero to two roads, with many small,
densely placed objects: vehicles as small oriented rectangles (most parked in rows along a
road), buildings as rectangles or L-shaped polygons with a shadow, storage tanks as circles
(often in a cluster), trees as textured blobs and at most one tennis court. Objects never
overlap, so each object's mask is exactly what is drawn. Every draw comes from the RNG
given, so a seed gives the same scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES: dict[str, int] = {"vehicle": 1, "building": 2, "storage tank": 3, "tree": 4, "tennis court": 5}
VEHICLE_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (232, 232, 228), "red": (180, 40, 35), "black": (35, 35, 40), "blue": (45, 80, 170),
}
ROOF_COLOURS: dict[str, tuple[int, int, int]] = {"grey": (140, 140, 145), "red": (165, 75, 60), "white": (225, 222, 215)}


@dataclass
class AerialObject:
    """One object: its category, colour word ('' when colour does not name it), outline polygon(s)."""

    category: str
    colour: str
    polygons: list[list[tuple[float, float]]]
    fill: tuple[int, int, int]
    mask: np.ndarray | None = None  # bool (H, W), set by `render`
    # (mask, area, centre) of the mask last measured: the expression checks read area and
    # centre thousands of times per scene
    _measured: tuple | None = field(default=None, repr=False, compare=False)

    def _measure(self) -> tuple[int, tuple[float, float]]:
        if self._measured is None or self._measured[0] is not self.mask:
            ys, xs = np.nonzero(self.mask)
            self._measured = (self.mask, int(len(xs)), (float(xs.mean()), float(ys.mean())) if len(xs) else (float("nan"),) * 2)
        return self._measured[1], self._measured[2]

    @property
    def area(self) -> int:
        return self._measure()[0] if self.mask is not None else 0

    @property
    def centre(self) -> tuple[float, float]:
        return self._measure()[1]

    def box(self) -> tuple[float, float, float, float]:
        xs = [x for p in self.polygons for x, _ in p]
        ys = [y for p in self.polygons for _, y in p]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class AerialScene:
    size: int
    ground: tuple[int, int, int]
    roads: list[tuple[str, float, float]]  # (axis 'h' or 'v', centre, width)
    objects: list[AerialObject]


def _rect(cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


def _circle(cx: float, cy: float, r: float, n: int = 20) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _free(box: tuple[float, float, float, float], taken: list[tuple[float, float, float, float]], size: int, gap: float) -> bool:
    x0, y0, x1, y1 = box
    if x0 < 1 or y0 < 1 or x1 > size - 2 or y1 > size - 2:
        return False
    return all(x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0 for a0, b0, a1, b1 in taken)


def _on_road(box: tuple[float, float, float, float], roads: list[tuple[str, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    for axis, centre, width in roads:
        lo, hi = (y0, y1) if axis == "h" else (x0, x1)
        if hi > centre - width / 2 and lo < centre + width / 2:
            return True
    return False


def sample_scene(rng: np.random.Generator, size: int) -> AerialScene:
    """A scene of `size` x `size` pixels; objects scale with the side."""
    u = size / 128.0
    ground = (int(rng.integers(95, 125)), int(rng.integers(110, 140)), int(rng.integers(70, 95))) if rng.random() < 0.6 else \
        (int(rng.integers(150, 180)), int(rng.integers(135, 160)), int(rng.integers(105, 130)))
    roads = []
    for axis in rng.permutation(["h", "v"])[: int(rng.integers(0, 3))]:
        roads.append((str(axis), float(rng.uniform(0.25, 0.75) * size), float(rng.uniform(9, 13) * u)))
    objects: list[AerialObject] = []
    taken: list[tuple[float, float, float, float]] = []

    def place(category: str, make, tries: int = 40, road: bool | None = False, gap: float = 2.0) -> AerialObject | None:
        for _ in range(tries):
            obj = make()
            box = obj.box()
            if _free(box, taken, size, gap * u) and (road is None or _on_road(box, roads) == road):
                taken.append(box)
                objects.append(obj)
                return obj
        return None

    def vehicle(cx: float, cy: float, angle: float) -> AerialObject:
        colour = str(rng.choice(list(VEHICLE_COLOURS)))
        w, h = rng.uniform(7.5, 9.5) * u, rng.uniform(3.8, 4.8) * u
        return AerialObject("vehicle", colour, [_rect(cx, cy, w, h, angle)], VEHICLE_COLOURS[colour])

    # parked rows along the roads, then a few vehicles anywhere
    for axis, centre, width in roads:
        for side in (-1, 1):
            if rng.random() < 0.35:
                continue
            offset = centre + side * (width / 2 + 4 * u)
            start, n = rng.uniform(0.05, 0.4) * size, int(rng.integers(2, 6))
            for k in range(n):
                along = start + k * rng.uniform(6.5, 9) * u
                cx, cy = (along, offset) if axis == "h" else (offset, along)
                angle = (math.pi / 2 if axis == "h" else 0.0) + rng.normal(0, 0.05)
                place("vehicle", lambda cx=cx, cy=cy, a=angle: vehicle(cx, cy, a), tries=1, road=None, gap=1.0)
    for _ in range(int(rng.integers(1, 4))):
        place("vehicle", lambda: vehicle(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0, math.pi)), road=None, gap=1.0)

    for _ in range(int(rng.integers(1, 4))):  # buildings: rectangles or L shapes, axis-aligned
        def building() -> AerialObject:
            colour = str(rng.choice(list(ROOF_COLOURS)))
            w, h = rng.uniform(14, 34) * u, rng.uniform(12, 28) * u
            x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            if rng.random() < 0.4:
                cw, ch = w * rng.uniform(0.35, 0.6), h * rng.uniform(0.35, 0.6)
                poly = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h - ch), (x0 + w - cw, y0 + h - ch), (x0 + w - cw, y0 + h), (x0, y0 + h)]
            else:
                poly = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
            return AerialObject("building", colour, [poly], ROOF_COLOURS[colour])
        place("building", building, gap=4.0)

    if rng.random() < 0.6:  # a cluster of storage tanks
        cx, cy = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size
        for _ in range(int(rng.integers(1, 5))):
            def tank(cx: float = cx, cy: float = cy) -> AerialObject:
                r = rng.uniform(4, 9) * u
                x, y = cx + rng.normal(0, 14 * u), cy + rng.normal(0, 14 * u)
                tone = int(rng.integers(200, 235))
                return AerialObject("storage tank", "", [_circle(x, y, r)], (tone, tone, tone - 5))
            place("storage tank", tank, tries=25, gap=2.0)

    for _ in range(int(rng.integers(1, 4))):  # trees: blobs of a few overlapping circles
        def tree() -> AerialObject:
            cx, cy = rng.uniform(0, size), rng.uniform(0, size)
            parts = [_circle(cx + rng.normal(0, 3.5 * u), cy + rng.normal(0, 3.5 * u), rng.uniform(3, 6.5) * u, 14)
                     for _ in range(int(rng.integers(2, 6)))]
            green = (int(rng.integers(30, 60)), int(rng.integers(75, 105)), int(rng.integers(30, 55)))
            return AerialObject("tree", "", parts, green)
        place("tree", tree, gap=3.0)

    if rng.random() < 0.4:
        def court() -> AerialObject:
            w, h = 24 * u, 12 * u
            angle = 0.0 if rng.random() < 0.5 else math.pi / 2
            fill = (60, 125, 85) if rng.random() < 0.5 else (70, 95, 160)
            return AerialObject("tennis court", "", [_rect(rng.uniform(0, size), rng.uniform(0, size), w, h, angle)], fill)
        place("tennis court", court, gap=4.0)
    return AerialScene(size=size, ground=ground, roads=roads, objects=objects)


def render(scene: AerialScene, rng: np.random.Generator) -> Image.Image:
    """Draw the scene (and set each object's mask)."""
    s = scene.size
    coarse = rng.normal(0, 14, size=(max(2, s // 16), max(2, s // 16), 1))
    low = np.asarray(Image.fromarray(np.clip(coarse[..., 0] + 128, 0, 255).astype(np.uint8)).resize((s, s), Image.BILINEAR),
                     dtype=np.float32) - 128
    pixels = np.asarray(scene.ground, np.float32)[None, None, :] + low[..., None] + rng.normal(0, 6, size=(s, s, 1))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for axis, centre, width in scene.roads:
        tone = int(rng.integers(85, 110))
        box = (0, centre - width / 2, s, centre + width / 2) if axis == "h" else (centre - width / 2, 0, centre + width / 2, s)
        draw.rectangle(box, fill=(tone, tone, tone + 3))
        for k in range(0, s, 10):
            dash = (k, centre - 0.5, k + 5, centre + 0.5) if axis == "h" else (centre - 0.5, k, centre + 0.5, k + 5)
            draw.rectangle(dash, fill=(210, 210, 200))
    for obj in scene.objects:  # shadows first, to the lower right: ground only, outside every mask
        if obj.category in ("building", "storage tank"):
            shift = 2.5 * s / 128
            for poly in obj.polygons:
                draw.polygon([(x + shift, y + shift) for x, y in poly], fill=(45, 45, 40))
    for obj in scene.objects:
        canvas = Image.new("L", (s, s), 0)
        mask_draw = ImageDraw.Draw(canvas)
        for poly in obj.polygons:
            mask_draw.polygon(poly, fill=255)
        obj.mask = np.asarray(canvas) > 0
        tint = np.asarray(obj.fill, np.float32) + rng.normal(0, 10 if obj.category == "tree" else 3, size=(s, s, 3))
        layer = Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8), "RGB")
        image.paste(layer, (0, 0), canvas)
        if obj.category == "tennis court":
            x0, y0, x1, y1 = obj.box()
            draw.rectangle((x0 + 1.5, y0 + 1.5, x1 - 1.5, y1 - 1.5), outline=(235, 235, 235))
            draw.line(((x0 + x1) / 2, y0 + 1.5, (x0 + x1) / 2, y1 - 1.5) if x1 - x0 > y1 - y0 else
                      (x0 + 1.5, (y0 + y1) / 2, x1 - 1.5, (y0 + y1) / 2), fill=(235, 235, 235))
        elif obj.category == "storage tank":
            x0, y0, x1, y1 = obj.box()
            inset = (x1 - x0) * 0.25
            draw.ellipse((x0 + inset, y0 + inset, x1 - inset, y1 - inset), outline=(170, 170, 165))
    return image.filter(ImageFilter.SMOOTH) if s >= 96 else image
