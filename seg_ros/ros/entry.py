"""Console entry points of the nodes: Ctrl-C while the heavy modules (rclpy, torch) are still
importing ends the process quietly (exit code 0, no KeyboardInterrupt traceback), before
:func:`seg_ros.ros.segment_node.run` installs the node's own signal handling.
"""
from __future__ import annotations

import os
import signal
import sys


def _quiet_exit(_signum, _frame) -> None:
    sys.stderr.flush()
    os._exit(0)


def _start(module: str) -> int:
    previous = {sig: signal.signal(sig, _quiet_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    # torch's OpenMP threads sleep when a parallel region ends instead of spinning: in the
    # node they spun against the worker's single-threaded stretches, the DDS and executor
    # threads on the same cores (depth_objects' model 50 -> 35-40 ms in the node, the
    # learned model unchanged: BENCHMARKS.md). Read once, when OpenMP starts: before torch
    # is imported; a value already in the environment wins.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    _keep_freed_memory()
    import importlib
    main = importlib.import_module(module).main
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return main()


def _keep_freed_memory() -> None:
    """The C library (glibc) keeps freed memory in the process instead of returning it to the
    system after each frame: a frame's large arrays (up to 32 MB) come from the heap again,
    not as fresh pages that fault on first touch. Measured in the node (tools/bench_rgbd_node.py):
    depth_objects' image conversion 3.2-4.2 -> 0.8 ms a frame (its compiled loops free
    arrays the heap had returned), the learned model's unchanged. The freed memory stays
    with the process for the next frame instead of going back to the system. Other C
    libraries: nothing.
    """
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3            # glibc's malloc.h
    libc.mallopt(m_trim_threshold, 1 << 29)    # free heap top kept up to 512 MB
    libc.mallopt(m_mmap_threshold, 1 << 25)    # blocks up to 32 MB (glibc's maximum) from it


def segment_node() -> int:
    """``ros2 run seg_ros segment_node``."""
    return _start('seg_ros.ros.segment_node')


def segment_lifecycle_node() -> int:
    """``ros2 run seg_ros segment_lifecycle_node``."""
    return _start('seg_ros.ros.segment_lifecycle_node')
