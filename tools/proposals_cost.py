#!/usr/bin/env python3
"""What a proposal cap costs a trained instance model (issue 32, item 4): mask AP of the
model's overlapping masks (COCO protocol) with ``instance.max_proposals`` 0 (its own count)
and a few caps, and with its own count raised past what a cap can give.

    scripts/with_env make_tabletop --out out/data/tt_test --scenes 60 --seed 3
    scripts/with_env python tools/proposals_cost.py --weights tabletop \\
        --coco out/data/tt_test/annotations.json --images out/data/tt_test/images

Direct (no node: the cap acts inside the model, the same code the node loads); the figures
differ from ``eval_instances``' node figures, which score the published id image.
"""
from __future__ import annotations

import argparse
import sys

import torch

from seg_ros.core.models.registry import load_instance_model
from seg_ros.training.coco import load_coco
from seg_ros.training.train_instances import validate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--weights', default='tabletop')
    ap.add_argument('--coco', required=True)
    ap.add_argument('--images', required=True)
    ap.add_argument('--caps', type=int, nargs='+', default=[0, 200, 100, 50])
    ap.add_argument('--raised', type=int, nargs='*', default=[300, 1000],
                    help='own post-NMS count raised to these (in code; a cap never raises)')
    args = ap.parse_args()
    torch.set_num_threads(2)
    ds = load_coco(args.coco, args.images)

    def row(what: str, model) -> None:
        r = validate(model, ds)
        print(f'{what}: mask AP {r["AP"]:.3f} AP50 {r["AP50"]:.3f} AP75 {r["AP75"]:.3f}',
              flush=True)
    for cap in args.caps:
        m = load_instance_model('', args.weights, score_threshold=0.05, max_detections=100,
                                max_proposals=cap).model
        row(f'max_proposals {cap} ({m.rpn._post_nms_top_n["testing"]} kept)', m)
    for n in args.raised:
        m = load_instance_model('', args.weights, score_threshold=0.05,
                                max_detections=100).model
        m.rpn._post_nms_top_n['testing'] = n
        m.rpn._pre_nms_top_n['testing'] = max(n, m.rpn._pre_nms_top_n['testing'])
        row(f'own count raised to {n}', m)
    return 0


if __name__ == '__main__':
    sys.exit(main())
