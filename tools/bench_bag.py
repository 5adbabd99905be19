#!/usr/bin/env python3
"""segment_bag throughput: single process vs a local Ray cluster with 1 and 2 workers.

    scripts/with_env python tools/bench_bag.py [--frames 40] [--sizes 480x360 640x480]
        [--json out/bench_bag.json]

Builds an mcap bag of CamVid val frames (../shared/data/camvid/val; generated frames when
absent) at each size, then runs ``segment_bag`` (as a subprocess, the shipped CamVid LR-ASPP
model, CPU) alternately: single process, --ray --workers 1, --ray --workers 2, with a
quiet gap before each run. Frames/s counts from the first model load to the last write
(segment_bag's own summary ``seconds``, which includes start-up: Ray's start-up is part of
what a user waits for), plus the steady-state rate from the wall time minus the run's
start-up (measured with a 1-frame bag).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import machine_facts, scene
from PIL import Image as PILImage

from seg_ros.offline.bagfile import write_bag
from seg_ros.testing.remote import frame_msg

ROOT = Path(__file__).resolve().parent.parent

CAMVID_VAL = ROOT.parent / 'shared' / 'data' / 'camvid' / 'val'


def frames(n: int, w: int, h: int) -> list[np.ndarray]:
    files = sorted(CAMVID_VAL.glob('*.png')) if CAMVID_VAL.is_dir() else []
    if not files:
        return [scene(h, w, seed=i) for i in range(n)]
    return [np.asarray(PILImage.open(files[i % len(files)]).convert('RGB').resize((w, h)))
            for i in range(n)]


def run(bag: Path, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, '-m', 'seg_ros.offline.segment_bag', str(bag),
                          str(out), '--image-topic', '/cam/image', '-p', 'device:=cpu', *extra],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    summary = json.loads(res.stdout[res.stdout.index('{'):])
    return {'wall_s': wall, 'seconds': summary['seconds'], 'frames': summary['frames_in']}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--frames', type=int, default=40)
    ap.add_argument('--sizes', nargs='+', default=['480x360', '640x480'])
    ap.add_argument('--gap', type=float, default=3.0)
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'bench_bag.json')
    args = ap.parse_args()
    modes = {'single process': [], 'ray, 1 worker': ['--ray', '--workers', '1'],
             'ray, 2 workers': ['--ray', '--workers', '2']}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            w, h = (int(v) for v in size.split('x'))
            imgs = frames(args.frames, w, h)
            msgs = [(10**9 + i * 10**8, frame_msg(im, 10**18 + i * 10**8))
                    for i, im in enumerate(imgs)]
            bag = write_bag(tmp / f'in_{size}', {'/cam/image': msgs})
            one = write_bag(tmp / f'one_{size}', {'/cam/image': msgs[:1]})
            for name, extra in modes.items():
                time.sleep(args.gap)
                start = run(one, tmp / 'out1', extra)  # start-up + one frame
                time.sleep(args.gap)
                full = run(bag, tmp / 'out', extra)
                steady = (full['frames'] - 1) / max(full['wall_s'] - start['wall_s'], 1e-9)
                row = {'size': size, 'mode': name, 'frames': full['frames'],
                       'wall_s': round(full['wall_s'], 2),
                       'frames_per_s_wall': round(full['frames'] / full['wall_s'], 3),
                       'startup_s': round(start['wall_s'], 2),
                       'frames_per_s_steady': round(steady, 3)}
                rows.append(row)
                print(f"{size} {name:16s} {row['frames']} frames in {row['wall_s']:.1f} s "
                      f"({row['frames_per_s_wall']:.2f} frames/s overall; start-up "
                      f"{row['startup_s']:.1f} s; steady {row['frames_per_s_steady']:.2f} "
                      'frames/s)', flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({'machine': machine_facts('cpu'), 'rows': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
