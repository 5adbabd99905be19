"""Write a real Ultralytics YOLO segmentation export from a bundled model YAML (no download):
random weights, shaken so that scores and masks spread (a random YOLO scores every anchor
alike), for tools/yolo_vs_ultralytics.py. Needs Ultralytics on PYTHONPATH (a throwaway
folder, see that tool); seg_ros never imports it.

    PYTHONPATH=/tmp/ultra YOLO_OFFLINE=1 scripts/with_env python tools/make_yolo_export.py \
        yolov8n-seg.yaml out/yolov8n-seg.onnx --imgsz 320 416
    ... tools/make_yolo_export.py yolo26n-seg.yaml out/yolo26n-seg-e2e.onnx --end2end
"""
from __future__ import annotations

import argparse
import shutil
import sys

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('yaml', help='a model YAML bundled with Ultralytics, e.g. yolo11n-seg.yaml')
    ap.add_argument('out')
    ap.add_argument('--imgsz', type=int, nargs='+', default=[320])
    ap.add_argument('--end2end', action='store_true', help='NMS-free export (YOLO26)')
    args = ap.parse_args()
    from ultralytics import YOLO

    model = YOLO(args.yaml)
    torch.manual_seed(0)
    head = model.model.model[-1]
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for seq in [*getattr(head, 'cv3', []), *getattr(head, 'one2one_cv3', [])]:
            seq[-1].bias.add_(6.0 + torch.randn_like(seq[-1].bias))  # class scores spread
        for seq in [*getattr(head, 'cv4', []), *getattr(head, 'one2one_cv4', [])]:
            seq[-1].bias.add_(0.5 + torch.randn_like(seq[-1].bias))  # mask coefficients
        last = [m for m in head.proto.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        if last.bias is None:
            last.bias = torch.nn.Parameter(torch.zeros(last.out_channels))
        last.bias.add_(0.3)  # prototypes: non-empty masks
    imgsz = args.imgsz[0] if len(args.imgsz) == 1 else tuple(args.imgsz)
    made = model.export(format='onnx', imgsz=imgsz, simplify=False, opset=17,
                        **({'nms': False} if args.end2end else {}))
    shutil.move(made, args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
