"""What :mod:`seg_ros.synthetic.tabletop` renders with: ray hits on a solid in its own frame
(box, cylinder, sphere, disc; the nearest hit and its normal) and the surface patterns of
objects and tables (stripes, bands, speckles, checks, wood grain, tiles). No rclpy.
"""
from __future__ import annotations

import numpy as np


def hit(kind: str, o: np.ndarray, d: np.ndarray, half: np.ndarray):
    """First hit (t, local normal) of rays o + t d (local frame, (3, N)) with a solid."""
    n_rays = o.shape[1]
    t_best = np.full(n_rays, np.inf)
    normal = np.zeros((3, n_rays))
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        if kind == 'box':
            t0 = np.full(n_rays, -np.inf)
            t1 = np.full(n_rays, np.inf)
            axis = np.zeros(n_rays, np.int64)
            sign = np.zeros(n_rays)
            for a in range(3):
                lo = (-half[a] - o[a]) / d[a]
                hi = (half[a] - o[a]) / d[a]
                near = np.minimum(lo, hi)
                far = np.maximum(lo, hi)
                parallel = d[a] == 0
                inside = np.abs(o[a]) <= half[a]
                near = np.where(parallel, np.where(inside, -np.inf, np.inf), near)
                far = np.where(parallel, np.where(inside, np.inf, -np.inf), far)
                better = near > t0
                axis = np.where(better, a, axis)
                sign = np.where(better, -np.sign(d[a]), sign)
                t0 = np.maximum(t0, near)
                t1 = np.minimum(t1, far)
            ok = (t0 <= t1) & (t0 > 1e-6)
            t_best = np.where(ok, t0, np.inf)
            normal[axis, np.arange(n_rays)] = sign
        elif kind == 'sphere':
            r = half[0]
            b = (o * d).sum(0)
            c = (o * o).sum(0) - r * r
            a = (d * d).sum(0)
            disc = b * b - a * c
            t = (-b - np.sqrt(np.where(disc >= 0, disc, np.nan))) / a
            t_best = np.where(np.isfinite(t) & (t > 1e-6), t, np.inf)
            p = o + d * np.where(np.isfinite(t_best), t_best, 0)
            normal = p / r
        else:  # cylinder or disc: axis local z, radius half[0], half length half[2]
            r, hl = half[0], half[2]
            a = d[0] ** 2 + d[1] ** 2
            b = o[0] * d[0] + o[1] * d[1]
            c = o[0] ** 2 + o[1] ** 2 - r * r
            disc = b * b - a * c
            t = (-b - np.sqrt(np.where(disc >= 0, disc, np.nan))) / a
            z = o[2] + t * d[2]
            side = np.isfinite(t) & (t > 1e-6) & (np.abs(z) <= hl)
            t_best = np.where(side, t, np.inf)
            p = o + d * np.where(side, t, 0)
            normal = np.stack([p[0] / r, p[1] / r, np.zeros(n_rays)])
            for cap in (hl, -hl):
                tc = (cap - o[2]) / d[2]
                x, y = o[0] + tc * d[0], o[1] + tc * d[1]
                on = (tc > 1e-6) & (x * x + y * y <= r * r) & (tc < t_best)
                t_best = np.where(on, tc, t_best)
                normal[:, on] = np.array([[0.0], [0.0], [np.sign(cap)]])
    return t_best, normal


def pattern(name: str, q: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Blend weight in [0, 1] of the second colour at local points ``q`` (3, N)."""
    if name == 'stripes':
        ax = rng.integers(3)
        return (np.sin(q[ax] * scale) > 0).astype(np.float64)
    if name == 'band':
        ax = 2
        w = rng.uniform(0.2, 0.6)
        lim = np.abs(q[ax]).max() if q.shape[1] else 1.0
        return (np.abs(q[ax]) < w * lim).astype(np.float64)
    if name == 'speckle':
        h = np.sin(q[0] * 12.9898 * scale + q[1] * 78.233 * scale + q[2] * 37.719 * scale)
        return (np.abs(h * 43758.5453) % 1.0 > 0.7).astype(np.float64)
    if name == 'checker':
        s = scale / 3.0
        return ((np.floor(q[0] * s) + np.floor(q[1] * s) + np.floor(q[2] * s)) % 2).astype(
            np.float64)
    return np.zeros(q.shape[1])


def surface(kind: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
             base: tuple, other: tuple) -> np.ndarray:
    """Albedo (N, 3) of a plane textured in its own x/y metres."""
    base, other = np.asarray(base), np.asarray(other)
    if kind == 'wood':
        a = rng.uniform(0, np.pi)
        s = x * np.cos(a) + y * np.sin(a)
        f = rng.uniform(40, 160)
        w = 0.5 + 0.5 * np.sin(s * f + 2.0 * np.sin((x * np.sin(a) - y * np.cos(a)) * 7.0))
        w = w ** rng.uniform(1, 4)
    elif kind == 'tiles':
        s = rng.uniform(0.05, 0.3)
        gx, gy = np.abs(((x / s) % 1) - 0.5), np.abs(((y / s) % 1) - 0.5)
        w = ((gx > 0.47) | (gy > 0.47)).astype(np.float64)
    elif kind == 'noise':
        g = rng.random((32, 32))
        s = rng.uniform(0.02, 0.15)
        w = g[(np.floor(x / s).astype(np.int64)) % 32, (np.floor(y / s).astype(np.int64)) % 32]
    else:
        w = np.zeros_like(x)
    return base[None] * (1 - w[:, None]) + other[None] * w[:, None]
