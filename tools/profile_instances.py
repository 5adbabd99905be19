#!/usr/bin/env python3
"""Where a Mask R-CNN frame's time goes: the model's parts timed inside one forward.

    scripts/with_env python tools/profile_instances.py --model maskrcnn_resnet50_fpn_v2 \\
        --backend onnxruntime --proposals 200 --instances 10 --size 640x480 --n 6

The model as the node loads it (random seeded weights, score threshold 0 and
``max_detections`` = ``--instances``: exactly that many instances; ``--proposals`` as
``instance.max_proposals``), compiled as ``instance.backend`` does unless ``--backend
torch``; each part's call (transform, trunk, RPN, ROI align, box head, detection NMS, mask
head, mask pasting) is timed by wrapping its ``forward``; medians over ``--n`` frames after
two warm ones, a quiet gap before each. Parts nest: ``roi_heads`` contains the box and mask
rows, ``rpn`` the RPN head (0 when the compiled trunk computed it).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from bench_common import ROOT, machine_facts, scene

from seg_ros.core.models.instance_backends import compile_instance_model
from seg_ros.core.models.registry import load_instance_model


def _timed(times: dict[str, list[float]], obj, attr: str, key: str) -> None:
    inner = getattr(obj, attr)

    def call(*args, **kwargs):
        t0 = time.perf_counter()
        res = inner(*args, **kwargs)
        times.setdefault(key, []).append(time.perf_counter() - t0)
        return res
    object.__setattr__(obj, attr, call)  # an instance attribute: shadows the method


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='maskrcnn_resnet50_fpn_v2')
    ap.add_argument('--backend', default='onnxruntime',
                    choices=['torch', 'onnxruntime', 'openvino'])
    ap.add_argument('--proposals', type=int, default=200)
    ap.add_argument('--instances', type=int, default=10)
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--n', type=int, default=6)
    ap.add_argument('--gap', type=float, default=0.3)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    device = torch.device('cpu')
    print(f'machine: {machine_facts(device)}', flush=True)
    torch.manual_seed(0)
    m = load_instance_model(args.model, 'none', 91, score_threshold=0.0,
                            max_detections=args.instances,
                            max_proposals=args.proposals).model.eval()
    if args.backend != 'torch':
        compile_instance_model(m, args.backend, args.model, device,
                               cache_dir=str(ROOT / 'out' / 'backend_cache'),
                               report=lambda line: print(line, flush=True))
    times: dict[str, list[float]] = {}
    heads = m.roi_heads
    parts = [(m._modules['transform'], 'forward', 'transform'),
             (m._modules['backbone'], 'forward', 'trunk'),
             (m._modules['rpn'], 'forward', 'rpn'),
             (m.rpn._modules['head'], 'forward', '  rpn head'),
             (m.rpn, 'filter_proposals', '  proposal selection'),
             (heads, 'forward', 'roi_heads'),
             (heads._modules['box_roi_pool'], 'forward', '  box ROI align'),
             (heads._modules['box_head'], 'forward', '  box head'),
             (heads._modules['box_predictor'], 'forward', '  box predictor'),
             (heads, 'postprocess_detections', '  detection NMS'),
             (heads._modules['mask_roi_pool'], 'forward', '  mask ROI align'),
             (heads._modules['mask_head'], 'forward', '  mask head'),
             (heads._modules['mask_predictor'], 'forward', '  mask predictor'),
             (m._modules['transform'], 'postprocess', 'mask pasting')]
    for obj, attr, key in parts:
        _timed(times, obj, attr, key)
    x = torch.from_numpy(scene(h, w)).permute(2, 0, 1).float().div(255)
    total = []
    with torch.inference_mode():
        for _ in range(args.n + 2):
            time.sleep(args.gap)
            t0 = time.perf_counter()
            out = m([x])[0]
            total.append(time.perf_counter() - t0)
    print(f'{args.model} {args.size} backend {args.backend} proposals {args.proposals} '
          f'instances {len(out["boxes"])}: medians of {args.n} frames')
    for _, _, key in parts:
        v = times.get(key, [])[2:]
        print(f'  {key:<22} {1000 * np.median(v) if v else 0.0:8.1f} ms')
    print(f'  {"whole forward":<22} {1000 * np.median(total[2:]):8.1f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main())
