"""COCO-format instance datasets: read and check them, write them, evaluate on them. No rclpy.

What CVAT, Label Studio and Roboflow export: one JSON with ``images``, ``annotations``
(masks as polygons, uncompressed RLE or compressed RLE) and ``categories``, and a folder of
images. Masks are decoded with pycocotools and scored with its ``COCOeval``, the field's
evaluator. Every defect of a dataset is found before training starts and reported as one
line (:class:`DatasetError`), never as a traceback halfway through an epoch.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = '__background__'


class DatasetError(ValueError):
    """The dataset cannot be used; the message says which file, image or annotation."""


@dataclass
class CocoSet:
    """A checked dataset.

    Attributes:
        coco: the pycocotools ``COCO`` index.
        images_dir: where the ``file_name`` of each image is.
        image_ids: the images, in file order.
        cat_ids: category ids in ascending order; label ``k`` (1-based) is ``cat_ids[k-1]``.
        class_names: ``[BACKGROUND] + category names``, the model's class names.
    """

    coco: object
    images_dir: Path
    image_ids: list[int]
    cat_ids: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        """Where an image's file is."""
        return self.images_dir / self.coco.imgs[image_id]['file_name']

    def rgb(self, image_id: int) -> np.ndarray:
        """An image as (H, W, 3) uint8 RGB (a writable copy)."""
        with Image.open(self.image_path(image_id)) as im:
            return np.array(im.convert('RGB'))

    def load(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb (H, W, 3) uint8, labels (N,) int64, masks (N, H, W) uint8) of an image's
        objects; crowd regions are left out (COCO's training practice).
        """
        info = self.coco.imgs[image_id]
        rgb = self.rgb(image_id)
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get('iscrowd', 0)]
        h, w = int(info['height']), int(info['width'])
        masks = np.zeros((len(anns), h, w), np.uint8)
        labels = np.zeros(len(anns), np.int64)
        for i, a in enumerate(anns):
            masks[i] = self.coco.annToMask(a)
            labels[i] = self.cat_ids.index(a['category_id']) + 1
        keep = masks.reshape(len(anns), -1).any(1) if anns else np.zeros(0, bool)
        return rgb, labels[keep], masks[keep]


def _fail(path: Path, what: str) -> DatasetError:
    return DatasetError(f'{path}: {what}')


def _check_segmentation(path: Path, ann: dict, name: str, w: int, h: int) -> None:
    seg = ann.get('segmentation')
    where = f'annotation {ann.get("id")} (image {name!r})'
    if isinstance(seg, list):
        if not seg:
            raise _fail(path, f'{where} has an empty polygon list')
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(
                    isinstance(v, (int, float)) for v in poly):
                raise _fail(path, f'{where}: a polygon must be a list of at least 3 x, y '
                                  'pairs of numbers')
            xy = np.asarray(poly, np.float64).reshape(-1, 2)
            bad = (xy[:, 0] < -1) | (xy[:, 0] > w + 1) | (xy[:, 1] < -1) | (xy[:, 1] > h + 1)
            if bad.any():
                x, y = xy[int(np.argmax(bad))]
                raise _fail(path, f'{where}: mask point ({x:g}, {y:g}) is outside the '
                                  f'{w}x{h} image')
    elif isinstance(seg, dict):
        size = seg.get('size')
        if not isinstance(size, list) or len(size) != 2 or 'counts' not in seg:
            raise _fail(path, f'{where}: an RLE mask needs "size" [h, w] and "counts"')
        if [int(size[0]), int(size[1])] != [h, w]:
            raise _fail(path, f'{where}: RLE mask of size {size[1]}x{size[0]} does not fit '
                              f'the {w}x{h} image')
        counts = seg['counts']
        if isinstance(counts, list) and sum(int(c) for c in counts) != h * w:
            raise _fail(path, f'{where}: uncompressed RLE counts cover '
                              f'{sum(int(c) for c in counts)} pixels, the image has {h * w}')
    else:
        raise _fail(path, f'{where} has no mask (segmentation must be polygons or RLE)')


def load_coco(json_path: str | os.PathLike, images_dir: str | os.PathLike,
              check_images: bool = True) -> CocoSet:
    """Read and check a COCO instance dataset.

    Raises:
        DatasetError: unreadable or malformed JSON, an empty set, an unknown category id,
            a missing image or one whose size differs from the JSON, a mask outside its
            image (one line: the file and what is wrong where).
    """
    from pycocotools.coco import COCO
    path, images_dir = Path(json_path), Path(images_dir)
    try:
        with path.open(encoding='utf-8') as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f'{path}: annotation file not found') from None
    except (OSError, ValueError) as exc:
        raise _fail(path, f'not a readable JSON file ({str(exc).splitlines()[0]})') from None
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ('images', 'annotations', 'categories')):
        raise _fail(path, 'not a COCO instance file (needs lists "images", "annotations" and '
                          '"categories")')
    if not images_dir.is_dir():
        raise DatasetError(f'{images_dir}: image folder not found')
    if not data['images']:
        raise _fail(path, 'the dataset has no images')
    if not data['categories']:
        raise _fail(path, 'the dataset has no categories')
    try:
        cats = {int(c['id']): str(c['name']) for c in data['categories']}
        images = {int(i['id']): i for i in data['images']}
        for i in images.values():
            i['file_name'], i['width'], i['height'] = str(i['file_name']), int(i['width']), \
                int(i['height'])
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f'an image or category lacks a valid field ({exc})') from None
    if 0 in cats:
        raise _fail(path, 'category id 0 is reserved for the background')
    n_objects = 0
    for a in data['annotations']:
        if not isinstance(a, dict) or 'image_id' not in a or 'category_id' not in a:
            raise _fail(path, f'annotation {a.get("id") if isinstance(a, dict) else a!r} '
                              'lacks image_id or category_id')
        img = images.get(a['image_id'])
        if img is None:
            raise _fail(path, f'annotation {a.get("id")} refers to image id {a["image_id"]}, '
                              'which is not among the images')
        if a['category_id'] not in cats:
            raise _fail(path, f'annotation {a.get("id")} (image {img["file_name"]!r}) has '
                              f'category_id {a["category_id"]}, not among the categories '
                              f'{sorted(cats)}')
        _check_segmentation(path, a, img['file_name'], img['width'], img['height'])
        if 'area' not in a or 'bbox' not in a:  # COCOeval and annToMask read them
            raise _fail(path, f'annotation {a.get("id")} lacks "area" or "bbox"')
        n_objects += 0 if a.get('iscrowd', 0) else 1
    if not n_objects:
        raise _fail(path, 'the dataset has no (non-crowd) annotated objects')
    if check_images:
        for i in images.values():
            p = images_dir / i['file_name']
            if not p.is_file():
                raise DatasetError(f'{path}: image {i["file_name"]!r} not found in {images_dir}')
            try:
                with Image.open(p) as im:
                    size = im.size
            except OSError as exc:
                raise DatasetError(f'{p}: not a readable image ({exc})') from None
            if size != (i['width'], i['height']):
                raise DatasetError(f'{p}: image is {size[0]}x{size[1]}, the annotations say '
                                   f'{i["width"]}x{i["height"]}')
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    cat_ids = sorted(cats)
    return CocoSet(coco, images_dir, [int(i['id']) for i in data['images']], cat_ids,
                   [BACKGROUND] + [cats[c] for c in cat_ids])


def encode_mask(mask: np.ndarray) -> dict:
    """A binary (H, W) mask as compressed RLE with ``counts`` as text (JSON-ready)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    """A COCO annotation of one binary mask (compressed RLE, bbox, area)."""
    from pycocotools import mask as mask_utils
    rle = encode_mask(mask)
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {'id': ann_id, 'image_id': image_id, 'category_id': category_id,
            'segmentation': rle, 'area': float(mask_utils.area(rle)), 'bbox': [x, y, w, h],
            'iscrowd': 0}


def write_coco(path: str | os.PathLike, images: Sequence[dict], annotations: Sequence[dict],
               class_names: Sequence[str]) -> None:
    """Write a COCO instance file; category ids are 1.. in ``class_names`` order."""
    data = {'images': list(images), 'annotations': list(annotations),
            'categories': [{'id': i, 'name': n, 'supercategory': 'object'}
                           for i, n in enumerate(class_names, start=1)]}
    Path(path).write_text(json.dumps(data), encoding='utf-8')


def prediction(image_id: int, category_id: int, mask: np.ndarray, score: float) -> dict:
    """One detection in COCO's results format."""
    return {'image_id': int(image_id), 'category_id': int(category_id),
            'segmentation': encode_mask(mask), 'score': float(score)}


def evaluate(dataset: CocoSet, predictions: Iterable[dict],
             image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """Mask AP, AP50 and AP75 (COCOeval, ``iouType='segm'``) of ``predictions`` on
    ``image_ids`` (default: every image); 0.0 when nothing was predicted.
    """
    from pycocotools.cocoeval import COCOeval
    keys = ('image_id', 'category_id', 'segmentation', 'score')
    preds = [{k: p[k] for k in keys} for p in predictions]  # loadRes adds fields in place
    if not preds:
        return {'AP': 0.0, 'AP50': 0.0, 'AP75': 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        result = dataset.coco.loadRes(preds)
        ev = COCOeval(dataset.coco, result, iouType='segm')
        ev.params.imgIds = list(image_ids if image_ids is not None else dataset.image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (max(0.0, float(v)) for v in ev.stats[:3])
    return {'AP': ap, 'AP50': ap50, 'AP75': ap75}
