"""3D from a registered depth image: back-projection, per-instance statistics, labelled
clouds. No rclpy; vectorised torch on the model's device (no per-pixel or per-instance
Python loop).

Conventions (REP 103/118, image_geometry):

- Depth ``16UC1`` is millimetres with 0 = invalid; ``32FC1`` is metres with NaN (or 0, or
  +-inf) = invalid. Units come from the encoding, never from a divisor parameter.
- Pixel (u = column, v = row) with depth z back-projects to
  ``x = (u - cx) z / fx``, ``y = (v - cy) z / fy``, ``z``, in the colour camera's optical
  frame (x right, y down, z forward). ``fx, fy, cx, cy`` are ``P[0], P[5], P[2], P[6]`` of
  the CameraInfo (the rectified camera, as image_geometry uses), or ``K[0], K[4], K[2],
  K[5]`` when ``P`` is all zero.
- A depth image of another size but the same aspect ratio (within 1 %) is resampled to the
  colour size by nearest neighbour, source pixel ``floor(dst * in / out)`` (OpenCV's
  INTER_NEAREST, torch's ``nearest``); any other size is not registered and is refused.
- Statistics of an instance's valid points: position = per-axis median, box = per-axis 2nd
  to 98th percentile, both with numpy's default linear interpolation.
- With a :class:`RigidTransform` (``depth.target_frame``), every point is moved into the
  target frame (``p' = R p + t``, float64) **before** the statistics, so a box is
  axis-aligned in the target frame.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from seg_ros.core import compiled
from seg_ros.core.spatial.imaging import DEFAULT_MAX_PIXELS, ImageConversionError, buffer_to_array
from seg_ros.core.spatial.kernels import points as kpoints
from seg_ros.core.spatial.quantiles import grouped_quantiles

#: depth encoding -> (numpy dtype, metres per unit)
DEPTH_ENCODINGS: dict[str, tuple[type, float]] = {
    '16UC1': (np.uint16, 0.001),
    '32FC1': (np.float32, 1.0),
}
ASPECT_TOLERANCE = 0.01
BOX_QUANTILES = (0.02, 0.98)


class GeometryError(ValueError):
    """Depth or camera_info cannot be used; ``reason`` is the drop counter's key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of the (rectified) colour image, in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float


