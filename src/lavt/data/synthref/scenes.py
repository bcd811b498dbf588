"""synthref scenes: the objects, their geometry and masks, the background, placement, sampling.

Every random draw comes from the generator passed in, in a fixed order, so one seed gives
one scene; changing the order of draws here changes every generated dataset.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
GROUP_A: tuple[str, ...] = ("circle", "ring", "star")  # referred in testA
GROUP_B: tuple[str, ...] = ("square", "triangle", "cross")  # referred in testB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 36, 36),
    "green": (40, 170, 60),
    "blue": (36, 84, 222),
    "yellow": (238, 214, 36),
    "purple": (142, 58, 196),
    "orange": (250, 136, 24),
    "white": (238, 238, 238),
}
SIZES: tuple[str, ...] = ("small", "large")

# Shape geometry relative to the size scale s: the circumradius, used for spacing.
_CIRCUMRADIUS = {"circle": 1.0, "ring": 1.05, "square": 0.88 * math.sqrt(2), "triangle": 1.3, "star": 1.3,
                 "cross": math.hypot(1.1, 0.38)}
_SMALL_SCALE = 0.095  # small objects: s = 0.095 * min(width, height), +-6 %
_LARGE_RATIO = 1.75  # large objects: 1.75x the small scale, so any large is >= 1.55x any small
_MIN_VISIBLE = 0.6  # an occluded object keeps at least this share of its area


@dataclass
class SceneObject:
    """One shape in a scene: its attributes, pose, polygons and masks (full and visible)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    scale: float
    rotation: float  # degrees
    polygons: list[list[float]] = field(default_factory=list)
    full: np.ndarray | None = None
    visible: np.ndarray | None = None

    @property
    def radius(self) -> float:
        return _CIRCUMRADIUS[self.shape] * self.scale

    def attribute(self, name: str) -> str:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}[name]


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _shape_polygons(obj: SceneObject) -> list[np.ndarray]:
    """Vertices (K, 2) of each polygon part of `obj`, in image coordinates (y down)."""
    s = obj.scale
    if obj.shape == "circle":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        parts = [np.stack([np.cos(t), np.sin(t)], 1) * s]
    elif obj.shape == "ring":
        # Two half-rings overlapping by a few degrees: a polygon cannot have a hole.
        outer, inner, extra = 1.05 * s, 0.6 * s, math.radians(4)
        parts = []
        for start in (0.0, math.pi):
            t = np.linspace(start - extra, start + math.pi + extra, 24)
            arc_out = np.stack([np.cos(t), np.sin(t)], 1) * outer
            arc_in = np.stack([np.cos(t[::-1]), np.sin(t[::-1])], 1) * inner
            parts.append(np.concatenate([arc_out, arc_in]))
    elif obj.shape == "square":
        h = 0.88 * s
        parts = [np.array([[-h, -h], [h, -h], [h, h], [-h, h]])]
    elif obj.shape == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        parts = [np.stack([np.cos(t), np.sin(t)], 1) * 1.3 * s + np.array([0.0, 0.2 * s])]
    elif obj.shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.3 * s, 0.55 * s)
        parts = [np.stack([np.cos(t) * r, np.sin(t) * r], 1) + np.array([0.0, 0.1 * s])]
    elif obj.shape == "cross":
        a, b = 1.1 * s, 0.38 * s
        parts = [np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                           [-b, b], [-a, b], [-a, -b], [-b, -b]])]
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(obj.shape)
    return [_rotate(p, obj.rotation) + np.array([obj.cx, obj.cy]) for p in parts]


def _rasterize(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(rles).any(axis=2)


# ---------------------------------------------------------------------- appearance
def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.22, 0.58)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    grid = rng.normal(size=(cells, cells)).astype(np.float32)
    lo, hi = grid.min(), grid.max()
    image = Image.fromarray(((grid - lo) / (hi - lo + 1e-6) * 255).astype(np.uint8))
    up = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return up / 127.5 - 1.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted, textured background: never one flat colour, never a saturated object colour."""
    base = _muted_colour(rng)
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = base
    style = rng.integers(5)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    if style == 0:  # blotches
        for channel in range(3):
            image[..., channel] += _smooth_noise(rng, height, width, int(rng.integers(3, 9))) * rng.uniform(12, 30)
    elif style == 1:  # stripes
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(8, 26)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        image += (wave * rng.uniform(8, 20))[..., None] * (_muted_colour(rng) / 255.0 + 0.5)
    elif style == 2:  # checks of two close colours
        tile = int(rng.integers(8, 28))
        other = base + rng.uniform(-28, 28, size=3).astype(np.float32)
        checks = ((xx // tile + yy // tile) % 2).astype(bool)
        image[checks] = other
    elif style == 3:  # gradient between two muted colours
        other = _muted_colour(rng)
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        image = base * (1 - t[..., None]) + other * t[..., None]
    # style 4: plain colour with stronger noise only
    sigma = rng.uniform(8, 16) if style == 4 else rng.uniform(3, 9)
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(sigma)
    return image


def _paint(image: np.ndarray, obj: SceneObject, rng: np.random.Generator) -> None:
    """Paint the object's visible pixels: jittered colour, a linear shading, fine noise."""
    ys, xs = np.nonzero(obj.visible)
    colour = np.array(COLOURS[obj.colour], dtype=np.float32) + rng.uniform(-14, 14, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - obj.cx) * math.cos(angle) + (ys - obj.cy) * math.sin(angle)) / max(obj.scale, 1.0)
    shade = ramp * rng.uniform(0, 14) + rng.normal(0, 4, size=len(xs))
    image[ys, xs] = colour[None, :] + shade[:, None].astype(np.float32)


