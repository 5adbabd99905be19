"""Per-group quantiles of point coordinates (each detection's median and box percentiles,
:func:`seg_ros.core.spatial.geometry.instance_geometry`): compiled on the CPU, NumPy
without Numba, two sorts on the device (CUDA); the same figures. No rclpy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from seg_ros.core import compiled
from seg_ros.core.spatial.kernels import points as kpoints


def grouped_quantiles(values: torch.Tensor, groups: torch.Tensor, n_groups: int,
                      qs: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group, per-column quantiles with linear interpolation (numpy's default).

    Args:
        values: (M, C) float.
        groups: (M,) int64 in [0, n_groups).
        qs: quantiles in [0, 1].

    Returns:
        ((len(qs), n_groups, C) float64 quantiles, NaN for empty groups; (n_groups,) counts).
    """
    if values.device.type == 'cpu' and compiled.AVAILABLE:
        out, counts = kpoints.grouped_quantiles(
            values.numpy(), groups.numpy(), n_groups, np.asarray(qs, np.float64))
        return torch.from_numpy(out), torch.from_numpy(counts)
    if values.device.type == 'cpu':
        return _grouped_quantiles_numpy(values, groups, n_groups, qs)
    return _grouped_quantiles_sorted(values, groups, n_groups, qs)


def _grouped_quantiles_sorted(values: torch.Tensor, groups: torch.Tensor, n_groups: int,
                              qs: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`grouped_quantiles` on the device (CUDA): two sorts, no loop over groups."""
    m, c = values.shape
    counts = torch.bincount(groups, minlength=n_groups)
    out = torch.full((len(qs), n_groups, c), math.nan, dtype=torch.float64,
                     device=values.device)
    if m == 0:
        return out, counts
    # Sort every column by value, then (stably) by group: each group's values ascend.
    v, order = torch.sort(values, dim=0, stable=True)
    g = groups[order]
    g, order2 = torch.sort(g, dim=0, stable=True)
    v = torch.gather(v, 0, order2).to(torch.float64)
    start = torch.cumsum(counts, 0) - counts
    has = counts > 0
    n = counts[has].to(torch.float64)
    s = start[has]
    for i, q in enumerate(qs):
        pos = q * (n - 1)
        lo = torch.floor(pos)
        frac = (pos - lo)[:, None]
        lo = lo.to(torch.int64)
        hi = torch.minimum(lo + 1, (n - 1).to(torch.int64))
        a = v[s + lo]
        b = v[s + hi]
        out[i, has] = a + (b - a) * frac
    return out, counts


def _grouped_quantiles_numpy(values: torch.Tensor, groups: torch.Tensor, n_groups: int,
                             qs: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`grouped_quantiles` on the CPU: one sort of the groups, then ``np.quantile`` (a
    partition) per group; 3x faster than the device path's two sorts (90k points: 10/31 ms).
    """
    v, g = values.numpy(), groups.numpy()
    counts = np.bincount(g, minlength=n_groups)
    out = np.full((len(qs), n_groups, v.shape[1]), math.nan)
    if v.shape[0]:
        vs = v[np.argsort(g, kind='stable')].astype(np.float64, copy=False)
        start = np.cumsum(counts) - counts
        for k in np.nonzero(counts)[0]:
            out[:, k] = np.quantile(vs[start[k]:start[k] + counts[k]], qs, axis=0)
    return torch.from_numpy(out), torch.from_numpy(counts)