def intrinsics_from(k: Sequence[float], p: Sequence[float], width: int = 0, height: int = 0,
                    image_size: tuple[int, int] | None = None) -> Intrinsics:
    """Intrinsics from CameraInfo fields: ``p`` (3x4, row-major) unless all zero, else ``k``.

    Args:
        k, p: the CameraInfo ``k`` (9) and ``p`` (12) arrays.
        width, height: the CameraInfo's image size (0 = not given).
        image_size: (height, width) of the colour image it must describe, when known.

    Raises:
        GeometryError: ``bad_camera_info`` (wrong lengths, non-finite, zero or negative
            focal length, both matrices zero, or a size that is not the colour image's).
    """
    try:
        k = np.asarray(k, np.float64).reshape(-1)
        p = np.asarray(p, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise GeometryError('bad_camera_info', 'camera_info k/p are not numbers') from None
    if k.size != 9 or p.size != 12:
        raise GeometryError('bad_camera_info',
                            f'camera_info k has {k.size} values (9 expected), p {p.size} (12)')
    src = p if np.any(p != 0) else k
    name = 'p' if src is p else 'k'
    fx, fy, cx, cy = ((p[0], p[5], p[2], p[6]) if src is p else (k[0], k[4], k[2], k[5]))
    vals = np.array([fx, fy, cx, cy])
    if not np.all(np.isfinite(vals)):
        raise GeometryError('bad_camera_info', f'camera_info {name} has non-finite values')
    if fx <= 0 or fy <= 0:
        what = 'both k and p are all zero' if not np.any(k != 0) else \
            f'focal length fx={fx:g}, fy={fy:g} in {name} must be > 0'
        raise GeometryError('bad_camera_info', f'camera_info unusable: {what}')
    if image_size is not None and width and height and (int(height), int(width)) != \
            tuple(image_size):
        raise GeometryError(
            'bad_camera_info', f'camera_info is for {width}x{height} but the colour image is '
            f'{image_size[1]}x{image_size[0]} (it must describe the colour image)')
    return Intrinsics(float(fx), float(fy), float(cx), float(cy))


def depth_array(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                data, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, float]:
    """Validate depth image fields and view its data: ((H, W) array, metres per unit).

    Raises:
        GeometryError: ``bad_depth`` with the reason (encoding not 16UC1/32FC1, size,
            step, data length).
    """
    if encoding not in DEPTH_ENCODINGS:
        shown = repr(encoding)[:40]
        raise GeometryError('bad_depth', f'depth encoding {shown} unsupported: REP 118 depth '
                            'is 16UC1 (mm, 0 = invalid) or 32FC1 (m, NaN = invalid)')
    dtype, scale = DEPTH_ENCODINGS[encoding]
    try:
        arr = buffer_to_array(height, width, step, is_bigendian, data, 1, dtype, max_pixels)
    except ImageConversionError as exc:
        raise GeometryError('bad_depth', f'depth image: {exc}') from None
    return arr[:, :, 0], scale


def check_registered(depth_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    """True when depth must be resampled (same aspect ratio, other size), False when the
    sizes are equal.

    Raises:
        GeometryError: ``depth_not_registered`` when the aspect ratios differ by more than 1 %.
    """
    (dh, dw), (h, w) = depth_hw, image_hw
    if (dh, dw) == (h, w):
        return False
    if abs((dw / dh) / (w / h) - 1.0) <= ASPECT_TOLERANCE:
        return True
    raise GeometryError(
        'depth_not_registered',
        f'depth image {dw}x{dh} is not registered to the colour image {w}x{h} (aspect ratios '
        'differ): register it to the colour camera first, e.g. depth_image_proc::'
        'RegisterNode (component depth_image_proc/register) or the driver\'s aligned '
        'depth (RealSense aligned_depth_to_color)')


def depth_to_metres(depth: np.ndarray, scale: float, image_hw: tuple[int, int],
                    device: torch.device) -> torch.Tensor:
    """(H, W) float32 metres on ``device``, resampled to ``image_hw`` when registered at
    another resolution; invalid pixels (0, NaN, inf) are NaN.

    Raises:
        GeometryError: ``depth_not_registered`` (see :func:`check_registered`).
    """
    resample = check_registered(depth.shape, image_hw)
    d = torch.from_numpy(np.ascontiguousarray(depth)).to(device)
    d = d.to(torch.float32) if d.dtype != torch.float32 else d.clone()
    if scale != 1.0:
        d.mul_(scale)
    d = torch.where(torch.isfinite(d) & (d != 0), d, torch.nan)
    if resample:
        d = F.interpolate(d[None, None], size=image_hw, mode='nearest')[0, 0]
    return d


@dataclass(frozen=True)
class RigidTransform:
    """A rigid transform taking points of the camera's frame into a target frame.

    Attributes:
        rotation: (3, 3) float64 rotation matrix R.
        translation: (3,) float64 translation t (metres); ``p_target = R p + t``.
    """

    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def from_quaternion(cls, translation: Sequence[float],
                        quaternion: Sequence[float]) -> RigidTransform:
        """From a geometry_msgs Transform's translation (x, y, z) and rotation quaternion
        (x, y, z, w), normalised.

        Raises:
            GeometryError: ``no_transform`` (non-finite values, a zero quaternion).
        """
        t = np.asarray(translation, np.float64).reshape(3)
        q = np.asarray(quaternion, np.float64).reshape(4)
        norm = float(np.linalg.norm(q))
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))) or norm < 1e-9:
            raise GeometryError('no_transform', 'the transform has non-finite values or a '
                                'zero rotation quaternion')
        x, y, z, w = q / norm
        r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        return cls(r, t)

    def apply(self, pts: torch.Tensor) -> torch.Tensor:
        """(M, 3) points -> (M, 3) float64 points in the target frame, on pts' device."""
        r = torch.as_tensor(self.rotation, dtype=torch.float64, device=pts.device)
        t = torch.as_tensor(self.translation, dtype=torch.float64, device=pts.device)
        return pts.to(torch.float64) @ r.T + t


