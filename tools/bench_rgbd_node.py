#!/usr/bin/env python3
"""Unseen objects, node against node: ``instance.model: depth_objects`` and a learned instance
model (the light ``tabletop`` one by default), each in its own ``segment_node``, in one run.

    scripts/with_env python tools/bench_rgbd_node.py [--rgbd ../shared/data/rgbd_real]
        [--weights tabletop] [--rounds 4] [--gap 0.3] [--json out/bench_rgbd_node.json]

Both nodes run with ``depth.enabled`` (3D, tracking on, the node's defaults otherwise), each
on its own input topics; every frame of the RGB-D folder (``images/``, ``depth/``,
``camera_params.json``) goes to one node, then after a quiet gap to the other, alternating
which goes first: a node waits idle while the other works. Latency = publish of the colour
image (its depth and camera_info went out just before) to receipt of the frame's last output
among detections, masks, detections_3d and the instance points (no overlay, no markers:
those are built only for a subscriber). Prints p50 / p90 per node and the median over frames
of the per-frame ratio depth_objects / learned.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import ROOT, machine_facts
from demo_frames import rgbd_folder_frames

from seg_ros.core.inference.pipeline import resolve_device

OUTPUTS = ('instances/detections', 'instances/masks', 'instances/detections_3d',
           'instances/points')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rgbd', type=Path, default=ROOT.parent / 'shared' / 'data' / 'rgbd_real')
    ap.add_argument('--weights', default='tabletop', help='the learned model (instance.weights)')
    ap.add_argument('--rounds', type=int, default=4, help='passes over the folder')
    ap.add_argument('--gap', type=float, default=0.3, help='quiet seconds before a sample')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'bench_rgbd_node.json')
    args = ap.parse_args()

    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Float64MultiArray
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    from seg_ros.testing.remote import camera_info_msg, frame_msg, own_domain, served
    frames = list(rgbd_folder_frames(args.rgbd, 0))
    if not frames:
        raise SystemExit(f'bench_rgbd_node: no frames in {args.rgbd}')
    sizes = ','.join(dict.fromkeys(f'{f[1].shape[1]}x{f[1].shape[0]}' for f in frames))
    machine = machine_facts(resolve_device('auto'))
    print(f'machine: {machine}', flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    methods = {'depth_objects': ['-p', 'instance.model:=depth_objects'],
               'learned': ['-p', f'instance.weights:={args.weights}']}
    node_args, logs = [], []
    for name, extra in methods.items():
        node_args.append([
            '-r', f'__node:=bench_{name}', '-p', 'device:=cpu', '-p', 'semantic.enabled:=false',
            '-p', 'diagnostics_period:=1.0',
            '-p', 'instance.enabled:=true', '-p', 'depth.enabled:=true',
            '-p', 'instance.tracking:=true', '-p', f'warmup_size:={sizes}',
            '-p', f'backend.cache_dir:={args.json.parent / "backend_cache"}',
            '-r', f'image:=/bench_{name}/image', '-r', f'depth:=/bench_{name}/depth',
            '-r', f'camera_info:=/bench_{name}/camera_info', *extra])
        logs.append(args.json.parent / f'bench_rgbd_{name}.log')
    types = {'instances/detections': Detection2DArray, 'instances/masks': Image,
             'instances/detections_3d': Detection3DArray, 'instances/points': PointCloud2}
    lat: dict[str, list[float]] = {m: [] for m in methods}
    found: dict[str, list[int]] = {m: [] for m in methods}
    inside: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    per_topic: dict[str, dict[str, list[float]]] = {m: {o: [] for o in OUTPUTS} for m in methods}
    with served(node_args, own_domain(70, 30), logs, 'seg_ros_bench_rgbd',
                ready_timeout=600) as (_, client):
        boxes = {m: [client.collect(types[o], f'/bench_{m}/{o}') for o in OUTPUTS]
                 for m in methods}
        timing: dict[str, dict[int, tuple[float, float]]] = {m: {} for m in methods}
        for m in methods:  # ~/timing: [stamp_s, forward_s, processing_s] (no header)
            client.node.create_subscription(
                Float64MultiArray, f'/bench_{m}/timing',
                lambda msg, box=timing[m]: box.__setitem__(round(msg.data[0] * 1e9),
                                                           (msg.data[1], msg.data[2])), 10)
        diags: list = []
        client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 50)
        pubs = {m: (client.node.create_publisher(Image, f'/bench_{m}/image', 1),
                    client.node.create_publisher(Image, f'/bench_{m}/depth', 5),
                    client.node.create_publisher(CameraInfo, f'/bench_{m}/camera_info', 5))
                for m in methods}
        client.spin_until(lambda: all(p.get_subscription_count() > 0 for ps in pubs.values()
                                      for p in ps), 60)
        stamp = 0
        for r in range(args.rounds + 1):  # round 0 warms up (not counted)
            for i, (_, rgb, depth_mm, k, p) in enumerate(frames):
                order = list(methods) if (r + i) % 2 == 0 else list(methods)[::-1]
                for m in order:
                    stamp += 10**9
                    img_pub, depth_pub, info_pub = pubs[m]
                    info = camera_info_msg(k, p, rgb.shape[1], rgb.shape[0], stamp)
                    dmsg = frame_msg(depth_mm, stamp, encoding='16UC1')

                    def before(info=info, dmsg=dmsg, info_pub=info_pub,
                               depth_pub=depth_pub) -> None:
                        info_pub.publish(info)
                        depth_pub.publish(dmsg)
                        client.spin_until(lambda: False, 0.05)
                    time.sleep(args.gap)
                    t = client.exchange(img_pub, frame_msg(rgb, stamp), boxes[m], timeout=60,
                                        resend=5.0, before=before)
                    if t is None:
                        print(f'{m}: frame {i} not answered within 60 s', flush=True)
                        continue
                    client.spin_until(lambda m=m, stamp=stamp: stamp in timing[m], 2.0)
                    if r > 0:
                        lat[m].append(t)
                        last = max(b[stamp][1] for b in boxes[m])  # t after the publish
                        for o, b in zip(OUTPUTS, boxes[m], strict=True):
                            per_topic[m][o].append(t - (last - b[stamp][1]))
                        inside[m].append(timing[m].get(stamp, (np.nan, np.nan)))
                        found[m].append(len(boxes[m][0][stamp][0].detections))
        client.spin_until(lambda: False, 1.5)  # one more diagnostics message each
    stages: dict[str, dict[str, float]] = {}
    for m in methods:  # the node's own stage medians (/diagnostics stage.*_p50_s)
        mine = [st for d in diags for st in d.status if f'bench_{m}' in st.name]
        if mine:
            stages[m] = {kv.key[6:-6]: 1000 * float(kv.value) for kv in mine[-1].values
                         if kv.key.startswith('stage.') and kv.key.endswith('_p50_s')}
    a, b = np.array(lat['depth_objects']), np.array(lat['learned'])
    n = min(len(a), len(b))
    res = {'machine': machine, 'frames': len(frames), 'rounds': args.rounds,
           'weights': args.weights, 'source': str(args.rgbd)}
    for m, v in (('depth_objects', a), ('learned', b)):
        res[m] = {'p50_ms': float(np.percentile(v, 50) * 1000),
                  'p90_ms': float(np.percentile(v, 90) * 1000),
                  'objects_per_frame': float(np.mean(found[m])),
                  'forward_p50_ms': float(np.nanmedian([f for f, _ in inside[m]]) * 1000),
                  'processing_p50_ms': float(np.nanmedian([p for _, p in inside[m]]) * 1000),
                  'per_output_p50_ms': {o: float(np.percentile(v, 50) * 1000)
                                        for o, v in per_topic[m].items()}}
    res['ratio_p50'] = float(np.median(a[:n] / b[:n]))
    res['node_stages_p50_ms'] = stages
    args.json.write_text(json.dumps(res, indent=1))
    print('| node | p50 | p90 | in the node: processing p50 | of it model p50 | '
          'objects / frame |\n|---|---|---|---|---|---|')
    for m in methods:
        v = res[m]
        print(f'| {m} | {v["p50_ms"]:.1f} ms | {v["p90_ms"]:.1f} ms | '
              f'{v["processing_p50_ms"]:.1f} ms | {v["forward_p50_ms"]:.1f} ms | '
              f'{v["objects_per_frame"]:.1f} |')
    for m in methods:
        print(f'{m} p50 per output (ms from the image\'s publish): ' + ', '.join(
            f'{o.split("/")[-1]} {v:.1f}' for o, v in res[m]['per_output_p50_ms'].items()))
    for m, st in stages.items():
        print(f'{m} stages p50 (ms, the node\'s diagnostics): ' + ', '.join(
            f'{k} {v:.1f}' for k, v in sorted(st.items(), key=lambda kv: -kv[1])))
    print(f'depth_objects / learned, median of per-frame ratios: {res["ratio_p50"]:.3f} '
          f'({n} frames; torch threads here {torch.get_num_threads()})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
