"""Check seg_ros' YOLO segmentation decoder against Ultralytics' own predictor on one file.

Ultralytics is AGPL and never a dependency of seg_ros: put it in a throwaway folder and
name that folder on PYTHONPATH for this check only, e.g.

    scripts/with_env pip install --no-deps --target /tmp/ultra ultralytics polars \
        matplotlib ultralytics-thop
    PYTHONPATH=/tmp/ultra YOLO_OFFLINE=1 scripts/with_env python tools/yolo_vs_ultralytics.py \
        FILE.onnx --size 480x640 720x1280 --conf 0.25

For each frame size it runs a fixed random frame through both (Ultralytics with
retina_masks, i.e. masks at the frame's own size), matches detections by box, and prints the
counts, the largest box difference (px), class and score agreement and the smallest mask IoU.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from seg_ros.core.models.yolo_seg import YoloSegModel, read_yolo_file


def compare(path: str, h: int, w: int, conf: float, iou: float) -> dict:
    from ultralytics import YOLO

    rng = np.random.default_rng(0)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    img[h // 4:h // 2, w // 4:w // 2] = (200, 30, 30)
    ref = YOLO(path, task='segment').predict(img[:, :, ::-1].copy(), conf=conf, iou=iou,
                                             max_det=100, retina_masks=True, verbose=False)[0]
    ours = YoloSegModel(read_yolo_file(path), 'onnxruntime', torch.device('cpu'), conf, iou,
                        100)([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0]
    rb, ob = ref.boxes.xyxy.numpy(), ours['boxes'].numpy()
    out = {'size': f'{w}x{h}', 'ultralytics': len(rb), 'seg_ros': len(ob)}
    if len(rb) and len(ob):
        d = np.abs(rb[:, None, :] - ob[None, :, :]).max(-1)
        j = d.argmin(1)
        rm = ref.masks.data.numpy() > 0.5
        om = ours['masks'][:, 0].numpy()[j] > 0.5
        ious = [(rm[i] & om[i]).sum() / max((rm[i] | om[i]).sum(), 1) for i in range(len(rb))]
        out.update(max_box_diff_px=float(d.min(1).max()),
                   classes_equal=float((ref.boxes.cls.numpy() == ours['labels'].numpy()[j])
                                       .mean()),
                   max_score_diff=float(np.abs(ref.boxes.conf.numpy()
                                               - ours['scores'].numpy()[j]).max()),
                   min_mask_iou=float(min(ious)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('onnx')
    ap.add_argument('--size', nargs='+', default=['480x640', '720x1280'], help='HxW')
    ap.add_argument('--conf', type=float, default=0.25)
    ap.add_argument('--iou', type=float, default=0.7)
    args = ap.parse_args()
    for s in args.size:
        h, w = (int(v) for v in s.split('x'))
        print(compare(args.onnx, h, w, args.conf, args.iou), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
