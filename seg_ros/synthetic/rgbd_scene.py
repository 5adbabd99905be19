"""A synthetic RGB-D tabletop for tests and the demo: a table plane and boxes/cylinders at
known poses, ray-cast to colour, depth and camera intrinsics. No rclpy.

The camera looks straight down at the table (its optical z axis is the table's normal), as
a pick-and-place camera over a bin or a table often does: the table is the plane
``z = table_z`` of the optical frame, objects stand on it (``z`` from ``table_z - height``
to ``table_z``), boxes are axis-aligned in x/y, cylinders have vertical axes. Every pixel's
depth is exact (the first surface its ray meets), so tests know the ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box standing on the table: centre (x, y) m, size (sx, sy, height)."""

    x: float
    y: float
    sx: float
    sy: float
    height: float
    color: tuple[int, int, int] = (200, 60, 40)


@dataclass(frozen=True)
class Cylinder:
    """A vertical cylinder standing on the table: axis at (x, y) m, radius, height."""

    x: float
    y: float
    radius: float
    height: float
    color: tuple[int, int, int] = (40, 90, 200)


@dataclass
class RGBDScene:
    """A rendered frame.

    Attributes:
        rgb: (H, W, 3) uint8.
        depth: (H, W) float32 metres (every pixel sees the table or an object).
        object_map: (H, W) uint8: 0 = table, i = objects[i - 1].
        k: CameraInfo ``k`` (9), p: CameraInfo ``p`` (12).
        objects: what was rendered, in object_map order.
    """

    rgb: np.ndarray
    depth: np.ndarray
    object_map: np.ndarray
    k: list[float]
    p: list[float]
    objects: list = field(default_factory=list)

    def depth_16uc1(self) -> np.ndarray:
        """REP 118 millimetres (uint16, 0 = invalid)."""
        mm = np.round(np.nan_to_num(self.depth, nan=0.0) * 1000.0)
        return np.clip(mm, 0, 65535).astype(np.uint16)


def default_objects() -> list:
    """A table scene: two boxes and two cylinders, 0.8 m below the camera."""
    return [Box(-0.15, -0.08, 0.10, 0.07, 0.12, (210, 70, 40)),
            Box(0.12, 0.10, 0.08, 0.12, 0.06, (60, 170, 70)),
            Cylinder(0.14, -0.10, 0.035, 0.20, (40, 90, 210)),
            Cylinder(-0.10, 0.12, 0.045, 0.09, (220, 200, 50))]


def render(width: int = 640, height: int = 480, objects: list | None = None,
           table_z: float = 0.8, hfov_deg: float = 60.0, seed: int = 0) -> RGBDScene:
    """Ray-cast the scene (vectorised numpy, exact depth)."""
    objects = default_objects() if objects is None else list(objects)
    fx = fy = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = (u - cx) / fx, (v - cy) / fy  # ray direction (dx, dy, 1): t = depth z
    depth = np.full((height, width), table_z, np.float64)
    omap = np.zeros((height, width), np.uint8)
    for i, obj in enumerate(objects, start=1):
        z_top, z_bot = table_z - obj.height, table_z
        if isinstance(obj, Box):
            t = _ray_box(dx, dy, (obj.x - obj.sx / 2, obj.x + obj.sx / 2),
                         (obj.y - obj.sy / 2, obj.y + obj.sy / 2), (z_top, z_bot))
        else:
            t = _ray_cylinder(dx, dy, obj.x, obj.y, obj.radius, z_top, z_bot)
        closer = t < depth
        depth[closer] = t[closer]
        omap[closer] = i
    rng = np.random.default_rng(seed)
    colors = np.array([(150, 120, 90)] + [o.color for o in objects], np.float64)
    rgb = colors[omap]
    # wood-like stripes on the table and mild shading by depth: texture for the models
    stripes = 12.0 * np.sin(u / 7.0 + 0.3 * np.sin(v / 23.0))
    rgb[omap == 0] += stripes[omap == 0, None]
    rgb *= (1.1 - 0.25 * (depth - depth.min()) / max(np.ptp(depth), 1e-6))[..., None]
    rgb += rng.normal(0.0, 3.0, rgb.shape)
    k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return RGBDScene(rgb=np.clip(rgb, 0, 255).astype(np.uint8),
                     depth=depth.astype(np.float32), object_map=omap, k=k, p=p,
                     objects=objects)


def _ray_box(dx, dy, xs, ys, zs) -> np.ndarray:
    """Depth of the first hit of rays (dx, dy, 1) from the origin with a box (inf if none)."""
    t_near = np.full(dx.shape, zs[0])
    t_far = np.full(dx.shape, zs[1])
    for d, (lo, hi) in ((dx, xs), (dy, ys)):
        with np.errstate(divide='ignore', invalid='ignore'):
            a, b = lo / d, hi / d
        t0, t1 = np.minimum(a, b), np.maximum(a, b)
        # a ray parallel to the slab hits it everywhere or nowhere
        inside = (lo <= 0) & (0 <= hi)
        t0 = np.where(d == 0, np.where(inside, -np.inf, np.inf), t0)
        t1 = np.where(d == 0, np.where(inside, np.inf, -np.inf), t1)
        t_near, t_far = np.maximum(t_near, t0), np.minimum(t_far, t1)
    return np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)


def _ray_cylinder(dx, dy, x0, y0, r, z_top, z_bot) -> np.ndarray:
    """Depth of the first hit with a vertical cylinder (top cap or side; inf if none)."""
    hit = np.full(dx.shape, np.inf)
    cap = (dx * z_top - x0) ** 2 + (dy * z_top - y0) ** 2 <= r * r
    hit[cap] = z_top
    a = dx * dx + dy * dy
    b = -2.0 * (dx * x0 + dy * y0)
    c = x0 * x0 + y0 * y0 - r * r
    disc = b * b - 4 * a * c
    with np.errstate(divide='ignore', invalid='ignore'):
        t = (-b - np.sqrt(np.where(disc >= 0, disc, np.nan))) / (2 * a)
    side = np.isfinite(t) & (t >= z_top) & (t <= z_bot)
    return np.where(side & (t < hit), t, hit)
