#!/usr/bin/env python3
"""Mask R-CNN trunk (backbone + FPN + RPN head) alone: eager torch against its compiled forms.

    scripts/with_env python tools/bench_backbone.py --models maskrcnn_resnet50_fpn_v2 \\
        maskrcnn_mobilenet_v3_large_fpn --size 640x480 --n 15

The largest part ``instance.backend`` compiles (the box and mask heads are the rest): per
model, the eager trunk and each installed compiled backend run on the same padded, normalised
640x480 batch, in one process, in turn (order rotated every round), a quiet gap before
each sample. Prints medians and the ratio to eager per round (the headline: drift-free).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import ROOT, machine_facts, pct

from seg_ros.core.models import backends
from seg_ros.core.models.instance_backends import CompiledFeatures
from seg_ros.core.models.registry import load_instance_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--models', nargs='+', default=['maskrcnn_resnet50_fpn_v2',
                                                    'maskrcnn_mobilenet_v3_large_fpn'])
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--n', type=int, default=15)
    ap.add_argument('--gap', type=float, default=0.3)
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'bench_backbone.json')
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split('x'))
    device = torch.device('cpu')
    print(f'machine: {machine_facts(device)}', flush=True)
    names = ['torch'] + [b for b in ('onnxruntime', 'openvino') if backends.installed(b)]
    results = {}
    for model_name in args.models:
        torch.manual_seed(0)
        m = load_instance_model(model_name, 'none', 91).model.eval()
        x = torch.rand(1, 3, (h + 31) // 32 * 32, (w + 31) // 32 * 32)
        runs = {"torch": lambda m=m, x=x: m.rpn.head(list(m.backbone(x).values()))}
        for b in names[1:]:
            cf = CompiledFeatures(b, m.backbone, model_name, device,
                                  cache_dir=str(ROOT / 'out' / 'backend_cache'),
                                  report=lambda line: print(line, flush=True),
                                  rpn_head=m.rpn.head)
            runs[b] = lambda cf=cf, x=x: cf.trunk(x)
        times = {k: [] for k in runs}
        with torch.inference_mode():
            for f in runs.values():  # compile / warm
                f()
                f()
            for i in range(args.n):
                order = names[i % len(names):] + names[:i % len(names)]
                for k in order:
                    time.sleep(args.gap)
                    t0 = time.perf_counter()
                    runs[k]()
                    times[k].append(time.perf_counter() - t0)
        res = {k: {'p50_ms': 1000 * pct(v, 50),
                   'ratio_to_torch_median': pct(np.array(v) / np.array(times['torch']), 50)}
               for k, v in times.items()}
        results[model_name] = res
        for k, r in res.items():
            print(f'{model_name:<34} {args.size} {k:<12} trunk p50 {r["p50_ms"]:8.1f} ms'
                  f'  / torch {r["ratio_to_torch_median"]:.3f}', flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({'machine': machine_facts(device), 'size': args.size,
                                     'n': args.n, 'results': results}, indent=1))
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
