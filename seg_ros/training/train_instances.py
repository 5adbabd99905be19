r"""Train an instance segmentation model on a COCO-format dataset.

    ros2 run seg_ros train_instances --coco TRAIN.json --images DIR \\
        --val-coco VAL.json --val-images DIR --model maskrcnn_mobilenet_v3_large_fpn \\
        --minutes 30 --out my_parts.pt

Writes a self-describing weights file (architecture, class names, training size, seg_ros
version) that ``instance.weights:=my_parts.pt`` alone serves; keeps the epoch with the
best validation mask AP (pycocotools COCOeval); stops at ``--minutes`` of training and/or
``--epochs``; ``OUT.ckpt`` after every epoch makes the run resumable (``--resume``, also
after Ctrl-C); a JSON summary goes beside OUT (``.json`` for its suffix) and to standard
output.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.models import detection
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from seg_ros.core.models import light_maskrcnn
from seg_ros.core.models import registry as models
from seg_ros.training.coco import CocoSet, DatasetError, evaluate, load_coco, prediction


class TrainError(RuntimeError):
    """The run cannot start (one line)."""


def augmentation() -> v2.Compose:
    """Tabletop cameras: any left-right/up-down flip is a plausible view; colour,
    brightness and contrast change with light and sensor. (Scale is jittered by the
    model's own transform: one shorter side per step from ``train_sizes``.)
    """
    return v2.Compose([
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.05)], p=0.8),
        v2.RandomGrayscale(0.05)])


def train_sizes(size: int) -> tuple[int, ...]:
    """Shorter sides drawn per step: 0.75-1.25 x ``size`` in steps of 32, ``size`` last
    (the one the model's transform uses in evaluation).
    """
    lo, hi = max(32, int(size * 0.75)), int(size * 1.25)
    sizes = [s for s in range(lo - lo % 32, hi + 1, 32) if s != size and s >= 32]
    return tuple(sizes) + (size,)


def sample(dataset: CocoSet, image_id: int, aug: v2.Compose | None):
    """(image (3, H, W) float [0, 1], target) of one image; boxes from the (augmented)
    masks; objects whose mask is empty after augmentation are dropped.
    """
    rgb, labels, masks = dataset.load(image_id)
    img = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    m = tv_tensors.Mask(torch.from_numpy(masks))
    if aug is not None:
        img, m = aug(img, m)
    m = m.as_subclass(torch.Tensor)
    keep = (m != 0).flatten(1).any(1)
    m, lab = m[keep], torch.from_numpy(labels)[keep]
    boxes = masks_to_boxes(m).float() if m.shape[0] else torch.zeros(0, 4)
    boxes[:, 2:] += 1.0  # pixel (x2, y2) included: box corners in continuous coordinates
    image = img.as_subclass(torch.Tensor).float() / 255.0
    return image, {'boxes': boxes, 'labels': lab, 'masks': m}


def build(name: str, class_names: list[str], size: int, init: str) -> tuple[torch.nn.Module,
                                                                          str, bool]:
    """The model to train and a line saying how it was initialised; the bool says whether
    the backbone came trained (its batch-norm statistics are then kept).
    """
    spec = models.INSTANCE_MODELS.get(name)
    if spec is None:
        raise TrainError(f'unknown --model {name!r}; choose one of '
                         f'{sorted(models.INSTANCE_MODELS)}')
    sizes = train_sizes(size)
    kw = dict(min_size=sizes, max_size=int(max(sizes) * 2))
    n = len(class_names)
    model = spec.builder(weights=None, weights_backbone=None, num_classes=n, **kw)
    if init == 'none':
        return model, 'random initialisation', False
    if init == 'coco':
        source = (spec.weights_enum.DEFAULT if spec.weights_enum is not None else
                  detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT)
        cached = Path(torch.hub.get_dir()) / 'checkpoints' / Path(source.url).name
        if not cached.is_file():
            raise TrainError(f'--init coco: torchvision weights {source} are not in the local '
                             f'torch cache ({cached}); use --init none, camvid or a file')
        state = torch.load(cached, map_location='cpu', weights_only=True)
        if spec.weights_enum is None:  # the light model takes the detector's trunk only
            state = {k: v for k, v in state.items() if k.startswith('backbone.body.')}
        what = f'torchvision {source} ({cached.name})'
    elif init == 'camvid':
        if name != light_maskrcnn.NAME:
            raise TrainError(f'--init camvid initialises the MobileNetV3 trunk of '
                             f'{light_maskrcnn.NAME} only')
        state = light_maskrcnn.trunk_from_lraspp(
            models.read_state_dict(models.WEIGHTS_DIR / models.SHIPPED_SEMANTIC['camvid']['file']))
        what = 'the shipped CamVid LRASPP trunk'
    else:
        init = models.instance_weights_path(init)
        try:
            state, _ = models.read_weights_file(init)
        except models.ModelLoadError as exc:
            raise TrainError(f'--init: {exc}') from None
        what = f'weights file {init}'
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fit:
        raise TrainError(f'--init {init}: no tensor of {what} fits {name}')
    model.load_state_dict(fit, strict=False)
    trunk = [k for k in fit if k.startswith('backbone.body.')]
    return model, f'{what}: {len(fit)}/{len(own)} tensors', bool(trunk)


def freeze_norms(model: torch.nn.Module) -> None:
    """Keep a trained backbone's batch-norm statistics (batches of a few images would
    spoil them).
    """
    for m in model.backbone.body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def freeze_trunk(model: torch.nn.Module, blocks: int) -> int:
    """Stop training the first ``blocks`` blocks of the backbone's trunk (the
    high-resolution stages, the dearest in backward on a CPU); returns the number of
    tensors frozen.
    """
    children = list(model.backbone.body.children())
    if not 0 <= blocks <= len(children):
        raise TrainError(f'--freeze-trunk {blocks}: the trunk has {len(children)} blocks')
    frozen = 0
    for child in children[:blocks]:
        for p in child.parameters():
            p.requires_grad_(False)
            frozen += 1
    return frozen


@torch.inference_mode()
def validate(model: torch.nn.Module, dataset: CocoSet, limit: int = 0) -> dict[str, float]:
    """Mask AP/AP50/AP75 of the model on a dataset (masks at probability 0.5)."""
    was = model.training
    model.eval()
    ids = dataset.image_ids[:limit] if limit else dataset.image_ids
    preds = []
    for image_id in ids:
        img, _ = sample(dataset, image_id, None)
        out = model([img])[0]
        masks = (out['masks'][:, 0] > 0.5).numpy()
        for lab, score, mask in zip(out['labels'].tolist(), out['scores'].tolist(), masks,
                                    strict=True):
            preds.append(prediction(image_id, dataset.cat_ids[lab - 1], mask, score))
    model.train(was)
    return evaluate(dataset, preds, ids)


def lr_at(base: float, progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % over the run's progress (time or epochs)."""
    w = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return base * w * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog='train_instances', description=__doc__.split('\n\n')[0])
    ap.add_argument('--coco', required=True, help='training annotations (COCO JSON)')
    ap.add_argument('--images', required=True, help='folder of the training images')
    ap.add_argument('--val-coco', help='validation annotations (default: none; the last '
                    'epoch is kept)')
    ap.add_argument('--val-images', help='folder of the validation images')
    ap.add_argument('--model', default=light_maskrcnn.NAME,
                    help=f'architecture: {", ".join(models.INSTANCE_MODELS)}')
    ap.add_argument('--minutes', type=float, default=0.0, help='wall-clock training budget')
    ap.add_argument('--epochs', type=int, default=0, help='epochs (with --minutes: whichever '
                    'comes first)')
    ap.add_argument('--init', default='none', help='coco (torchvision weights in the local '
                    'torch cache) | camvid (light model: the shipped CamVid trunk) | tabletop '
                    '(the shipped instance model: fine-tune it) | none | FILE')
    ap.add_argument('--freeze-trunk', type=int, default=0, metavar='N',
                    help='do not train the first N blocks of a trained trunk (needs --init '
                    'other than none; saves their backward; default 0)')
    ap.add_argument('--size', type=int, default=480, help='training shorter side (jittered '
                    '0.75-1.25x)')
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--lr', type=float, default=6e-4, help='AdamW learning rate')
    ap.add_argument('--val-limit', type=int, default=0, help='validate on the first N images')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--resume', action='store_true', help='continue from OUT.ckpt')
    ap.add_argument('--out', required=True, help='weights file to write')
    args = ap.parse_args(argv)
    if args.minutes <= 0 and args.epochs <= 0:
        ap.error('give --minutes and/or --epochs')
    if bool(args.val_coco) != bool(args.val_images):
        ap.error('--val-coco and --val-images go together')
    if args.batch < 1 or args.size < 32:
        ap.error('--batch must be >= 1 and --size >= 32')
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train; returns the summary (also written to OUT.json)."""
    from tqdm import tqdm
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    ckpt_path = out.with_name(out.name + '.ckpt')
    train = load_coco(args.coco, args.images)
    val = load_coco(args.val_coco, args.val_images) if args.val_coco else None
    if val is not None and val.class_names != train.class_names:
        raise DatasetError(f'{args.val_coco}: categories {val.class_names[1:]} differ from the '
                           f'training set\'s {train.class_names[1:]}')
    device = torch.device(args.device)
    model, how, trained_trunk = build(args.model, train.class_names, args.size, args.init)
    if args.freeze_trunk:
        if not trained_trunk:
            raise TrainError('--freeze-trunk needs a trained trunk (--init camvid, coco, '
                             'tabletop or a file), not a random one')
        how += f'; first {args.freeze_trunk} trunk blocks frozen ' \
               f'({freeze_trunk(model, args.freeze_trunk)} tensors)'
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    state = {'epoch': 0, 'step': 0, 'elapsed': 0.0, 'best': None, 'history': []}
    if args.resume:
        if not ckpt_path.is_file():
            raise TrainError(f'--resume: no checkpoint {ckpt_path}')
        ck = torch.load(ckpt_path, map_location='cpu', weights_only=True)
        if ck.get('model_name') != args.model or ck.get('class_names') != train.class_names:
            raise TrainError(f'--resume: {ckpt_path} was trained as {ck.get("model_name")} on '
                             f'{ck.get("class_names")}, not {args.model} on {train.class_names}')
        if int(ck.get('freeze_trunk', 0)) != args.freeze_trunk:
            raise TrainError(f'--resume: {ckpt_path} was trained with --freeze-trunk '
                             f'{int(ck.get("freeze_trunk", 0))}, not {args.freeze_trunk}')
        model.load_state_dict(ck['model'])
        opt.load_state_dict(ck['optimizer'])
        state = json.loads(ck['state'])
        how = f'resumed from {ckpt_path} (epoch {state["epoch"]}, {state["elapsed"] / 60:.1f} min)'
    print(f'train_instances: {args.model}, {len(train.class_names) - 1} classes '
          f'{train.class_names[1:]}, {len(train)} training images'
          + (f', {len(val)} validation images' if val else '') + f'; {how}', file=sys.stderr)
    budget = args.minutes * 60.0
    steps_per_epoch = math.ceil(len(train) / args.batch)
    total_steps = args.epochs * steps_per_epoch if args.epochs else 0
    aug = augmentation()
    stop = {'signal': False}
    previous = signal.signal(signal.SIGINT, lambda *_: stop.update(signal=True))

    def progress() -> float:
        parts = []
        if budget:
            parts.append(state['elapsed'] / budget)
        if total_steps:
            parts.append(state['step'] / total_steps)
        return max(parts)

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_name(ckpt_path.name + '.tmp')
        torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(),
                    'model_name': args.model, 'class_names': train.class_names,
                    'freeze_trunk': args.freeze_trunk, 'state': json.dumps(state)}, tmp)
        tmp.replace(ckpt_path)

    def end_epoch(partial: bool, partial_steps: int = 0) -> None:
        state['epoch'] += 0 if partial else 1
        scores = validate(model, val, args.val_limit) if val else {}
        seen = state['epoch'] + (partial_steps / steps_per_epoch if partial else 0)
        record = {'epoch': round(seen, 2), 'step': state['step'],
                  'minutes': round(state['elapsed'] / 60, 2), **scores}
        state['history'].append(record)
        best = state['best']
        if val is None or best is None or scores['AP'] >= best['AP'] or not out.is_file():
            state['best'] = record
            models.save_instance_weights(out, model, args.model, train.class_names, args.size,
                                         {'val': scores, 'epoch': state['epoch']})
        print(f'epoch {record["epoch"]:g}{" (budget reached)" if partial else ""}: '
              + ', '.join(f'{k} {v:.3f}' for k, v in scores.items())
              + f' ({state["elapsed"] / 60:.1f} min)', file=sys.stderr)
        save_checkpoint()

    done = False
    try:
        while not done:
            order = rng.permutation(train.image_ids)
            bar = tqdm(range(0, len(order), args.batch), desc=f'epoch {state["epoch"] + 1}',
                       unit='step', leave=False, file=sys.stderr, dynamic_ncols=True)
            for start in bar:
                t0 = time.perf_counter()
                model.train()
                if trained_trunk:
                    freeze_norms(model)
                batch = [sample(train, int(i), aug) for i in order[start:start + args.batch]]
                images = [b[0].to(device) for b in batch]
                targets = [{k: v.to(device) for k, v in b[1].items()} for b in batch]
                for g in opt.param_groups:
                    g['lr'] = lr_at(args.lr, progress(), state['step'], 100)
                losses = model(images, targets)
                loss = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                if torch.isfinite(loss.detach()):
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 10.0)
                    opt.step()
                state['step'] += 1
                state['elapsed'] += time.perf_counter() - t0
                left = [budget - state['elapsed']] if budget else []
                if total_steps:
                    per = state['elapsed'] / max(1, state['step'])
                    left.append((total_steps - state['step']) * per)
                bar.set_postfix(loss=f'{loss.item():.3f}',
                                eta=f'{max(0.0, min(left)) / 60:.1f}min')
                if progress() >= 1.0 or stop['signal']:
                    done = True
                    break
            bar.close()
            if stop['signal']:  # Ctrl-C: keep what was learnt, no validation
                save_checkpoint()
                raise KeyboardInterrupt
            taken = start // args.batch + 1
            end_epoch(partial=done and taken < steps_per_epoch, partial_steps=taken)
    finally:
        signal.signal(signal.SIGINT, previous)
    summary = {'out': str(out), 'model': args.model, 'classes': train.class_names[1:],
               'init': args.init, 'freeze_trunk': args.freeze_trunk, 'train_images': len(train),
               'val_images': len(val) if val else 0, 'size': args.size, 'batch': args.batch,
               'epochs': state['epoch'], 'steps': state['step'],
               'minutes': round(state['elapsed'] / 60, 2), 'best': state['best'],
               'history': state['history'], 'device': str(device),
               'torch_threads': torch.get_num_threads()}
    out.with_name(out.stem + '.json').write_text(json.dumps(summary, indent=1),
                                                 encoding='utf-8')
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        summary = run(args)
    except (DatasetError, TrainError, models.ModelLoadError) as exc:
        print(f'train_instances: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'train_instances: interrupted; checkpoint {args.out}.ckpt (--resume goes on)',
              file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
