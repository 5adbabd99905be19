#!/usr/bin/env python3
"""Does a forward pass run slower in a worker thread than in the main thread?

    scripts/with_env python tools/bench_thread.py [--n 30] [--size 640x480]

The node runs inference in a long-lived worker thread (so that Ctrl-C stays prompt). One
process, lraspp (random seeded weights, channels-last, fp32) at ``--size``: the same
forward alternately in the main thread and in a long-lived worker thread (order flipped
every pair, 0.3 s quiet gap before each); prints both medians and the median per-pair ratio
worker / main, with the machine's facts.
"""
from __future__ import annotations

import argparse
import queue
import sys
import threading
import time

import numpy as np
import torch
from bench_common import machine_facts

from seg_ros.core.models.registry import load_semantic_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=30)
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--gap', type=float, default=0.3)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    print(f'machine: {machine_facts("cpu")}', flush=True)
    torch.manual_seed(0)
    model = load_semantic_model('lraspp_mobilenet_v3_large', 'none', 21).model.eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, h, w).contiguous(memory_format=torch.channels_last)

    def once() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(x)
            return time.perf_counter() - t0
    jobs: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()

    def worker() -> None:
        while True:
            jobs.get()
            done.put(once())
    threading.Thread(target=worker, daemon=True).start()

    def in_worker() -> float:
        jobs.put(1)
        return done.get()
    for f in (once, in_worker, once, in_worker):  # warm-up
        f()
    main_s, worker_s = [], []
    for i in range(args.n):
        order = ((main_s, once), (worker_s, in_worker))
        for box, f in (order if i % 2 == 0 else order[::-1]):
            time.sleep(args.gap)
            box.append(f())
    ratio = np.array(worker_s) / np.array(main_s)
    print(f'main thread p50 {np.median(main_s) * 1e3:.1f} ms, worker thread p50 '
          f'{np.median(worker_s) * 1e3:.1f} ms, worker / main (median per pair) '
          f'{np.median(ratio):.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