def _moved(pts: torch.Tensor, transform: RigidTransform | None) -> torch.Tensor:
    return pts if transform is None else transform.apply(pts)


def back_project(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 intr: Intrinsics) -> torch.Tensor:
    """(M, 3) float32 points of pixels (rows, cols) with depths ``z`` (M,) metres."""
    x = (cols.to(torch.float32) - intr.cx) * z / intr.fx
    y = (rows.to(torch.float32) - intr.cy) * z / intr.fy
    return torch.stack([x, y, z], 1)


def valid(z: torch.Tensor, z_min: float, z_max: float) -> torch.Tensor:
    """Finite depth within [z_min, z_max] (NaN compares false)."""
    return (z >= z_min) & (z <= z_max)


@dataclass
class InstanceGeometry:
    """3D of the instances of one frame (host arrays).

    Attributes:
        points: (M, 3) float32 valid points of every instance, metres.
        point_ids: (M,) uint16 published id of each point (= its mask pixel value).
        counts: (N,) valid points per detection, in the detections' order.
        position: (N, 3) float64 per-axis median (NaN without points).
        box_min, box_max: (N, 3) float64 2nd / 98th percentiles.
    """

    points: np.ndarray
    point_ids: np.ndarray
    counts: np.ndarray
    position: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray


def instance_geometry(z: torch.Tensor, id_map: np.ndarray, ids: np.ndarray,
                      intr: Intrinsics, z_min: float, z_max: float,
                      transform: RigidTransform | None = None) -> InstanceGeometry:
    """Back-project every valid pixel of every instance mask and summarise per instance.

    Args:
        z: (H, W) float32 metres (NaN invalid), on the compute device.
        id_map: (H, W) uint16 published id per pixel (0 = background).
        ids: (N,) published ids of the detections.
    """
    dev = z.device
    n = int(ids.shape[0])
    if dev.type == 'cpu' and compiled.AVAILABLE:   # the same in one compiled pass
        lut = np.full(65536, n, np.int64)
        lut[ids.astype(np.int64)] = np.arange(n)
        f32 = np.float32
        p, pid, group = kpoints.instance_points(
            z.float().numpy(), id_map.astype(np.uint16, copy=False), lut, n, f32(z_min),
            f32(z_max), f32(intr.fx), f32(intr.fy), f32(intr.cx), f32(intr.cy))
        pts = _moved(torch.from_numpy(p), transform)
        qv, counts = grouped_quantiles(pts, torch.from_numpy(group), n, (0.5, *BOX_QUANTILES))
        q = qv.numpy()
        return InstanceGeometry(points=pts.to(torch.float32).numpy(), point_ids=pid,
                                counts=counts.numpy(), position=q[0], box_min=q[1],
                                box_max=q[2])
    idm = torch.from_numpy(id_map.astype(np.int32, copy=False)).to(dev)
    sel = (idm > 0) & valid(z, z_min, z_max)
    rows, cols = torch.nonzero(sel, as_tuple=True)
    zz = z[rows, cols]
    pid = idm[rows, cols]
    pts = back_project(zz, rows, cols, intr)
    lut = torch.full((65536,), n, dtype=torch.int64, device=dev)  # n = not a detection
    if n:
        lut[torch.from_numpy(ids.astype(np.int64)).to(dev)] = torch.arange(n, device=dev)
    group = lut[pid.to(torch.int64)]
    keep = group < n
    pts, pid, group = _moved(pts[keep], transform), pid[keep], group[keep]
    qv, counts = grouped_quantiles(pts, group, n, (0.5, *BOX_QUANTILES))
    q = qv.cpu().numpy()
    return InstanceGeometry(points=pts.to(torch.float32).cpu().numpy(), point_ids=pid.cpu().numpy()
                            .astype(np.uint16), counts=counts.cpu().numpy(),
                            position=q[0], box_min=q[1], box_max=q[2])


