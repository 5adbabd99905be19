#!/usr/bin/env python3
"""Soak: one camera at 30 Hz into segment_node for 10 minutes (CPU, lraspp, 320x240).

    scripts/with_env python tools/soak.py [--minutes 10] [--size 320x240] [--json FILE]

Reports RSS growth of the node process, the latency trend (median per 10 s bucket and a
least-squares slope), dropped frames and whether the node survived (and exited cleanly on
SIGINT). Exits non-zero when a target is missed: RSS growth >= 30 MB, latency rising by more
than 50% from the first to the last minute, or a crash.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import benchmark
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--minutes', type=float, default=10.0)
    ap.add_argument('--size', default='320x240', choices=list(benchmark.SIZES))
    ap.add_argument('--json', type=Path, default=benchmark.ROOT / 'out' / 'soak.json')
    args = ap.parse_args()
    benchmark.large_data_transport()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    h, w = benchmark.SIZES[args.size]
    res = benchmark.node_bench(benchmark.CONFIGS['lraspp'], benchmark.scene(h, w), 5,
                               args.minutes * 60, 0.0, args.json.parent)
    st = res['stream']
    trend = st['latency_median_per_10s']
    first = float(np.median([m for _, m in trend[:6]]))
    last = float(np.median([m for _, m in trend[-6:]]))
    ok_rss = st['rss_growth_mb'] < 30
    ok_trend = last <= 1.5 * first
    ok_alive = res['node_alive_at_end'] and res['node_exit_code'] == 0
    summary = {'size': args.size, 'minutes': args.minutes, 'sent': st['sent'],
               'answered': st['answered'], 'output_rate_hz': st['output_rate_hz'],
               'latency_p50_ms': 1000 * st['latency_s']['p50'],
               'latency_p99_ms': 1000 * st['latency_s']['p99'],
               'latency_first_minute_median_ms': 1000 * first,
               'latency_last_minute_median_ms': 1000 * last,
               'latency_slope_ms_per_min': 60000 * st['latency_slope_s_per_s'],
               'rss_start_mb': st['rss_mb_over_time'][1][1] if len(st['rss_mb_over_time']) > 1
               else None, 'rss_growth_mb': st['rss_growth_mb'],
               'crashed': not res['node_alive_at_end'], 'exit_code': res['node_exit_code'],
               'pass': bool(ok_rss and ok_trend and ok_alive)}
    args.json.write_text(json.dumps({'summary': summary, 'raw': res}, indent=1))
    print(json.dumps(summary, indent=2))
    return 0 if summary['pass'] else 1


if __name__ == '__main__':
    sys.exit(main())
