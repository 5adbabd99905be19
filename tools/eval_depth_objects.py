#!/usr/bin/env python3
"""Class-agnostic mask AP / AP50 of depth_objects and of a learned instance model on the same
generated held-out tabletops (touching, stacked, lying and flat objects), and each one's
model time per frame.

    scripts/with_env python tools/eval_depth_objects.py [--scenes 30] [--seed 100]
        [--noise exact structured_light] [--weights tabletop] [--size 640x480]
        [--score-threshold 0.05] [--param instance.depth_objects.stride=3 ...]

Scenes: ``seg_ros.synthetic.tabletop.render(stack=0.5)`` from seed ``(seed, i)`` (the
tuning of the defaults used seed 7: these scenes were never looked at); every visible solid
of at least 100 pixels is an object (distractors included: class-agnostic). Both methods run
the node's own computation in this process (``load_pipeline`` and ``FrameProcessor``, the
depth paired as the node pairs it) and are scored on the published id image with
pycocotools (one category). Times: the processor's ``instance`` stage, median over frames,
the two methods alternating frame by frame.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform
import time

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seg_ros.core.config.settings import Settings
from seg_ros.core.inference.loading import load_pipeline
from seg_ros.core.inference.processor import FrameInput, FrameProcessor
from seg_ros.core.spatial.imaging import buffer_to_frame
from seg_ros.core.spatial.pairing import Pairing
from seg_ros.synthetic import tabletop


class _Msg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _header(ns: int):
    return _Msg(stamp=_Msg(sec=ns // 10**9, nanosec=ns % 10**9))


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r['counts'] = r['counts'].decode()
    return r


def score(gts: list[list[np.ndarray]], preds: list[list[tuple[np.ndarray, float]]],
          hw: tuple[int, int]) -> tuple[float, float]:
    """Mask AP and AP50 (COCOeval, one category) of ``preds`` against ``gts``."""
    anns, aid = [], 1
    for i, g in enumerate(gts, 1):
        for m in g:
            r = _rle(m)
            anns.append({'id': aid, 'image_id': i, 'category_id': 1, 'segmentation': r,
                         'area': float(mask_utils.area(r)),
                         'bbox': list(mask_utils.toBbox(r)), 'iscrowd': 0})
            aid += 1
    coco = COCO()
    coco.dataset = {'images': [{'id': i, 'height': hw[0], 'width': hw[1]}
                               for i in range(1, len(gts) + 1)],
                    'annotations': anns, 'categories': [{'id': 1, 'name': 'object'}]}
    res = [{'image_id': i, 'category_id': 1, 'segmentation': _rle(m), 'score': float(s)}
           for i, p in enumerate(preds, 1) for m, s in p]
    if not res:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), 'segm')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def processor(model_values: dict, score_threshold: float = 0.05) -> FrameProcessor:
    values = {'device': 'cpu', 'semantic.enabled': False, 'instance.enabled': True,
              'depth.enabled': True, 'instance.tracking': False, 'warmup': False,
              'instance.score_threshold': score_threshold, 'instance.max_detections': 100}
    values.update(model_values)
    s = Settings.from_values(values)
    return FrameProcessor(load_pipeline(s), s)


def run_frame(proc: FrameProcessor, sc, stamp: int) -> tuple[list, float]:
    h, w = sc.depth.shape
    pairing = Pairing()
    pairing.add_camera_info(_Msg(header=_header(stamp), k=sc.k, p=[0.0] * 12, width=w,
                                 height=h))
    mm = np.clip(np.round(sc.depth * 1000), 0, 65535).astype(np.uint16)
    pairing.add_depth(_Msg(header=_header(stamp), encoding='16UC1', height=h, width=w,
                           step=2 * w, is_bigendian=0, data=bytearray(mm.tobytes())))
    frame = buffer_to_frame('rgb8', h, w, 3 * w, False, sc.rgb.tobytes())
    out = proc.process([FrameInput('', frame, stamp, pairing=pairing)])[0]
    inst = out.result.instances
    preds = [(inst.id_map == pid, float(sc_)) for pid, sc_ in zip(inst.ids, inst.scores,
                                                                   strict=True)]
    return preds, out.result.timings['instance']


def _param(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with VALUE read as an int, a float, true / false or else a string."""
    name, sep, raw = text.partition('=')
    if not sep or not name:
        raise SystemExit(f'eval_depth_objects: --param wants NAME=VALUE, got {text!r}')
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return name, cast(raw)
    return name, {'true': True, 'false': False}.get(raw.lower(), raw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--scenes', type=int, default=30)
    ap.add_argument('--seed', type=int, default=100)
    ap.add_argument('--noise', nargs='+', default=['exact', 'structured_light'],
                    choices=tabletop.DEPTH_NOISE)
    ap.add_argument('--weights', default='tabletop',
                    help='the learned model to compare (instance.weights; none = skip)')
    ap.add_argument('--size', default='640x480')
    ap.add_argument('--score-threshold', type=float, default=0.05,
                    help="instance.score_threshold (0.05: the whole ranking; the node's "
                         'default is 0.5)')
    ap.add_argument('--param', action='append', default=[], metavar='NAME=VALUE',
                    help='a node parameter for the depth_objects run (repeatable), e.g. '
                         'instance.depth_objects.stride=3')
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split('x'))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    thr = args.score_threshold
    extra = dict(_param(p) for p in args.param)
    methods = {'depth_objects': processor({'instance.model': 'depth_objects', **extra}, thr)}
    if args.weights != 'none':
        methods[f'learned ({args.weights})'] = processor({'instance.weights': args.weights},
                                                         thr)
    flags = ''
    with contextlib.suppress(OSError):
        text = open('/proc/cpuinfo').read()
        line = next(ln for ln in text.splitlines() if ln.startswith('flags'))
        flags = ' '.join(f for f in ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16')
                         if f in line.split())
    print(f'# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, '
          f'flags: {flags}; {args.scenes} scenes per noise, seed {args.seed}, {w}x{h}, '
          f'score_threshold {thr}' + ''.join(f', {k}={v}' for k, v in extra.items()))
    print('| depth | method | mask AP | AP50 | objects | found | model p50 |')
    print('|---|---|---|---|---|---|---|')
    for noise in args.noise:
        gts, preds = [], {m: [] for m in methods}
        times = {m: [] for m in methods}
        for i in range(args.scenes):
            sc = tabletop.render(np.random.default_rng((args.seed, i)), w, h, stack=0.5,
                                 depth_noise=noise)
            g = [sc.object_map == k for k in range(1, len(sc.objects) + 1)]
            gts.append([m for m in g if m.sum() >= 100])
            for name, proc in methods.items():
                time.sleep(0.05)
                p, t = run_frame(proc, sc, (i + 1) * 10**9)
                preds[name].append(p)
                times[name].append(t)
        for name in methods:
            a, a50 = score(gts, preds[name], (h, w))
            print(f'| {noise} | {name} | {a:.3f} | {a50:.3f} | {sum(map(len, gts))} | '
                  f'{sum(map(len, preds[name]))} | {np.median(times[name]) * 1000:.1f} ms |',
                  flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
