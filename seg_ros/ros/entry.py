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
    import importlib
    main = importlib.import_module(module).main
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return main()


def segment_node() -> int:
    """``ros2 run seg_ros segment_node``."""
    return _start('seg_ros.ros.segment_node')


def segment_lifecycle_node() -> int:
    """``ros2 run seg_ros segment_lifecycle_node``."""
    return _start('seg_ros.ros.segment_lifecycle_node')
