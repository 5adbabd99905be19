"""Depth sensor models for the generated scenes: what a structured-light or stereo camera
makes of exact depth. No rclpy.
"""
from __future__ import annotations

import numpy as np

#: ``render(depth_noise=...)`` values
DEPTH_NOISE = ('default', 'exact', 'structured_light')


def structured_light(depth: np.ndarray, fx: float, rng: np.random.Generator,
                     baseline: float = 0.075, subpixel: float = 1 / 8) -> np.ndarray:
    """A Kinect / RealSense-like depth image of exact ``depth`` (metres, 0 = none).

    Depth comes from disparity ``fx * baseline / z`` measured in 1/8 pixel steps with
    0.15 px of noise (noise and quantisation then grow as z^2: ~2.5 mm at 1 m, ~6 mm at
    1.5 m), correlated over 4x4-pixel blocks as the matching window makes it; the
    projector's shadow leaves no depth on a band beside every step towards the camera
    (width baseline * step / z in pixels); lateral edges jitter by a pixel; 1 % of the
    pixels drop out at random and a few small holes appear on dark or grazing surfaces.
    """
    h, w = depth.shape
    ok = depth > 0
    z = np.where(ok, depth, 1.0)
    disp = fx * baseline / z
    block = rng.normal(0, 0.15, ((h + 3) // 4, (w + 3) // 4))
    block = np.repeat(np.repeat(block, 4, 0), 4, 1)[:h, :w]
    disp = np.round((disp + block + rng.normal(0, 0.05, (h, w))) / subpixel) * subpixel
    out = np.where(ok, fx * baseline / np.maximum(disp, 1e-3), 0.0)
    # edge jitter: a pixel next to a depth step takes its neighbour's depth half the time
    step = np.zeros((h, w), bool)
    step[:, :-1] = np.abs(np.diff(depth, axis=1)) > 0.02 * z[:, :-1]
    take = step & (rng.random((h, w)) < 0.5)
    out[:, 1:][take[:, :-1]] = out[:, :-1][take[:, :-1]]
    # projector shadow: the projector sits `baseline` to the side; the far side of a step
    # towards the camera gets no pattern over baseline * (z_far - z_near) / z_far * fx / z_near
    near_to_far = np.zeros((h, w), bool)
    near_to_far[:, 1:] = (depth[:, 1:] - depth[:, :-1]) > 0.02 * z[:, 1:]
    shadow = np.zeros((h, w), bool)
    rr, cc = np.nonzero(near_to_far)
    if rr.size:
        zn, zf = z[rr, cc - 1], z[rr, cc]
        width = np.clip(np.round(fx * baseline * (zf - zn) / (zf * zn)), 0, 40).astype(int)
        for k in range(int(width.max()) + 1):
            sel = width > k
            shadow[rr[sel], np.minimum(cc[sel] + k, w - 1)] = True
    out[shadow] = 0.0
    out[rng.random((h, w)) < 0.01] = 0.0
    for _ in range(int(rng.integers(0, 6))):  # small holes
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        r = int(rng.integers(2, 8))
        out[max(0, y - r):y + r, max(0, x - r):x + r] = 0.0
    return out