def render_scene(rng: np.random.Generator, scene: Sequence[SceneObject], height: int, width: int) -> np.ndarray:
    """The scene's pixels as float32 (H, W, 3) before rounding: background, objects, pixel noise."""
    canvas = _background(rng, height, width)
    for obj in scene:
        _paint(canvas, obj, rng)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(3.0)
    return canvas


# ---------------------------------------------------------------------- scenes
def _place(
    rng: np.random.Generator,
    height: int,
    width: int,
    plan: list[tuple[str, str, str]],
    occluder: int,
) -> list[SceneObject]:
    """Place the planned (shape, colour, size) objects without overlap, except that object
    `occluder` partly covers an earlier one of another colour; an object that does not fit
    is left out."""
    unit = min(height, width)
    objects: list[SceneObject] = []
    for index, (shape, colour, size) in enumerate(plan):
        for attempt in range(40):
            if attempt == 20:
                size = "small"  # a large object that keeps colliding gets a second chance as a small one
            scale = unit * _SMALL_SCALE * rng.uniform(0.94, 1.06) * (_LARGE_RATIO if size == "large" else 1.0)
            obj = SceneObject(shape, colour, size, 0.0, 0.0, scale, 0.0 if shape in ("circle", "ring")
                              else float(rng.uniform(-20, 20)))
            r = obj.radius
            if 2 * r + 4 >= unit:
                size = "small"
                continue
            # Only a differently coloured object may be covered: same colours would merge into one blob.
            others = [o for o in objects if o.colour != colour] if index == occluder else []
            other = others[int(rng.integers(len(others)))] if others else None
            if other is not None:
                angle = rng.uniform(0, 2 * math.pi)
                distance = (r + other.radius) * rng.uniform(0.55, 0.8)
                obj.cx, obj.cy = other.cx + distance * math.cos(angle), other.cy + distance * math.sin(angle)
                if not (r + 1 <= obj.cx <= width - r - 1 and r + 1 <= obj.cy <= height - r - 1):
                    continue
            else:
                obj.cx = float(rng.uniform(r + 1, width - r - 1))
                obj.cy = float(rng.uniform(r + 1, height - r - 1))
            gap = (0.02 if other is not None else 0.03) * unit
            if not all(math.hypot(obj.cx - o.cx, obj.cy - o.cy) >= r + o.radius + gap
                       for o in objects if o is not other):
                continue
            obj.polygons = [[round(float(v), 2) for v in part.reshape(-1)] for part in _shape_polygons(obj)]
            obj.full = _rasterize(obj.polygons, height, width)
            if other is not None:
                covered = obj.full & other.full
                if not covered.any() or (other.full & ~obj.full).sum() < _MIN_VISIBLE * other.full.sum():
                    continue
            objects.append(obj)
            break
    return objects


def sample_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    count: int,
    group: Sequence[str] | None,
    occlusion: float,
) -> list[SceneObject]:
    """Plan and place `count` objects (fewer only when they do not fit after several tries).

    Shapes and colours come from small per-scene pools, so objects share attributes.
    `group`: at least two objects must have one of these shapes (testA/testB scenes).
    """
    pool_size = lambda: int(rng.choice([1, 2, 3, 4], p=[0.12, 0.45, 0.33, 0.10]))  # noqa: E731
    shapes = [str(s) for s in rng.choice(SHAPES, size=pool_size(), replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), size=pool_size(), replace=False)]
    if group is not None and not set(shapes) & set(group):
        shapes[0] = str(rng.choice(group))
    group_shapes = [s for s in shapes if group is not None and s in group]
    plan = []
    for index in range(count):
        shape = str(rng.choice(group_shapes)) if index < 2 and group_shapes else str(rng.choice(shapes))
        plan.append((shape, str(rng.choice(colours)), "large" if rng.random() < 0.35 else "small"))
    occluder = int(rng.integers(1, count)) if count > 1 and rng.random() < occlusion else -1

    best: list[SceneObject] = []
    for _ in range(6):
        objects = _place(rng, height, width, plan, occluder)
        enough = group is None or sum(o.shape in group for o in objects) >= min(2, count)
        if enough and len(objects) > len(best):
            best = objects
        if len(best) == count:
            break
    if not best:
        best = objects
    cover = np.zeros((height, width), dtype=bool)
    for obj in reversed(best):  # later objects lie on top
        obj.visible = obj.full & ~cover
        cover |= obj.full
    return best
