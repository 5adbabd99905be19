#!/usr/bin/env python3
"""segment_bag's peak memory against the bag's length: it streams, so it must not grow.

    scripts/with_env python tools/bench_bag_rss.py [--frames 150 1500] [--size 640x480]
        [--json out/bench_bag_rss.json]

Writes an mcap bag of ``--size`` rgb8 frames for each length (CamVid val frames when
../shared/data/camvid/val exists, generated frames otherwise; the bag is written frame by
frame, never held in memory), then runs ``segment_bag`` on it (the shipped CamVid model,
CPU, the node's defaults) in a child process of a small wrapper that reports the child's
peak resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Prints frames in and
answered, seconds and peak RSS per length, and the difference between the longest and the
shortest bag. The bags go to a temporary directory (``--keep`` keeps them).
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
WRAPPER = ('import json, resource, subprocess, sys\n'
           'r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n'
           'print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-3000:],'
           ' "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n')


def images(w: int, h: int, distinct: int = 16) -> list[np.ndarray]:
    files = sorted(CAMVID_VAL.glob('*.png')) if CAMVID_VAL.is_dir() else []
    if not files:
        return [scene(h, w, seed=i) for i in range(distinct)]
    step = max(1, len(files) // distinct)
    return [np.asarray(PILImage.open(f).convert('RGB').resize((w, h)))
            for f in files[::step][:distinct]]


def make_bag(path: Path, n: int, imgs: list[np.ndarray]) -> Path:
    def frames():
        for i in range(n):
            yield 10**9 + i * 33_333_333, frame_msg(imgs[i % len(imgs)], 10**18 + i * 33_333_333)
    return write_bag(path, {'/cam/image': frames()})


def measure(bag: Path, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, '-c', WRAPPER, sys.executable, '-m',
                          'seg_ros.offline.segment_bag', str(bag), str(out),
                          '--image-topic', '/cam/image', '-p', 'device:=cpu', *extra],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    info = json.loads(res.stdout)
    if info['rc']:
        raise SystemExit(info['stderr'])
    summary = json.loads(info['stdout'][info['stdout'].index('{'):])
    shutil.rmtree(out, ignore_errors=True)
    return {'frames_in': summary['frames_in'], 'frames_processed': summary['frames_processed'],
            'seconds': round(wall, 1), 'peak_rss_mb': round(info['maxrss_kb'] / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--frames', type=int, nargs='+', default=[150, 1500])
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--gap', type=float, default=3.0)
    ap.add_argument('--keep', type=Path, default=None, help='write the bags here and keep them')
    ap.add_argument('-p', dest='params', action='append', default=[], metavar='NAME:=VALUE')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'bench_bag_rss.json')
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    machine = machine_facts('cpu')
    print(f'machine: {machine}', flush=True)
    imgs = images(w, h)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for n in args.frames:
            bag = where / f'bag_{n}'
            if not bag.exists():
                make_bag(bag, n, imgs)
            size_mb = sum(f.stat().st_size for f in bag.iterdir()) / 2**20
            time.sleep(args.gap)
            row = {'frames': n, 'bag_mb': round(size_mb, 1),
                   **measure(bag, where / 'out', [a for p in args.params for a in ('-p', p)])}
            rows.append(row)
            print(f'{n:6d} frames ({row["bag_mb"]:.0f} MB bag): {row["frames_processed"]}/'
                  f'{row["frames_in"]} answered in {row["seconds"]:.1f} s, peak RSS '
                  f'{row["peak_rss_mb"]:.0f} MB', flush=True)
    grow = rows[-1]['peak_rss_mb'] - rows[0]['peak_rss_mb']
    print(f'peak RSS, {rows[-1]["frames"]} frames minus {rows[0]["frames"]} frames: '
          f'{grow:+.0f} MB')
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({'machine': machine, 'size': args.size, 'rows': rows,
                                     'peak_rss_growth_mb': grow}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