def warm_up(device: torch.device) -> None:
    """Run :func:`instance_geometry` once on a small frame on ``device``: on the CPU this
    compiles its loops (Numba; then read from the cache beside the modules), which the first
    frame with depth would otherwise pay.
    """
    z = torch.full((8, 8), 1.0, device=device)
    ids = np.array([1, 2], np.uint16)
    id_map = np.zeros((8, 8), np.uint16)
    id_map[:4], id_map[4:] = 1, 2
    for transform in (None, RigidTransform(np.eye(3), np.zeros(3))):
        instance_geometry(z, id_map, ids, Intrinsics(8.0, 8.0, 4.0, 4.0), 0.1, 10.0, transform)


@dataclass
class SemanticPoints:
    """Labelled points on the stride grid (host arrays): (M, 3) float32 xyz, (M,) uint16
    label, (M,) uint32 packed rgb (0x00RRGGBB).
    """

    points: np.ndarray
    labels: np.ndarray
    rgb: np.ndarray


def semantic_points(z: torch.Tensor, labels: np.ndarray, image: torch.Tensor,
                    intr: Intrinsics, stride: int, z_min: float, z_max: float,
                    transform: RigidTransform | None = None) -> SemanticPoints:
    """The pixels at rows and columns 0, stride, 2*stride, ... with valid depth.

    Args:
        z: (H, W) float32 metres (NaN invalid).
        labels: (H, W) class index per pixel (host).
        image: (1, 3, H, W) float RGB in [0, 1] (the model input, on z's device).
    """
    dev = z.device
    zs = z[::stride, ::stride]
    sel = valid(zs, z_min, z_max)
    r, c = torch.nonzero(sel, as_tuple=True)
    zz = zs[r, c]
    rows, cols = r * stride, c * stride
    pts = _moved(back_project(zz, rows, cols, intr), transform)
    lab = torch.from_numpy(labels[::stride, ::stride].astype(np.int32)).to(dev)[r, c]
    rgb8 = (image[0, :, ::stride, ::stride][:, r, c] * 255).round().clamp(0, 255)
    rgb8 = rgb8.to(torch.int64)
    packed = (rgb8[0] << 16) | (rgb8[1] << 8) | rgb8[2]
    return SemanticPoints(points=pts.to(torch.float32).cpu().numpy(),
                          labels=lab.cpu().numpy().astype(np.uint16),
                          rgb=packed.cpu().numpy().astype(np.uint32))


@dataclass
class Frame3D:
    """The 3D outputs of one frame (either part None when its model is off)."""

    instances: InstanceGeometry | None = None
    semantic: SemanticPoints | None = None


def frame_3d(res, depth: np.ndarray, scale: float, intr: Intrinsics, z_min: float,
             z_max: float, stride: int, transform: RigidTransform | None = None,
             z: torch.Tensor | None = None) -> Frame3D:
    """3D of a :class:`~seg_ros.core.inference.results.FrameResult` from its registered depth.

    Args:
        res: the pipeline's result for the colour frame (``res.image`` on the device).
        depth: (h, w) depth as received (uint16 or float32), ``scale`` metres per unit.
        transform: into the target frame (None: the camera's optical frame).

    Raises:
        GeometryError: ``depth_not_registered``.
    """
    image = res.image
    hw = (int(image.shape[-2]), int(image.shape[-1]))
    if z is None:  # (given: the same depth already in metres on the device)
        z = depth_to_metres(depth, scale, hw, image.device)
    out = Frame3D()
    if res.instances is not None:
        out.instances = instance_geometry(z, res.instances.id_map, res.instances.ids, intr,
                                          z_min, z_max, transform)
    if res.semantic is not None:
        out.semantic = semantic_points(z, res.semantic.labels, image, intr, stride, z_min,
                                       z_max, transform)
    return out
