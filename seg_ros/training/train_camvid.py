#!/usr/bin/env python3
"""Train a torchvision semantic model from scratch on CamVid (CPU), resumable.

    scripts/with_env train_camvid --data ../shared/data/camvid \
        --out runs/camvid --steps 6000

Recipe (no pretrained backbone can be had offline): lraspp_mobilenet_v3_large, random
init, AdamW + one-cycle schedule, class-balanced cross-entropy (ENet weighting,
1 / ln(1.02 + p_class)), label 11 (void) ignored; augmentation: random scale 0.5-1.25 of
the 480x360 frame, random crop (void padding), horizontal flip, brightness/contrast/
saturation jitter. Checkpoints (model, optimiser, schedule, step, RNG) every
``--ckpt-every`` steps to ``OUT/last.pt``; a rerun resumes from it. Validation mIoU at
``--eval-size`` every ``--eval-every`` steps; the best model is kept as ``OUT/best.pt``.
Export to the shipped fp16 state dict with ``--export FILE``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from seg_ros.core.models.registry import IMAGENET_MEAN, IMAGENET_STD, SEMANTIC_MODELS
from seg_ros.training.metrics import confusion_matrix, iou_from_confusion

NUM_CLASSES = 11
IGNORE = 11


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N,3,360,480 uint8) and labels (N,360,480 uint8) of a split, in memory."""
    names = sorted(os.listdir(root / split))
    imgs = np.stack([np.asarray(Image.open(root / split / n).convert('RGB')) for n in names])
    labs = np.stack([np.asarray(Image.open(root / f'{split}annot' / n)) for n in names])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labs)


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(labels.flatten().long(), minlength=IGNORE + 1)[:NUM_CLASSES].double()
    p = counts / counts.sum()
    return (1.0 / torch.log(1.02 + p)).float()


