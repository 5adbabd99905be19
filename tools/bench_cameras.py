#!/usr/bin/env python3
"""Many cameras: one node with N cameras against N single-camera nodes, in one run.

    scripts/with_env python tools/bench_cameras.py --cameras 1 2 4 [--seconds 30]
        [--size 640x480] [--backend auto] [--json out/bench_cameras.json]

For each N, one node with N cameras and N single-camera nodes, alternately (a quiet gap
before each), every camera streaming the same frame at 30 Hz for ``--seconds`` after a
warm-up: frames answered per second (all cameras), per-camera latency p50 / p99 (publish ->
receipt), and the nodes' summed RSS. Random seeded LR-ASPP weights (no hub here).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import (
    ROOT,
    SIZES,
    machine_facts,
    pct,
    random_weights,
    rss_mb,
    scene,
)

from seg_ros.core.inference.pipeline import resolve_device


def cameras_run(n: int, mode: str, weights: Path, rgb: np.ndarray, seconds: float,
                backend: str, log_dir: Path, rate: float = 30.0) -> dict:
    """``mode`` 'one_node': one node with ``cameras`` cam0..cam{n-1}; 'n_nodes': n nodes of
    one camera each. Every camera streams ``rgb`` at ``rate`` Hz (all cameras on the same
    tick, as a synchronised rig) for ``seconds``.
    """
    from sensor_msgs.msg import Image

    from seg_ros.testing.remote import frame_msg, own_domain, served
    domain = own_domain(60, 40)
    base = ['-p', 'device:=' + ('cuda' if torch.cuda.is_available() else 'cpu'),
            '-p', f'semantic.weights:={weights}', '-p', 'semantic.input_size:=0',
            '-p', f'semantic.backend:={backend}',
            '-p', f'backend.cache_dir:={log_dir / "backend_cache"}']
    cams = [f'cam{i}' for i in range(n)]
    inputs = {c: f'/bench/{c}/image' for c in cams}
    if mode == 'one_node':
        node_args = [[*base, '-p', f'cameras:=[{", ".join(cams)}]',
                      *[a for c in cams for a in ('-r', f'{c}/image:={inputs[c]}')]]]
        logs = [log_dir / 'bench_cams_node.log']
        outputs = {c: f'/segmentation/{c}/semantic/labels' for c in cams}
    else:
        node_args = [[*base, '-r', f'__node:=seg_{c}', '-r', f'image:={inputs[c]}']
                     for c in cams]
        logs = [log_dir / f'bench_cams_{c}.log' for c in cams]
        outputs = {c: f'/seg_{c}/semantic/labels' for c in cams}
    with served(node_args, domain, logs, 'seg_ros_bench_cams') as (nodes, client):
        boxes = {c: client.collect(Image, outputs[c]) for c in cams}
        pubs = {c: client.node.create_publisher(Image, inputs[c], 10) for c in cams}
        assert client.spin_until(lambda: all(p.get_subscription_count() for p in
                                              pubs.values()), 60)
        msg = frame_msg(rgb, 1)

        def stream_for(duration: float, key0: int) -> dict[str, dict[int, float]]:
            sent: dict[str, dict[int, float]] = {c: {} for c in cams}
            t_start = time.perf_counter()
            k, next_t = 0, t_start
            while time.perf_counter() - t_start < duration:
                if time.perf_counter() >= next_t:
                    for j, c in enumerate(cams):
                        key = key0 + k * 1000 + j
                        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(key, 10**9)
                        sent[c][key] = time.perf_counter()
                        pubs[c].publish(msg)
                    k += 1
                    next_t += 1.0 / rate
                client.executor.spin_once(timeout_sec=max(0.0, min(
                    next_t - time.perf_counter(), 0.01)))
            client.spin_until(lambda: False, 2.0)  # drain
            return sent
        # warm-up: every node compiles/warms for this size, all cameras answered once
        stream_for(4.0, 10**12)
        time.sleep(3.0)  # quiet gap
        for b in boxes.values():
            b.clear()
        sent = stream_for(seconds, 2 * 10**12)
        rss = sum(rss_mb(nd.pid) for nd in nodes)
        per_cam = {}
        total = 0
        for c in cams:
            lat = [boxes[c][k][1] - t for k, t in sent[c].items() if k in boxes[c]]
            total += len(lat)
            per_cam[c] = {'sent': len(sent[c]), 'answered': len(lat),
                          'p50_s': pct(lat, 50), 'p99_s': pct(lat, 99)}
        return {'cameras': n, 'mode': mode, 'seconds': seconds, 'rate_hz': rate,
                'answered_per_s': total / seconds, 'rss_mb': rss, 'per_camera': per_cam,
                'latency_p50_s': float(np.median([v['p50_s'] for v in per_cam.values()])),
                'latency_p99_s': float(max(v['p99_s'] for v in per_cam.values()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cameras', type=int, nargs='+', default=[1, 2, 4])
    ap.add_argument('--seconds', dest='camera_seconds', type=float, default=30.0)
    ap.add_argument('--size', dest='size', default='640x480', choices=list(SIZES))
    ap.add_argument('--backend', dest='camera_backend', default='auto',
                    help='semantic.backend of the nodes')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'bench_cameras.json')
    args = ap.parse_args()
    device = resolve_device('auto')
    machine = machine_facts(device)
    print(f'machine: {machine}', flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    weights = random_weights(args.json.parent / 'bench_lraspp_mobilenet_v3_large.pt')
    h, w = SIZES[args.size]
    rgb = scene(h, w)
    results = []
    for i, n in enumerate(args.cameras):
        modes = ('one_node', 'n_nodes') if i % 2 == 0 else ('n_nodes', 'one_node')
        for mode in modes:
            time.sleep(3.0)
            r = cameras_run(n, mode, weights, rgb, args.camera_seconds, args.camera_backend,
                            args.json.parent)
            results.append(r)
            print(f'{n} camera(s) {mode:<8}: {r["answered_per_s"]:6.2f} frames/s answered, '
                  f'latency p50 {1000 * r["latency_p50_s"]:7.1f} ms p99 '
                  f'{1000 * r["latency_p99_s"]:7.1f} ms, RSS {r["rss_mb"]:7.0f} MB', flush=True)
            args.json.write_text(json.dumps({'machine': machine, 'cameras': results},
                                            indent=1))
    print('\n| cameras | setup | frames answered / s | per-camera latency p50 | p99 (worst '
          'camera) | RSS |')
    print('|---|---|---|---|---|---|')
    for r in results:
        setup = 'one node' if r['mode'] == 'one_node' else f'{r["cameras"]} nodes'
        print(f'| {r["cameras"]} | {setup} | {r["answered_per_s"]:.2f} | '
              f'{1000 * r["latency_p50_s"]:.1f} ms | {1000 * r["latency_p99_s"]:.1f} ms | '
              f'{r["rss_mb"]:.0f} MB |')
    by = {(r['cameras'], r['mode']): r for r in results}
    for n in args.cameras:
        if n > 1 and (n, 'one_node') in by and (n, 'n_nodes') in by:
            one, many = by[(n, 'one_node')], by[(n, 'n_nodes')]
            print(f'{n} cameras: throughput one node / {n} nodes = '
                  f'{one["answered_per_s"] / many["answered_per_s"]:.2f}, RSS = '
                  f'{one["rss_mb"] / many["rss_mb"]:.2f}')
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
