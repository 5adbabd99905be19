"""Random RGB-D tabletop scenes for training and evaluating instance models. No rclpy.

:mod:`seg_ros.synthetic.rgbd_scene` renders one fixed, axis-aligned scene seen straight from
above (tests know its exact geometry). This module randomises everything a tabletop camera
meets, so a model trained on its scenes holds on scenes it never saw:

* objects: boxes (any yaw, standing on any face), cylinders (standing or lying, any yaw),
  and unlabelled distractors (spheres, flat discs) of many sizes, clustered so they touch
  and occlude each other; partly out of view at the borders;
* surfaces: solid, striped, two-tone (label bands), speckled or checkered, random colours;
  tables of wood grain, tiles, noise or plain colour, with an edge and a floor beyond;
* camera: height 0.45-1.3 m, tilt 0-45 degrees, random yaw and field of view;
* light: direction, colour, ambient level, cast shadows, a specular term, then exposure,
  gamma, blur and sensor noise; depth with noise growing as z^2 and holes at edges.

Every pixel comes with the visible object it shows (``object_map``), so masks are exact.
Coordinates: a world frame with the table plane ``z = 0`` and ``z`` up; the camera's
optical frame (x right, y down, z forward) as REP 103 and sensor_msgs/CameraInfo use.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from seg_ros.synthetic import surfaces
from seg_ros.synthetic.sensor_noise import DEPTH_NOISE, structured_light  # noqa: F401

#: Classes the generator labels, in COCO category-id order (1, 2, ...).
CLASSES = ('box', 'cylinder')


@dataclass(frozen=True)
class Solid:
    """One object: ``kind`` in box | cylinder | sphere | disc, a pose and a size.

    ``size`` is (half x, half y, half z) for a box, (radius, radius, half length) for a
    cylinder or disc (axis = local z), (r, r, r) for a sphere. ``rot`` maps local to world.
    """

    kind: str
    center: tuple[float, float, float]
    rot: tuple[tuple[float, float, float], ...]
    size: tuple[float, float, float]
    color: tuple[float, float, float]
    color2: tuple[float, float, float]
    pattern: str
    scale: float

    @property
    def label(self) -> str | None:
        """The class the generator labels this object with (None: a distractor)."""
        return self.kind if self.kind in CLASSES else None


@dataclass
class Scene:
    """One rendered frame: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres
    (0 = no return), ``object_map`` (H, W) int32 (0 = background, i = ``objects[i - 1]``),
    ``k`` the 3x3 intrinsics as CameraInfo's 9 numbers, ``objects``.
    """

    rgb: np.ndarray
    depth: np.ndarray
    object_map: np.ndarray
    k: list[float]
    objects: list[Solid]

    def instances(self, min_area: int = 30) -> list[tuple[str, np.ndarray]]:
        """(class, visible mask) of each labelled object showing at least ``min_area``
        pixels.
        """
        out = []
        for i, obj in enumerate(self.objects, start=1):
            if obj.label is None:
                continue
            mask = self.object_map == i
            if int(mask.sum()) >= min_area:
                out.append((obj.label, mask))
        return out


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rgb(rng: np.random.Generator, dull: bool = False) -> tuple[float, float, float]:
    h = rng.random()
    s = rng.uniform(0.0, 0.5) if dull else rng.choice([rng.uniform(0, 0.25), rng.uniform(0.4, 1)])
    v = rng.uniform(0.25, 0.85) if dull else rng.uniform(0.15, 1.0)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))


def random_objects(rng: np.random.Generator, radius: float, n: int,
                   stack: float = 0.0) -> list[Solid]:
    """``n`` objects resting on the table within ``radius`` m of the origin, in clusters;
    with ``stack`` > 0, each standing box carries a smaller box or upright cylinder on its
    top with that probability (a box standing on a box).
    """
    objects: list[Solid] = []
    footprints: list[tuple[float, float, float]] = []
    centres = rng.uniform(-0.6 * radius, 0.6 * radius, (rng.integers(1, 4), 2))
    for _ in range(n * 6):
        if len(objects) == n:
            break
        kind = rng.choice(['box', 'box', 'cylinder', 'cylinder', 'sphere', 'disc'],
                          p=[0.22, 0.22, 0.22, 0.22, 0.06, 0.06])
        yaw = rng.uniform(0, 2 * np.pi)
        if kind == 'box':
            half = np.sort(rng.uniform(0.012, 0.12, 3))
            half = rng.permutation(half) if rng.random() < 0.5 else half[[2, 1, 0]]
            rot = _rot_z(yaw)
            hz = half[2]
            foot = float(np.hypot(half[0], half[1]))
        elif kind == 'cylinder':
            r = rng.uniform(0.015, 0.07)
            hl = rng.uniform(max(r * 0.6, 0.02), 0.14)
            if rng.random() < 0.35:  # lying on its side: axis horizontal
                rot = _rot_z(yaw) @ _rot_x(np.pi / 2)
                hz, foot = r, float(np.hypot(hl, r))
            else:
                rot, hz, foot = _rot_z(yaw), hl, r
            half = np.array([r, r, hl])
        elif kind == 'sphere':
            r = rng.uniform(0.02, 0.06)
            half, rot, hz, foot = np.array([r, r, r]), np.eye(3), r, r
        else:  # a flat disc (plate, lid): a distractor, not a cylinder to pick
            r = rng.uniform(0.04, 0.12)
            half = np.array([r, r, rng.uniform(0.002, 0.006)])
            rot, hz, foot = _rot_z(yaw), half[2], r
        c = centres[rng.integers(len(centres))] + rng.normal(0, radius * 0.3, 2)
        # touching and slightly overlapping footprints are allowed (clutter); piles are not
        if any(np.hypot(c[0] - x, c[1] - y) < 0.8 * (foot + f) for x, y, f in footprints):
            continue
        footprints.append((float(c[0]), float(c[1]), foot))
        pattern = rng.choice(['solid', 'solid', 'stripes', 'band', 'speckle', 'checker'])
        objects.append(Solid(
            str(kind), (float(c[0]), float(c[1]), float(hz)),
            tuple(tuple(float(v) for v in row) for row in rot),
            tuple(float(v) for v in half), _rgb(rng), _rgb(rng), str(pattern),
            float(rng.uniform(60, 400))))
    if stack > 0:
        objects += _stacked(rng, objects, stack)
    return objects


def _stacked(rng: np.random.Generator, objects: list[Solid], p: float) -> list[Solid]:
    """Objects standing on the upright boxes of ``objects`` (each with probability ``p``)."""
    out = []
    for base in objects:
        if base.kind != 'box' or rng.random() >= p:
            continue
        hx, hy, hz = base.size
        top = base.center[2] + hz
        small = min(hx, hy)
        if small < 0.02:
            continue
        yaw = rng.uniform(0, 2 * np.pi)
        rot = np.asarray(base.rot) @ _rot_z(rng.uniform(-0.4, 0.4))
        if rng.random() < 0.6:
            half = np.array([rng.uniform(0.5, 0.9) * hx, rng.uniform(0.5, 0.9) * hy,
                             rng.uniform(0.015, 0.07)])
            kind = 'box'
        else:
            r = rng.uniform(0.4, 0.8) * small
            half = np.array([r, r, rng.uniform(0.02, 0.07)])
            kind = 'cylinder'
            rot = _rot_z(yaw)
        off = (np.asarray(base.rot)[:2, :2] @ rng.uniform(-0.2, 0.2, 2)) * small
        out.append(Solid(kind, (base.center[0] + float(off[0]), base.center[1] + float(off[1]),
                                float(top + half[2])),
                         tuple(tuple(float(v) for v in row) for row in rot),
                         tuple(float(v) for v in half), _rgb(rng), _rgb(rng),
                         str(rng.choice(['solid', 'stripes', 'band'])),
                         float(rng.uniform(60, 400))))
    return out


def table_under(objects: list[Solid], centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    """The table's half extents (x, y) about ``centre``: ``half``, grown until every object's
    bounding sphere (and 2 cm) lies over the table. An object placed beyond a smaller table's
    edge would stand in mid-air at the table's height (the random draw stays as it was, so a
    seed's scene keeps its objects, camera and light).
    """
    half = np.asarray(half, np.float64)
    for obj in objects:
        reach = float(np.linalg.norm(obj.size)) + 0.02
        half = np.maximum(half, np.abs(np.asarray(obj.center[:2]) - centre) + reach)
    return half


def render(rng: np.random.Generator, width: int = 640, height: int = 480,
           n_objects: tuple[int, int] = (3, 12), stack: float = 0.0,
           depth_noise: str = 'default') -> Scene:
    """One random scene: camera, table, objects, light; ray-cast (vectorised numpy).

    ``stack``: probability that a standing box carries another object (see
    :func:`random_objects`). ``depth_noise``: ``default`` (noise growing as z^2, holes at half
    the object edges), ``exact`` (the ray-cast depth, no noise, no holes) or
    ``structured_light`` (:func:`structured_light`: a Kinect / RealSense-like sensor).
    """
    if depth_noise not in DEPTH_NOISE:
        raise ValueError(f'depth_noise must be one of {DEPTH_NOISE}, got {depth_noise!r}')
    hfov = np.radians(rng.uniform(50, 75))
    fx = (width / 2.0) / np.tan(hfov / 2.0)
    fy = fx * rng.uniform(0.98, 1.02)
    cx = (width - 1) / 2.0 + rng.normal(0, 4)
    cy = (height - 1) / 2.0 + rng.normal(0, 4)
    cam_h = rng.uniform(0.45, 1.3)
    tilt = np.radians(rng.uniform(0, 45))
    yaw = rng.uniform(0, 2 * np.pi)
    # camera: optical z points down, tilted by `tilt` about its own x, turned by `yaw`
    r_cam = _rot_z(yaw) @ np.diag([1.0, -1.0, -1.0]) @ _rot_x(-tilt)
    look = r_cam[:, 2]
    target = np.array([0.0, 0.0, 0.0]) + rng.normal(0, 0.05, 3) * [1, 1, 0]
    origin = target - look * (cam_h / max(-look[2], 0.2))
    origin[2] = cam_h
    view_radius = cam_h * np.tan(hfov / 2) * rng.uniform(0.7, 1.1)
    objects = random_objects(rng, view_radius, int(rng.integers(*n_objects, endpoint=True)),
                             stack)
    # shift objects to where the camera looks on the table
    ground = origin - look * (origin[2] / look[2])
    objects = [Solid(o.kind, (o.center[0] + ground[0], o.center[1] + ground[1], o.center[2]),
                     o.rot, o.size, o.color, o.color2, o.pattern, o.scale) for o in objects]

    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    d_cam = np.stack([((u - cx) / fx).ravel(), ((v - cy) / fy).ravel(), np.ones(u.size)])
    d = r_cam @ d_cam  # t along d is the optical depth z
    o = origin[:, None]
    n_pix = u.size
    t_best = np.full(n_pix, np.inf)
    which = np.zeros(n_pix, np.int32)
    normal = np.zeros((3, n_pix))
    local_pt = np.zeros((3, n_pix))
    # table (z = 0 within its extent) and the floor beyond (z = -table height)
    table_half = table_under(objects, ground[:2], rng.uniform(0.5, 1.5, 2))
    with np.errstate(divide='ignore', invalid='ignore'):
        t_tab = -origin[2] / d[2]
        px, py = origin[0] + t_tab * d[0], origin[1] + t_tab * d[1]
        on_table = (t_tab > 0) & (np.abs(px - ground[0]) < table_half[0]) & (
            np.abs(py - ground[1]) < table_half[1])
        t_floor = (-0.75 - origin[2]) / d[2]
    t_best = np.where(on_table, t_tab, np.where(t_floor > 0, t_floor, np.inf))
    which[:] = np.where(on_table, -1, -2)
    normal[2] = 1.0
    for i, obj in enumerate(objects, start=1):
        rot = np.asarray(obj.rot)
        c = np.asarray(obj.center)[:, None]
        ol = rot.T @ (o - c)
        dl = rot.T @ d
        t, nl = surfaces.hit(obj.kind, np.broadcast_to(ol, dl.shape), dl, np.asarray(obj.size))
        closer = t < t_best
        t_best[closer] = t[closer]
        which[closer] = i
        normal[:, closer] = (rot @ nl)[:, closer]
        local_pt[:, closer] = (np.broadcast_to(ol, dl.shape) + dl * np.where(
            np.isfinite(t), t, 0))[:, closer]
    hit = o + d * np.where(np.isfinite(t_best), t_best, 0)

    # albedo
    albedo = np.zeros((n_pix, 3))
    tab = which == -1
    table_kind = rng.choice(['wood', 'wood', 'tiles', 'noise', 'plain'])
    albedo[tab] = surfaces.surface(str(table_kind), hit[0, tab], hit[1, tab], rng,
                           _rgb(rng, dull=True), _rgb(rng, dull=True))
    flo = which == -2
    albedo[flo] = surfaces.surface('noise', hit[0, flo], hit[1, flo], rng, _rgb(rng, dull=True),
                           _rgb(rng, dull=True))
    for i, obj in enumerate(objects, start=1):
        sel = which == i
        if not sel.any():
            continue
        w = surfaces.pattern(obj.pattern, local_pt[:, sel], obj.scale, rng)
        albedo[sel] = (np.asarray(obj.color)[None] * (1 - w[:, None])
                       + np.asarray(obj.color2)[None] * w[:, None])

    # light: a directional source with shadows cast on the table and on objects
    el = np.radians(rng.uniform(25, 85))
    az = rng.uniform(0, 2 * np.pi)
    to_light = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    lit = np.ones(n_pix, bool)
    start = hit + normal * 1e-4
    for obj in objects:
        rot = np.asarray(obj.rot)
        c = np.asarray(obj.center)[:, None]
        t, _ = surfaces.hit(obj.kind, rot.T @ (start - c), np.broadcast_to(
            (rot.T @ to_light)[:, None], start.shape), np.asarray(obj.size))
        lit &= ~np.isfinite(t)
    lam = np.clip((normal * to_light[:, None]).sum(0), 0, 1) * lit
    ambient = rng.uniform(0.25, 0.6)
    light_col = np.array(_rgb(rng, dull=True)) * 0.4 + 0.6
    shade = ambient + (1 - ambient) * lam
    view = -d / np.linalg.norm(d, axis=0)
    half_vec = (to_light[:, None] + view)
    half_vec /= np.linalg.norm(half_vec, axis=0)
    spec = rng.uniform(0, 0.5) * np.clip((normal * half_vec).sum(0), 0, 1) ** 30 * lit
    rgb = albedo * shade[:, None] * light_col[None] + spec[:, None]
    rgb = rgb.reshape(height, width, 3) * rng.uniform(0.6, 1.4)
    rgb = np.clip(rgb, 0, 1) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.4:  # a little defocus
        k = int(rng.integers(1, 3))
        pad = np.pad(rgb, ((k, k), (k, k), (0, 0)), mode='edge')
        rgb = sum(pad[dy:dy + height, dx:dx + width] for dy in range(2 * k + 1)
                  for dx in range(2 * k + 1)) / (2 * k + 1) ** 2
    rgb = rgb * 255 + rng.normal(0, rng.uniform(1, 6), rgb.shape)
    rgb8 = np.clip(rgb, 0, 255).astype(np.uint8)

    depth = np.where(np.isfinite(t_best), t_best, 0.0).reshape(height, width)
    omap = np.where(which > 0, which, 0).reshape(height, width).astype(np.int32)
    if depth_noise == 'default':
        depth = depth + rng.normal(0, 1, depth.shape) * 0.0015 * depth ** 2
        edge = np.zeros_like(omap, bool)
        edge[:, 1:] |= omap[:, 1:] != omap[:, :-1]
        edge[1:] |= omap[1:] != omap[:-1]
        depth[edge & (rng.random(depth.shape) < 0.5)] = 0.0
    elif depth_noise == 'structured_light':
        depth = structured_light(depth, float(fx), rng)
    k9 = [float(fx), 0.0, float(cx), 0.0, float(fy), float(cy), 0.0, 0.0, 1.0]
    return Scene(rgb8, depth.astype(np.float32), omap, k9, objects)