def augment(img: torch.Tensor, lab: torch.Tensor, crop: tuple[int, int],
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, crop, flip and colour jitter of one uint8 image and its labels."""
    s = 0.5 + 0.75 * torch.rand(1, generator=gen).item()
    h, w = img.shape[-2:]
    nh, nw = max(int(h * s), 8), max(int(w * s), 8)
    x = F.interpolate(img[None].float(), size=(nh, nw), mode='bilinear', align_corners=False,
                      antialias=s < 1)[0]
    y = F.interpolate(lab[None, None].float(), size=(nh, nw), mode='nearest')[0, 0].long()
    ch, cw = crop
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
    top = int(torch.randint(0, x.shape[1] - ch + 1, (1,), generator=gen))
    left = int(torch.randint(0, x.shape[2] - cw + 1, (1,), generator=gen))
    x = x[:, top:top + ch, left:left + cw] / 255.0
    y = y[top:top + ch, left:left + cw]
    if torch.rand(1, generator=gen).item() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    b = 1.0 + 0.4 * (torch.rand(1, generator=gen).item() - 0.5)
    c = 1.0 + 0.4 * (torch.rand(1, generator=gen).item() - 0.5)
    sat = 1.0 + 0.4 * (torch.rand(1, generator=gen).item() - 0.5)
    mean = x.mean()
    x = (x - mean) * c + mean
    x = x * b
    gray = x.mean(0, keepdim=True)
    x = (x - gray) * sat + gray
    return x.clamp_(0, 1), y


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def evaluate(model: torch.nn.Module, imgs: torch.Tensor, labs: torch.Tensor,
             size: int) -> tuple[float, list[float]]:
    model.eval()
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for i in range(0, len(imgs), 8):
        x = imgs[i:i + 8].float() / 255.0
        h, w = x.shape[-2:]
        if size and size != min(h, w):
            s = size / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode='bilinear',
                              align_corners=False, antialias=s < 1)
        out = model(normalise(x))['out']
        out = F.interpolate(out, size=(h, w), mode='bilinear', align_corners=False)
        pred = out.argmax(1)
        conf += confusion_matrix(pred, labs[i:i + 8].long(), NUM_CLASSES, IGNORE)
    model.train()
    per_class = iou_from_confusion(conf)
    return float(np.mean(per_class)), per_class


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default='../shared/data/camvid')
    ap.add_argument('--out', default='runs/camvid')
    ap.add_argument('--model', default='lraspp_mobilenet_v3_large',
                    choices=['lraspp_mobilenet_v3_large', 'deeplabv3_mobilenet_v3_large', 'unet'])
    ap.add_argument('--steps', type=int, default=6000)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--crop', type=int, nargs=2, default=(240, 320), metavar=('H', 'W'))
    ap.add_argument('--lr', type=float, default=3e-3)
    ap.add_argument('--wd', type=float, default=1e-4)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--eval-size', type=int, default=360, help='shorter side at validation')
    ap.add_argument('--eval-every', type=int, default=500)
    ap.add_argument('--ckpt-every', type=int, default=100)
    ap.add_argument('--max-minutes', type=float, default=0,
                    help='stop (after a checkpoint) when this much wall time has passed')
    ap.add_argument('--export', metavar='FILE', help='write OUT/best.pt as an fp16 state dict')
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    if args.export:
        state = torch.load(out / 'best.pt', map_location='cpu', weights_only=True)['model']
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        torch.save(half, args.export)
        print(f'exported {out / "best.pt"} -> {args.export} '
              f'({os.path.getsize(args.export) / 1e6:.1f} MB)')
        return 0

    root = Path(args.data)
    t0 = time.time()
    tr_img, tr_lab = load_split(root, 'train')
    va_img, va_lab = load_split(root, 'val')
    print(f'loaded {len(tr_img)} train / {len(va_img)} val images in {time.time() - t0:.1f}s',
          flush=True)
    weights = class_weights(tr_lab)
    print('class weights', [round(w, 2) for w in weights.tolist()], flush=True)

    model = SEMANTIC_MODELS[args.model].builder(weights=None, weights_backbone=None,
                                                num_classes=NUM_CLASSES)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=0.05, div_factor=20,
                                                final_div_factor=200)
    gen = torch.Generator().manual_seed(0)
    step, best, history = 0, -1.0, []
    last = out / 'last.pt'
    if last.exists():
        ck = torch.load(last, map_location='cpu', weights_only=True)
        model.load_state_dict(ck['model'])
        opt.load_state_dict(ck['opt'])
        sched.load_state_dict(ck['sched'])
        gen.set_state(ck['gen'])
        step, best = int(ck['step']), float(ck['best'])
        history = json.loads((out / 'history.json').read_text()) if (
            out / 'history.json').exists() else []
        print(f'resumed at step {step} (best mIoU {best:.4f})', flush=True)

    model.train()
    crop = tuple(args.crop)
    t_start = time.time()
    t_log = time.time()
    while step < args.steps:
        idx = torch.randint(0, len(tr_img), (args.batch,), generator=gen)
        pairs = [augment(tr_img[i], tr_lab[i], crop, gen) for i in idx.tolist()]
        x = normalise(torch.stack([p[0] for p in pairs])).contiguous(
            memory_format=torch.channels_last)
        y = torch.stack([p[1] for p in pairs])
        logits = model(x)['out']
        loss = F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 20 == 0:
            dt = (time.time() - t_log) / 20
            t_log = time.time()
            print(f'step {step}/{args.steps} loss {loss.item():.4f} '
                  f'lr {sched.get_last_lr()[0]:.2e} {dt:.2f}s/step', flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            miou, per = evaluate(model, va_img, va_lab, args.eval_size)
            history.append({'step': step, 'miou': miou, 'per_class': per})
            (out / 'history.json').write_text(json.dumps(history, indent=1))
            print(f'eval step {step}: val mIoU {100 * miou:.2f}', flush=True)
            if miou > best:
                best = miou
                torch.save({'model': model.state_dict(), 'step': step, 'miou': miou,
                            'per_class': per}, out / 'best.pt')
        stop = args.max_minutes and (time.time() - t_start) / 60 > args.max_minutes
        if step % args.ckpt_every == 0 or step == args.steps or stop:
            tmp = out / 'last.pt.tmp'
            torch.save({'model': model.state_dict(), 'opt': opt.state_dict(),
                        'sched': sched.state_dict(), 'gen': gen.get_state(), 'step': step,
                        'best': best}, tmp)
            os.replace(tmp, last)
        if stop:
            print(f'time budget reached at step {step}; rerun to resume', flush=True)
            return 0
    print(f'done: best val mIoU {100 * best:.2f}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
