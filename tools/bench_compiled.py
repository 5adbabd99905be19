#!/usr/bin/env python3
"""depth_objects' segmentation and the instances' 3D on the CPU: the compiled loops
(``seg_ros.core.compiled``, Numba) against the torch / NumPy code they stand in for, in one
process, on an RGB-D folder, alternating frame by frame with a quiet gap before each sample.

    scripts/with_env python tools/bench_compiled.py [--rgbd ../shared/data/rgbd_real]
        [--rounds 3] [--gap 0.1]

Prints per path the median and p90 of ``segment()`` and of ``instance_geometry()`` (the
frame's objects back-projected, their medians and box percentiles) per frame, the median of
the per-frame ratios compiled / torch, and whether both gave the same objects (rows, boxes,
scores) and the same 3D figures. One torch thread, as the node runs the segmentation.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import ROOT, machine_facts, pct
from demo_frames import rgbd_folder_frames

from seg_ros.core import compiled
from seg_ros.core.spatial import geometry
from seg_ros.core.spatial.depth_objects import DepthObjectsParams, segment
from seg_ros.core.spatial.depth_objects_model import warm_up


def _frame(z, k, prm):
    t0 = time.perf_counter()
    s = segment(z, None, k[0], k[4], k[2], k[5], prm, torch.Generator().manual_seed(0),
                masks=False)
    t1 = time.perf_counter()
    rows = s.rows.numpy()
    ids = np.arange(1, s.scores.numel() + 1, dtype=np.uint16)
    id_map = np.where(rows >= 0, rows + 1, 0).astype(np.uint16)
    g = geometry.instance_geometry(z, id_map, ids, geometry.Intrinsics(k[0], k[4], k[2], k[5]),
                                   0.1, 10.0)
    return t1 - t0, time.perf_counter() - t1, s, g


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rgbd', type=Path, default=ROOT.parent / 'shared' / 'data' / 'rgbd_real')
    ap.add_argument('--rounds', type=int, default=3, help='passes over the folder')
    ap.add_argument('--gap', type=float, default=0.1, help='quiet seconds before a sample')
    args = ap.parse_args()
    if not compiled.AVAILABLE:
        raise SystemExit('bench_compiled: numba is not installed here')
    torch.set_num_threads(1)
    frames = []
    for _name, _rgb, depth, k, _path in rgbd_folder_frames(args.rgbd, 0):
        z = torch.from_numpy(depth.astype(np.float32) / 1000)
        frames.append((torch.where(z > 0, z, torch.nan), k))
    if not frames:
        raise SystemExit(f'bench_compiled: no frames in {args.rgbd}')
    print(f'machine: {machine_facts(torch.device("cpu"))}', flush=True)
    warm_up('cpu')
    prm = DepthObjectsParams()
    times = {True: ([], []), False: ([], [])}
    same = True
    for r in range(args.rounds):
        for i, (z, k) in enumerate(frames):
            out = {}
            for fast in ((True, False) if (r + i) % 2 == 0 else (False, True)):
                compiled.AVAILABLE = fast
                time.sleep(args.gap)
                seg_s, geo_s, s, g = _frame(z, k, prm)
                times[fast][0].append(seg_s)
                times[fast][1].append(geo_s)
                out[fast] = (s, g)
            compiled.AVAILABLE = True
            (a, ga), (b, gb) = out[True], out[False]
            same &= bool(torch.equal(a.rows, b.rows) and torch.equal(a.boxes, b.boxes)
                         and torch.equal(a.scores, b.scores))
            same &= all(np.array_equal(getattr(ga, n), getattr(gb, n), equal_nan=True)
                        for n in ('points', 'counts', 'position', 'box_min', 'box_max'))
    print(f'{len(frames)} frames x {args.rounds} rounds, one torch thread')
    print('| path | segment p50 / p90 | 3D p50 / p90 |')
    print('|---|---|---|')
    for fast, name in ((False, 'torch / NumPy'), (True, 'compiled')):
        seg_t, geo_t = (np.asarray(x) * 1e3 for x in times[fast])
        print(f'| {name} | {pct(seg_t, 50):.1f} / {pct(seg_t, 90):.1f} ms '
              f'| {pct(geo_t, 50):.2f} / {pct(geo_t, 90):.2f} ms |')
    for j, what in ((0, 'segment'), (1, '3D')):
        ratio = np.median(np.asarray(times[True][j]) / np.asarray(times[False][j]))
        print(f'{what}: compiled / torch, median of per-frame ratios: {ratio:.3f}')
    print(f'same objects and 3D figures on every frame: {same}')
    return 0 if same else 1


if __name__ == '__main__':
    raise SystemExit(main())
