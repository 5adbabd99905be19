#!/usr/bin/env python3
"""INT8 graphs alone, against eager PyTorch and the fp32 graphs, in one run (issue 32).

    scripts/with_env python tools/int8_probe.py --model camvid --size 640x480
    scripts/with_env python tools/int8_probe.py --model lraspp --size 640x480

The graph the node compiles for a semantic model (uint8 pixels in, labels out: normalise,
resize to the model's input size, the model, upsample, class maximum), exported exactly as
the node exports it for each backend, quantized exactly as ``precision: int8`` quantizes it
(:mod:`seg_ros.core.models.quantize`, the model's own calibration set), and timed as the
backend alone -- no node, no DDS -- beside the bare eager PyTorch forward (fp32,
channels-last, on a prepared normalised tensor at the model's input size: the benchmark's
"eager" floor). OpenVINO's int8 graph runs twice: with the float remainder at f32 (what a CPU
without BF16 runs) and, on a CPU with BF16, at bf16 (what the node runs there). Printed per
graph: p50 over ``--n`` alternating calls with a quiet gap before each, ratio to eager, and
the share of pixels whose label equals ONNX Runtime fp32's on generated/CamVid frames.
``--model camvid`` is the shipped model (its CamVid calibration frames); ``lraspp`` is the
benchmark's random-weight LR-ASPP, 21 classes, at the image's own size (generated tables).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import machine_facts, scene

from seg_ros.core.inference.semantic import SemanticSegmenter
from seg_ros.core.models import quantize
from seg_ros.core.models.registry import load_semantic_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', choices=('camvid', 'lraspp'), default='camvid')
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--n', type=int, default=15)
    ap.add_argument('--gap', type=float, default=0.3)
    args = ap.parse_args()
    import openvino as ov
    w, h = (int(v) for v in args.size.split('x'))
    print(json.dumps(machine_facts('cpu')))
    torch.manual_seed(0)
    loaded = load_semantic_model('', 'camvid') if args.model == 'camvid' else \
        load_semantic_model('lraspp_mobilenet_v3_large', 'none', 21)
    tmp = Path(tempfile.mkdtemp(prefix='seg_ros_int8_'))
    calib = quantize.calibration_set('', loaded.calibration, lambda _: None)
    shape = (1, h, w, 3)
    runners, agree_with = {}, None
    for backend in ('onnxruntime', 'openvino'):
        seg = SemanticSegmenter(loaded, 'cpu', backend=backend, cache_dir=str(tmp),
                                calibration=lambda: calib)
        onnx_file = seg.compiled.export(shape, torch.uint8)
        inputs = seg.compiled.calibration_inputs(shape, torch.uint8)
        if backend == 'onnxruntime':
            q = tmp / 'ort_int8.onnx'
            quantize.quantize_onnxruntime(onnx_file, inputs, q,
                                          reduce_range=not quantize.has_vnni())
            for name, path in (('onnxruntime fp32', onnx_file), ('onnxruntime int8', q)):
                sess = seg.compiled.ort_session(path)
                runners[name] = (lambda s: lambda x: s.run(None, {'image': x})[0])(sess)
            agree_with = runners['onnxruntime fp32']
            continue
        q = tmp / 'ov_int8.xml'
        quantize.quantize_openvino(onnx_file, inputs, q)
        core = ov.Core()
        hints = [('openvino fp32', onnx_file, 'f32'), ('openvino int8, f32 rest', q, 'f32')]
        if 'BF16' in core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'):
            hints += [('openvino bf16', onnx_file, 'bf16'),
                      ('openvino int8, bf16 rest', q, 'bf16')]
        for name, path, hint in hints:
            req = core.compile_model(str(path), 'CPU', {
                'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': hint}
            ).create_infer_request()
            runners[name] = (lambda r: lambda x: r.infer({0: x})[0].copy())(req)
    frames = [quantize.fit(f, h, w)[None] for f in (
        quantize.generated_frames(4) if args.model == 'lraspp' else calib.frames[::3])]
    frames.append(scene(h, w)[None])
    for name, run in runners.items():
        if run is not agree_with:
            same = np.mean([(run(x) == agree_with(x)).mean() for x in frames])
            print(f'{name}: labels equal to ONNX Runtime fp32 on {100 * same:.2f} % of '
                  f'the pixels of {len(frames)} frames')
    # the eager floor: the model alone on a prepared tensor at its input size
    x = torch.from_numpy(frames[-1][0]).permute(2, 0, 1)[None].float().div(255)
    seg = SemanticSegmenter(loaded, 'cpu')
    if seg.input_size and seg.input_size != min(h, w):
        s = seg.input_size / min(h, w)
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode='bilinear',
                          antialias=s < 1)
    xs = seg.normalise(x)

    def eager(_):
        with torch.inference_mode():
            seg.model(xs)
    runners = {'eager torch fp32': eager, **runners}
    times: dict[str, list[float]] = {n: [] for n in runners}
    order = list(runners.items())
    for i in range(args.n):
        for name, run in (order if i % 2 else order[::-1]):
            time.sleep(args.gap)
            t0 = time.perf_counter()
            run(frames[-1])
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times['eager torch fp32'])
    for name, ts in times.items():
        p50 = statistics.median(ts)
        print(f'{args.model} {args.size} {name}: p50 {1e3 * p50:.1f} ms, '
              f'{p50 / base:.2f}x eager')
    return 0


if __name__ == '__main__':
    sys.exit(main())
