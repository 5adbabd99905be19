#!/usr/bin/env python3
"""What tracking adds to a frame: 100 instances at 640x480 on this machine.

    scripts/with_env python tools/bench_tracking.py [--instances 100] [--frames 300]

Per frame it times exactly the work `instance.tracking` adds to the instance stage: the
grey thumbnail for camera-motion compensation (from the frame tensor), the association
(:meth:`Tracker.update`: IoU matrix + scipy's linear_sum_assignment + id bookkeeping) and
the id-map remap (instance k -> track id) of a 640x480 uint16 map. 100 boxes move a few
pixels a frame, some vanish and new ones appear, the camera pans. Prints median, p90, p99
and max in ms, and writes --json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from seg_ros.core.inference.instances import motion_thumbnail
from seg_ros.core.inference.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--instances', type=int, default=100)
    ap.add_argument('--frames', type=int, default=300)
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'bench_tracking.json')
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    rng = np.random.default_rng(0)
    n = args.instances
    centres = rng.uniform([40, 40], [w - 40, h - 40], (n, 2))
    sizes = rng.uniform(20, 80, (n, 2))
    velocity = rng.normal(0, 3, (n, 2))
    classes = rng.integers(1, 10, n)
    base = torch.rand(1, 3, h + 64, w + 64)
    id_map_k = rng.integers(0, n + 1, (h, w)).astype(np.uint16)  # instance k per pixel
    tracker = Tracker()
    times = []
    for f in range(args.frames):
        centres += velocity
        centres %= [w, h]
        gone = rng.random(n) < 0.02  # some objects replaced by new ones
        centres[gone] = rng.uniform([40, 40], [w - 40, h - 40], (int(gone.sum()), 2))
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1)
        pan = f % 64
        frame = base[:, :, 32:32 + h, pan:pan + w]
        t0 = time.perf_counter()
        small, scale = motion_thumbnail(frame)
        ids = tracker.update(boxes, classes, f * 33_000_000, small, scale).ids
        lut = np.concatenate([[0], ids]).astype(np.uint16)
        remapped = np.take(lut, id_map_k)
        times.append(time.perf_counter() - t0)
        assert remapped.shape == (h, w) and len(set(ids.tolist())) == n
    ms = np.array(times[10:]) * 1000
    out = {'instances': n, 'size': args.size, 'frames': len(ms),
           'p50_ms': float(np.median(ms)), 'p90_ms': float(np.percentile(ms, 90)),
           'p99_ms': float(np.percentile(ms, 99)), 'max_ms': float(ms.max()),
           'torch_threads': torch.get_num_threads(), 'machine': platform.processor() or
           platform.machine(), 'cpus': len(__import__('os').sched_getaffinity(0))}
    print(json.dumps(out, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
