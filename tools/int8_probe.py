#!/usr/bin/env python3
"""Would static INT8 make the semantic node faster? A probe (issue 32), not a feature.

    scripts/with_env python tools/int8_probe.py --camvid ../shared/data/camvid --size 640x480

The shipped CamVid model's compiled graph exactly as the node exports it (uint8 pixels in,
labels out: normalise, antialiased resize to 360, LR-ASPP, upsample, class maximum) is
quantized with ONNX Runtime's static post-training quantization (QDQ, per-channel int8
weights, uint8 activations, MinMax calibration on ``--calib`` CamVid training frames), once
with every operator ONNX Runtime can quantize and once with the convolutions only; with
``nncf`` installed also by NNCF for OpenVINO (and OpenVINO's fp32 of the same graph). Printed:
label agreement with ONNX Runtime's fp32 on every 5th validation frame, each one's p50 over
``--n`` calls (alternating, a quiet gap before each), and ONNX Runtime's own per-operator
profile: where the time goes. Files go to a temporary folder; nothing is cached for the node.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import machine_facts
from PIL import Image


def _frames(folder: Path, every: int, limit: int, w: int, h: int) -> list[np.ndarray]:
    files = sorted(folder.glob('*.png'))[::every][:limit]
    return [np.asarray(Image.open(f).convert('RGB').resize((w, h), Image.BILINEAR))[None].copy()
            for f in files]


def _session(path: Path, profile: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = profile
    so.profile_file_prefix = str(path.parent / 'ort_profile')  # beside the graph, not in cwd
    return ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])


def _ort_runner(sess):
    return lambda x: sess.run(None, {'image': x})[0]


def _ov_runner(request):
    return lambda x: request.infer({0: x})[0].copy()


def _op_profile(path: Path, x: np.ndarray, runs: int = 10) -> list[tuple[str, float]]:
    sess = _session(path, profile=True)
    for _ in range(runs):
        sess.run(None, {'image': x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            per_op[e['args'].get('op_name')] += e['dur'] / runs / 1000.0
    return per_op.most_common(6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--camvid', type=Path, default=Path('../shared/data/camvid'))
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--calib', type=int, default=32, help='calibration frames')
    ap.add_argument('--n', type=int, default=15)
    args = ap.parse_args()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from seg_ros.core.inference.semantic import SemanticSegmenter
    from seg_ros.core.models.registry import load_semantic_model
    w, h = (int(v) for v in args.size.split('x'))
    if not (args.camvid / 'train').is_dir():
        print(f'int8_probe: no CamVid at {args.camvid}', file=sys.stderr)
        return 2
    print(json.dumps(machine_facts("cpu")))
    tmp = Path(tempfile.mkdtemp(prefix='seg_ros_int8_'))
    seg = SemanticSegmenter(load_semantic_model('', 'camvid'), 'cpu', backend='onnxruntime',
                            cache_dir=str(tmp))
    fp32 = seg.compiled.export((1, h, w, 3), torch.uint8)
    pre = tmp / 'pre.onnx'
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    calib = _frames(args.camvid / 'train', 12, args.calib, w, h)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {'image': x}

    graphs = {'fp32': fp32}
    for name, ops in (('int8 every op', None), ('int8 convolutions', ['Conv'])):
        out = tmp / f'{name.replace(" ", "_")}.onnx'
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                        calibrate_method=CalibrationMethod.MinMax)
        graphs[name] = out
    sessions = {n: _session(p) for n, p in graphs.items()}
    runners = {n: _ort_runner(sess) for n, sess in sessions.items()}
    try:  # OpenVINO, fp32 and NNCF's int8 of the same graph, when nncf is installed
        import nncf
        import openvino as ov
        core = ov.Core()
        cfg = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': 'f32'}
        ov_fp32 = core.read_model(str(fp32))
        ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset(calib), subset_size=len(calib),
                                preset=nncf.QuantizationPreset.PERFORMANCE)
        for name, model in (('openvino fp32', ov_fp32), ('openvino nncf int8', ov_int8)):
            req = core.compile_model(model, 'CPU', cfg).create_infer_request()
            runners[name] = _ov_runner(req)
    except ImportError:
        print('(nncf not installed: no OpenVINO rows; pip install nncf to add them)')
    val = _frames(args.camvid / 'val', 5, 1000, w, h)
    for name, run in runners.items():
        if name == 'fp32':
            continue
        agree = [float((run(x) == runners['fp32'](x)).mean()) for x in val]
        print(f'{name}: labels equal to ONNX Runtime fp32 on {100 * np.mean(agree):.2f} % of '
              f'the pixels of {len(val)} validation frames')
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.n):
        for name, run in runners.items():
            time.sleep(0.3)
            t0 = time.perf_counter()
            run(val[0])
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times['fp32'])
    for name, ts in times.items():
        p50 = statistics.median(ts)
        ops = ''
        if name in graphs:
            ops = '; ms per call: ' + ', '.join(
                f'{op} {ms:.1f}' for op, ms in _op_profile(graphs[name], val[0]))
        print(f'{name}: p50 {1e3 * p50:.1f} ms ({p50 / base:.2f}x ONNX Runtime fp32){ops}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
