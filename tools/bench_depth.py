#!/usr/bin/env python3
"""What the 3D stage (depth.enabled) adds to a frame's processing, at 640x480.

    scripts/with_env python tools/bench_depth.py [--configs lraspp+maskrcnn_v2 lraspp]
        [--instances 20] [--n 0] [--json out/bench_depth.json]

One process, one rendered RGB-D tabletop (seg_ros.synthetic.rgbd_scene) at 640x480, random
weights. For every sample, after a quiet gap, it times alternately on the same frame:

1. *frame*: the pipeline from a raw rgb8 buffer to ready-to-publish host arrays (what the
   node's processing time is made of); Mask R-CNN at score threshold 0 with
   max_detections = ``--instances``, so exactly that many instances every frame;
2. *3D*: exactly what the node adds with depth.enabled: depth (16UC1) to metres on the
   device, per-instance points, median and 2-98 % box, the stride-2 semantic cloud, and the
   messages built from them (Detection3DArray, both PointCloud2 via sensor_msgs_py).
   Markers are built only while someone subscribes and are not included.
3. *3D in a target frame*: the same with ``depth.target_frame`` (every point moved by a
   rigid transform before the statistics; the tf2 lookup itself is not included).

Prints medians, p90 and the median of the per-sample ratio 3D / frame; writes --json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import machine_facts

from seg_ros.core.inference.instances import InstanceSegmenter
from seg_ros.core.inference.pipeline import Pipeline, resolve_device
from seg_ros.core.inference.semantic import SemanticSegmenter
from seg_ros.core.models.registry import load_instance_model, load_semantic_model
from seg_ros.core.spatial import geometry
from seg_ros.core.spatial.imaging import buffer_to_frame
from seg_ros.synthetic.rgbd_scene import render

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = {'lraspp+maskrcnn_v2': ('lraspp_mobilenet_v3_large', 'maskrcnn_resnet50_fpn_v2'),
           'lraspp': ('lraspp_mobilenet_v3_large', None),
           'maskrcnn_v2': (None, 'maskrcnn_resnet50_fpn_v2')}


def build(cfg: str, device, instances: int) -> Pipeline:
    sem_name, inst_name = CONFIGS[cfg]
    sem = inst = None
    if sem_name:
        sem = SemanticSegmenter(load_semantic_model(sem_name, 'none', 21, device=device),
                                device, input_size=0)
    if inst_name:
        loaded = load_instance_model(inst_name, 'none', 91, device=device,
                                     score_threshold=0.0, max_detections=instances)
        inst = InstanceSegmenter(loaded, device, 0.0, 0.5, instances)
    return Pipeline(device, sem, inst)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--configs', nargs='+', default=['lraspp+maskrcnn_v2', 'lraspp'],
                    choices=list(CONFIGS))
    ap.add_argument('--instances', type=int, default=20)
    ap.add_argument('--n', type=int, default=0, help='samples (0: 8 with Mask R-CNN, else 30)')
    ap.add_argument('--gap', type=float, default=0.3, help='quiet seconds before a sample')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'bench_depth.json')
    args = ap.parse_args()
    from sensor_msgs.msg import Image  # noqa: F401  (message types only, no node)

    from seg_ros.ros import messages

    device = resolve_device('auto')
    print(f'machine: {machine_facts(device)}', flush=True)
    sc = render(640, 480)
    h, w = sc.rgb.shape[:2]
    data = sc.rgb.tobytes()
    depth_mm = sc.depth_16uc1()
    depth_bytes = depth_mm.tobytes()
    intr = geometry.intrinsics_from(sc.k, sc.p)
    header = Image().header
    results = []
    for cfg in args.configs:
        pipe = build(cfg, device, args.instances)
        n = args.n or (8 if CONFIGS[cfg][1] else 30)
        names = [str(i) for i in range(91)]
        frame_s, d3_s, d3tf_s, ratio, counts = [], [], [], [], []
        tr = geometry.RigidTransform.from_quaternion((0.4, -0.1, 0.9), (0.7, 0.1, 0.1, 0.7))
        for i in range(n + 2):
            time.sleep(args.gap)
            t0 = time.perf_counter()
            res = pipe(buffer_to_frame('rgb8', h, w, w * 3, False, data))
            t1 = time.perf_counter()

            def stage_3d(transform=None, res=res, names=names) -> float:
                """The node's 3D stage on ``res``: seconds."""
                t = time.perf_counter()
                depth, scale = geometry.depth_array('16UC1', h, w, w * 2, False, depth_bytes)
                out = geometry.frame_3d(res, depth, scale, intr, 0.1, 20.0, 2, transform)
                if out.instances is not None:
                    messages.detections_3d(header, res.instances, out.instances, names, 20)
                    messages.instance_cloud(header, out.instances)
                if out.semantic is not None:
                    messages.semantic_cloud(header, out.semantic)
                return time.perf_counter() - t
            plain, moved = stage_3d(), stage_3d(tr)
            if i >= 2:  # warm-up
                frame_s.append(t1 - t0)
                d3_s.append(plain)
                d3tf_s.append(moved)
                ratio.append(plain / (t1 - t0))
                counts.append(len(res.instances) if res.instances is not None else 0)
        ms = lambda xs, q: float(np.percentile(xs, q) * 1000)  # noqa: E731
        row = {'config': cfg, 'size': f'{w}x{h}', 'n': n, 'instances': int(np.median(counts)),
               'frame_p50_ms': ms(frame_s, 50), 'frame_p90_ms': ms(frame_s, 90),
               'depth3d_p50_ms': ms(d3_s, 50), 'depth3d_p90_ms': ms(d3_s, 90),
               'depth3d_target_frame_p50_ms': ms(d3tf_s, 50),
               'ratio_p50': float(np.median(ratio)), 'ratio_max': float(np.max(ratio))}
        results.append(row)
        print(f"{cfg:20s} {row['size']} instances={row['instances']:3d}  frame p50 "
              f"{row['frame_p50_ms']:8.1f} ms  3D p50 {row['depth3d_p50_ms']:6.2f} ms "
              f"(p90 {row['depth3d_p90_ms']:.2f}; in a target frame "
              f"{row['depth3d_target_frame_p50_ms']:.2f})  3D/frame p50 "
              f"{row['ratio_p50']:.4f} max {row['ratio_max']:.4f}", flush=True)
        del pipe
    out = {'device': str(device), 'machine': machine_facts(device), 'results': results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
