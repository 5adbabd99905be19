"""Numba for the CPU's compiled loops (:mod:`seg_ros.core.spatial.kernels`): ``jit``
compiles a function once, on first use,
and caches it beside its module (``cache=True``; where that is read-only, once per process);
without Numba (``AVAILABLE`` False) the callers run their torch / NumPy code. No rclpy.
"""
from __future__ import annotations

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the callers run without it
    numba = None

#: whether compiled loops can run here (the callers read it at each call: tests switch it off
#: to run the torch / NumPy code they stand in for)
AVAILABLE = numba is not None


def jit(fn):
    """``fn`` compiled in nopython mode without the GIL (returned unchanged without Numba)."""
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=True, nogil=True)(fn)
