#!/usr/bin/env python3
"""Mean IoU of a semantic weights file on CamVid-style data, directly and through the node.

    scripts/with_env eval_camvid --weights camvid \
        --images ../shared/data/camvid/val --labels ../shared/data/camvid/valannot

1. Directly: the model (seg_ros.core, no ROS) labels every image.
2. Through the node: segment_node runs as a separate process; every image is published as
   a sensor_msgs/Image camera frame over DDS and the label image it publishes is received.
Both confusion matrices (11 classes, label 11 = void ignored) give per-class IoU and mIoU;
the tool reports whether the two label sets are identical pixel for pixel and exits non-zero
when they are not. ``--json FILE`` writes the figures.

``--backend NAME[:PRECISION]`` (torch, onnxruntime, openvino, openvino:bf16, auto; default
torch) runs both the direct and the node evaluation on that backend (``semantic.backend``,
``precision``); for a backend other than torch the torch fp32 direct evaluation runs too,
and the tool prints the mIoU difference and the share of pixels whose label agrees, and
exits non-zero when the mIoU is more than 0.3 from torch's or agreement is below 99.5 %;
for ``int8`` (``openvino:int8``, ``onnxruntime:int8``: a quantized graph, built during the
warm-up at the images' size and calibrated on the set the weights carry) when the mIoU is
more than 1.0 from torch's or the mean agreement is below 95 %.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from seg_ros.core.inference.pipeline import Pipeline
from seg_ros.core.inference.semantic import SemanticSegmenter
from seg_ros.core.models.quantize import calibration_set
from seg_ros.core.models.registry import load_semantic_model
from seg_ros.core.spatial.imaging import buffer_to_frame
from seg_ros.testing.remote import large_data_transport
from seg_ros.training.metrics import confusion_matrix, iou_from_confusion

#: the repository (scripts/with_env sets SEG_ROS_ROOT), else the working directory
ROOT = Path(os.environ.get('SEG_ROS_ROOT') or Path.cwd())
CACHE = ROOT / 'out' / 'backend_cache'  # exports stay inside the repository (git-ignored)

NUM_CLASSES, IGNORE = 11, 11


def pairs(images: Path, labels: Path, limit: int):
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() == '.png')
    return [(images / n, labels / n) for n in names[:limit or None]]


def direct(weights: str, model: str, items, input_size: int, backend: str = 'torch',
           precision: str = 'fp32') -> list[np.ndarray]:
    loaded = load_semantic_model(model, weights, NUM_CLASSES)
    say = functools.partial(print, flush=True)
    seg = SemanticSegmenter(loaded, 'cpu', input_size=input_size, backend=backend,
                            precision=precision if backend != 'torch' else 'fp32',
                            cache_dir=str(CACHE), report=say,
                            calibration=lambda: calibration_set('', loaded.calibration, say))
    pipe = Pipeline(torch.device('cpu'), semantic=seg)
    if items:  # as the node does: an int8 graph is built in the warm-up
        w, h = PILImage.open(items[0][0]).size
        pipe.warm_up(h, w, keep_image=False)
    out = []
    for img_path, _ in items:
        rgb = np.asarray(PILImage.open(img_path).convert('RGB'))
        h, w = rgb.shape[:2]
        frame = buffer_to_frame('rgb8', h, w, w * 3, False, rgb.tobytes())
        out.append(pipe(frame, keep_image=False).semantic.labels)  # the node's path
    return out


def through_node(weights: str, model: str, items, input_size: int, log: Path,
                 backend: str = 'torch', precision: str = 'fp32') -> list[np.ndarray | None]:
    from sensor_msgs.msg import Image

    from seg_ros.testing.remote import decode, frame_msg, own_domain, served
    domain = own_domain()
    args = ['-p', 'device:=cpu', '-p', f'semantic.model:={model}',
            '-p', f'semantic.weights:={weights}', '-p', f'semantic.num_classes:={NUM_CLASSES}',
            '-p', f'semantic.input_size:={input_size}', '-p', f'semantic.backend:={backend}',
            '-p', f'precision:={precision}', '-p', f'backend.cache_dir:={CACHE}',
            '-r', 'image:=/camvid/image']
    if items:  # the images' size: the warm-up builds its graph (int8 only there)
        w, h = PILImage.open(items[0][0]).size
        args += ['-p', f'warmup_size:={w}x{h}']
    with served([args], domain, [log], 'seg_ros_eval', ready_timeout=300) as (_, client):
        labels = client.collect(Image, '/segmentation/semantic/labels')
        pub = client.node.create_publisher(Image, '/camvid/image', 10)
        client.spin_until(lambda: pub.get_subscription_count() > 0, 30)
        out: list[np.ndarray | None] = []
        for i, (img_path, _) in enumerate(items):
            rgb = np.asarray(PILImage.open(img_path).convert('RGB'))
            stamp = (i + 1) * 10**9
            lat = client.exchange(pub, frame_msg(rgb, stamp, 'camvid'), [labels],
                                  timeout=120.0, resend=10.0)
            out.append(None if lat is None else decode(labels.pop(stamp)[0])[:, :, 0])
        return out


def score(preds, items) -> tuple[float, list[float]]:
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for pred, (_, lab_path) in zip(preds, items, strict=True):
        gt = torch.from_numpy(np.asarray(PILImage.open(lab_path)).astype(np.int64))
        conf += confusion_matrix(torch.from_numpy(pred.astype(np.int64)), gt, NUM_CLASSES,
                                 IGNORE)
    per = iou_from_confusion(conf)
    return float(np.mean(per)), per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--weights', default='camvid', help='camvid or a state-dict file')
    ap.add_argument('--model', default='lraspp_mobilenet_v3_large')
    ap.add_argument('--images', type=Path, default=ROOT.parent / 'shared/data/camvid/val')
    ap.add_argument('--labels', type=Path,
                    default=ROOT.parent / 'shared/data/camvid/valannot')
    ap.add_argument('--input-size', type=int, default=-1,
                    help="shorter side fed to the model (-1: the weights' own)")
    ap.add_argument('--limit', type=int, default=0, help='first N images only')
    ap.add_argument('--skip-node', action='store_true', help='direct evaluation only')
    ap.add_argument('--backend', default='torch',
                    help='NAME[:PRECISION]: torch, onnxruntime, openvino, openvino:bf16, '
                         'openvino:int8, onnxruntime:int8, auto')
    ap.add_argument('--json', type=Path)
    args = ap.parse_args()
    transports = large_data_transport()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    items = pairs(args.images, args.labels, args.limit)
    import yaml

    from seg_ros.core.models.registry import shipped_config_path
    names = (yaml.safe_load(shipped_config_path('camvid.yaml').read_text())['class_names'])

    backend, _, precision = args.backend.partition(':')
    precision = precision or 'fp32'
    t0 = time.time()
    d_preds = direct(args.weights, args.model, items, args.input_size, backend, precision)
    d_miou, d_per = score(d_preds, items)
    print(f'direct ({args.backend}): {len(items)} images, mIoU {100 * d_miou:.2f} '
          f'({time.time() - t0:.0f}s)', flush=True)
    result = {'dds_transports': transports, 'weights': args.weights, 'backend': args.backend,
              'images': str(args.images), 'count': len(items),
              'direct': {'miou': d_miou, 'per_class': dict(zip(names, d_per, strict=True))}}
    ok = True
    if backend != 'torch':
        t_preds = direct(args.weights, args.model, items, args.input_size)
        t_miou, _ = score(t_preds, items)
        agree = float(np.mean([(a == b).mean() for a, b in zip(d_preds, t_preds, strict=True)]))
        worst = float(min((a == b).mean() for a, b in zip(d_preds, t_preds, strict=True)))
        delta = 100 * (d_miou - t_miou)
        ok = abs(delta) <= 1.0 and agree >= 0.95 if precision == 'int8' else \
            abs(delta) <= 0.3 and worst >= 0.995
        result['torch_fp32'] = {'miou': t_miou, 'miou_difference_points': delta,
                                'pixel_agreement_mean': agree, 'pixel_agreement_worst': worst}
        print(f'torch fp32: mIoU {100 * t_miou:.2f}; {args.backend} - torch = {delta:+.2f} '
              f'points; labels agree on {100 * agree:.3f} % of pixels (worst image '
              f'{100 * worst:.3f} %)', flush=True)
    if not args.skip_node:
        t0 = time.time()
        log = Path(os.environ.get('TMPDIR', '/tmp')) / f'seg_ros_eval_{os.getpid()}.log'
        n_preds = through_node(args.weights, args.model, items, args.input_size, log,
                               backend, precision)
        missing = sum(p is None for p in n_preds)
        same = sum(p is not None and np.array_equal(p, d)
                   for p, d in zip(n_preds, d_preds, strict=True))
        if missing:
            ok = False
            print(f'node: {missing} frames unanswered (log {log})')
        else:
            n_miou, n_per = score(n_preds, items)
            ok = ok and same == len(items) and n_miou == d_miou
            result['node'] = {'miou': n_miou, 'per_class': dict(zip(names, n_per, strict=True))}
            print(f'node:   {len(items)} images, mIoU {100 * n_miou:.2f} '
                  f'({time.time() - t0:.0f}s)')
        result['identical_label_images'] = same
        print(f'label images identical (direct vs node): {same}/{len(items)}')
    print('\nper-class IoU (direct):')
    for n, v in zip(names, d_per, strict=True):
        print(f'  {n:<11} {100 * v:6.2f}')
    print(f'  {"mean":<11} {100 * d_miou:6.2f}')
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
