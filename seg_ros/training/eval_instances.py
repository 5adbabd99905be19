"""COCO mask AP, AP50 and AP75 of an instance weights file, directly and through the node.

    ros2 run seg_ros eval_instances --weights my_parts.pt --coco VAL.json --images DIR

Direct: the node's own computation (the weights loaded as ``instance.weights`` loads them,
the frame through :class:`~seg_ros.core.inference.pipeline.Pipeline`) in this process. Node: a
``segment_node`` over DDS is sent every image and its ``~/instances/detections`` and
``~/instances/masks`` are scored. Both score the masks as the node publishes them (the id
image: where two masks overlap, the higher-scored instance keeps the pixel; every hypothesis
of a detection is scored with its mask) with
pycocotools' COCOeval. Exit 0 only when both ran and agree (AP within 0.005, and the same
number of instances on every image), 1 otherwise, 2 for a bad dataset or weights file.

``--backend NAME[:PRECISION]`` (default ``torch``; e.g. ``openvino:int8``) runs both on that
``instance.backend`` and ``precision``: the compiled trunk and heads, an int8 trunk built in
the warm-up at the first image's size and calibrated on the set the weights carry.
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

from seg_ros.core.models.registry import ModelLoadError
from seg_ros.core.spatial.imaging import buffer_to_frame
from seg_ros.training.coco import CocoSet, DatasetError, evaluate, load_coco, prediction

#: the repository (scripts/with_env sets SEG_ROS_ROOT), else the working directory
ROOT = Path(os.environ.get('SEG_ROS_ROOT') or Path.cwd())
CACHE = ROOT / 'out' / 'backend_cache'  # compiled graphs stay inside the repository

#: Detections per image and score threshold of COCO's evaluation protocol.
MAX_DETECTIONS = 100
SCORE_THRESHOLD = 0.05
AP_TOLERANCE = 0.005


def _to_predictions(dataset: CocoSet, image_id: int, id_map: np.ndarray,
                    rows: list[tuple[int, str, float]]) -> list[dict]:
    """COCO results of one image from (mask value, class name, score) rows."""
    out = []
    for value, name, score in rows:
        if name not in dataset.class_names[1:]:
            continue
        cat = dataset.cat_ids[dataset.class_names.index(name) - 1]
        out.append(prediction(image_id, cat, id_map == value, score))
    return out


def direct(weights: str, dataset: CocoSet, threshold: float, device: str = 'cpu',
           backend: str = 'torch') -> dict[int, list[dict]]:
    """Predictions of the node's computation in this process, per image id; ``backend``
    as ``NAME[:PRECISION]``.
    """
    from seg_ros.core.inference.instances import InstanceSegmenter
    from seg_ros.core.inference.pipeline import Pipeline
    from seg_ros.core.models.instance_backends import compile_instance_model
    from seg_ros.core.models.quantize import calibration_set
    from seg_ros.core.models.registry import load_instance_model
    name, _, precision = backend.partition(':')
    loaded = load_instance_model('', weights, device=device, score_threshold=threshold,
                                 max_detections=MAX_DETECTIONS)
    _check_classes(loaded.class_names, dataset)
    if name != 'torch':
        say = functools.partial(print, flush=True)
        compile_instance_model(loaded.model, name, loaded.name, torch.device(device),
                               precision or 'fp32', str(CACHE), report=say,
                               calibration=lambda: calibration_set('', loaded.calibration, say))
    seg = InstanceSegmenter(loaded, device, threshold, 0.5, MAX_DETECTIONS)
    pipe = Pipeline(torch.device(device), instance=seg)
    first = dataset.rgb(dataset.image_ids[0])
    pipe.warm_up(first.shape[0], first.shape[1], keep_image=False)  # as the node does
    out = {}
    for image_id in dataset.image_ids:
        rgb = dataset.rgb(image_id)
        h, w = rgb.shape[:2]
        res = pipe(buffer_to_frame('rgb8', h, w, w * 3, False, rgb.tobytes()),
                   keep_image=False).instances
        names = loaded.class_names
        rows = [(int(i), names[int(c)], float(s))
                for i, c0, s0, alts in zip(res.ids, res.class_ids, res.scores,
                                           res.alternatives, strict=True)
                for c, s in ((c0, s0), *alts)]
        out[image_id] = _to_predictions(dataset, image_id, res.id_map, rows)
    return out


def _check_classes(names: list[str], dataset: CocoSet) -> None:
    missing = [n for n in dataset.class_names[1:] if n not in names]
    if missing:
        raise DatasetError(f'the model has no class {missing} of the dataset (its classes: '
                           f'{names[1:]})')


def through_node(weights: str, dataset: CocoSet, threshold: float, log: Path,
                 backend: str = 'torch') -> dict[int, list[dict] | None]:
    """Predictions of a ``segment_node`` over DDS, per image id (None: no answer)."""
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from seg_ros.testing.remote import decode, frame_msg, own_domain, served
    domain = own_domain()
    args = ['-p', 'device:=cpu', '-p', 'semantic.enabled:=false',
            '-p', 'instance.enabled:=true', '-p', f'instance.weights:={weights}',
            '-p', f'instance.score_threshold:={threshold}',
            '-p', f'instance.max_detections:={MAX_DETECTIONS}',
            '-r', 'image:=/eval/image']
    name, _, precision = backend.partition(':')
    if name != 'torch':
        args += ['-p', f'instance.backend:={name}', '-p', f'precision:={precision or "fp32"}',
                 '-p', f'backend.cache_dir:={CACHE}']
    first = dataset.rgb(dataset.image_ids[0])
    args += ['-p', f'warmup_size:={first.shape[1]}x{first.shape[0]}']
    out: dict[int, list[dict] | None] = {}
    with served([args], domain, [log], 'seg_ros_eval', ready_timeout=300) as (_, client):
        dets = client.collect(Detection2DArray, '/segmentation/instances/detections')
        masks = client.collect(Image, '/segmentation/instances/masks')
        pub = client.node.create_publisher(Image, '/eval/image', 10)
        client.spin_until(lambda: pub.get_subscription_count() > 0, 30)
        for n, image_id in enumerate(dataset.image_ids):
            stamp = (n + 1) * 10**9
            lat = client.exchange(pub, frame_msg(dataset.rgb(image_id), stamp, 'eval'),
                                  [dets, masks], timeout=120.0, resend=10.0)
            if lat is None:
                out[image_id] = None
                continue
            id_map = decode(masks.pop(stamp)[0])[:, :, 0]
            rows = [(int(d.id), r.hypothesis.class_id, float(r.hypothesis.score))
                    for d in dets.pop(stamp)[0].detections for r in d.results]
            out[image_id] = _to_predictions(dataset, image_id, id_map, rows)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='eval_instances', description=__doc__.split('\n\n')[0])
    ap.add_argument('--weights', required=True, help='tabletop or a weights file')
    ap.add_argument('--coco', required=True, help='annotations (COCO JSON)')
    ap.add_argument('--images', required=True, help='folder of the images')
    ap.add_argument('--limit', type=int, default=0, help='first N images only')
    ap.add_argument('--score-threshold', type=float, default=SCORE_THRESHOLD)
    ap.add_argument('--skip-node', action='store_true', help='direct evaluation only')
    ap.add_argument('--coco-masks', action='store_true',
                    help="also score the model's masks as torchvision returns them "
                         "(overlapping; COCO's usual protocol), directly")
    ap.add_argument('--backend', default='torch',
                    help='NAME[:PRECISION] of instance.backend and precision: torch, '
                         'onnxruntime, openvino, openvino:int8, onnxruntime:int8')
    ap.add_argument('--json', type=Path, help='write the figures here too')
    args = ap.parse_args(argv)
    from seg_ros.testing.remote import large_data_transport
    transports = large_data_transport()
    try:
        dataset = load_coco(args.coco, args.images)
        if args.limit:
            dataset.image_ids = dataset.image_ids[:args.limit]
        t0 = time.time()
        d_preds = direct(args.weights, dataset, args.score_threshold, backend=args.backend)
    except (DatasetError, ModelLoadError) as exc:
        print(f'eval_instances: {exc}', file=sys.stderr)
        return 2
    d_scores = evaluate(dataset, [p for v in d_preds.values() for p in v])
    print(f'direct: {len(dataset)} images, mask AP {d_scores["AP"]:.3f}, AP50 '
          f'{d_scores["AP50"]:.3f}, AP75 {d_scores["AP75"]:.3f} ({time.time() - t0:.0f}s)',
          flush=True)
    result = {'weights': args.weights, 'backend': args.backend, 'coco': args.coco,
              'images': len(dataset),
              'score_threshold': args.score_threshold, 'dds_transports': transports,
              'direct': d_scores}
    if args.coco_masks:
        from seg_ros.core.models.registry import load_instance_model
        from seg_ros.training.train_instances import validate
        model = load_instance_model('', args.weights, score_threshold=args.score_threshold,
                                    max_detections=MAX_DETECTIONS).model
        result['direct_coco_masks'] = c = validate(model, dataset)
        print(f'direct, overlapping masks: mask AP {c["AP"]:.3f}, AP50 {c["AP50"]:.3f}, '
              f'AP75 {c["AP75"]:.3f}', flush=True)
    ok = True
    if not args.skip_node:
        t0 = time.time()
        log = Path(os.environ.get('TMPDIR', '/tmp')) / f'seg_ros_eval_{os.getpid()}.log'
        n_preds = through_node(args.weights, dataset, args.score_threshold, log, args.backend)
        missing = [i for i, p in n_preds.items() if p is None]
        if missing:
            print(f'node: {len(missing)} images unanswered (log {log})')
            ok = False
        else:
            n_scores = evaluate(dataset, [p for v in n_preds.values() for p in v])
            same = sum(len(n_preds[i]) == len(d_preds[i]) for i in dataset.image_ids)
            ok = same == len(dataset) and all(
                abs(n_scores[k] - d_scores[k]) <= AP_TOLERANCE for k in d_scores)
            result.update(node=n_scores, same_instance_count=same)
            print(f'node:   {len(dataset)} images, mask AP {n_scores["AP"]:.3f}, AP50 '
                  f'{n_scores["AP50"]:.3f}, AP75 {n_scores["AP75"]:.3f} '
                  f'({time.time() - t0:.0f}s); same instance count on {same}/{len(dataset)} '
                  f'images')
    result['agree'] = ok
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding='utf-8')
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
