"""Torch's CPU thread count for a block of small operations. No rclpy.

A kernel on a few thousand elements runs faster on one thread than on two: two fork and join
per operation, and after an idle gap (a frame every 33 ms) each join waits for a sleeping
thread to wake (measured: depth_objects' grid, the int8 graphs' class maximum).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(device: torch.device, n: int):
    """The CPU runs the block on ``n`` torch threads (restored after); other devices and
    ``n <= 0`` leave it alone.
    """
    if device.type != 'cpu' or n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)
