"""Instance segmentation: frame tensor -> boxes, scores, classes, instance-id map. No rclpy."""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes

from seg_ros.core.inference.results import InstanceResult
from seg_ros.core.inference.semantic import autocast_context
from seg_ros.core.inference.tracking import Tracker
from seg_ros.core.models.instance_backends import CompiledBackbone, CompiledHead
from seg_ros.core.models.registry import LoadedModel
from seg_ros.core.spatial.colors import voc_palette

MAX_INSTANCES = 65535  # the id map is uint16
#: instance.duplicate_iou's default (BENCHMARKS.md, "Learned models keep their pixels")
DUPLICATE_IOU = 0.5


def compose_id_map(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Compose boolean masks, ordered by descending score, into one instance-id map.

    Args:
        masks: (N, H, W) bool on any device; row k-1 belongs to instance k.

    Returns:
        (H, W) uint16 on the same device: 0 where no mask is set, else the smallest k whose
        mask covers the pixel (the higher-scored instance keeps overlapping pixels).
    """
    if masks.shape[0] == 0:
        return torch.zeros((height, width), dtype=torch.uint16, device=masks.device)
    if masks.shape[0] > MAX_INSTANCES:
        raise ValueError(f'at most {MAX_INSTANCES} instances fit a uint16 id map')
    # instance k weighs n + 1 - k: the largest weight over a pixel is its first (highest-
    # scored) mask. One elementwise max across the masks: 1.4 ms for 10 masks at 640x480
    # here, where argmax over the instance axis took 57 ms. Up to 255 masks the bool masks
    # are read as bytes in place (no widening copy): 8 ms for 100 masks, 77 ms in int16.
    n = masks.shape[0]
    if n < 256:
        weight = torch.arange(n, 0, -1, dtype=torch.uint8, device=masks.device).view(n, 1, 1)
        best = (masks.view(torch.uint8) * weight).amax(0).to(torch.int16)
    else:
        dtype = torch.int16 if n < 2**15 else torch.int32
        weight = torch.arange(n, 0, -1, dtype=dtype, device=masks.device).view(n, 1, 1)
        best = (masks.to(dtype) * weight).amax(0)
    return torch.where(best > 0, n + 1 - best, 0).to(torch.uint16)


def rows_to_id_map(rows: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The uint16 id map of ``n`` disjoint objects given as one image: ``rows`` (H, W) holds
    each pixel's object row in 0..n-1 (-1: none); instance k is row ``idx[k - 1]``; rows not
    in ``idx`` are dropped (a frame composes this way in ~1 ms: no masks, no overlaps).
    """
    lut = torch.zeros(n + 1, dtype=torch.int32, device=rows.device)
    lut[idx + 1] = torch.arange(1, idx.numel() + 1, dtype=torch.int32, device=rows.device)
    return lut[rows.to(torch.int64) + 1].to(torch.uint16)


def merge_duplicates(masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                     iou: float) -> tuple[torch.Tensor, list[list[tuple[int, float]]]]:
    """One instance per object: the model's detections of the same object under other
    classes (torchvision's NMS is per class) merged into the highest-scored one.

    Args:
        masks: (N, H, W) bool, ordered by descending score.
        labels, scores: (N,) the instances' classes and scores.
        iou: masks overlapping a higher-scored kept mask with IoU above this are merged
            into it (>= 1 merges nothing).

    Returns:
        (kept indices into the N rows, ascending; per kept row the merged rows'
        ``(class index, score)``, best first, one per class and not the kept row's own).
    """
    n = int(masks.shape[0])
    if n < 2 or iou >= 1.0:
        return torch.arange(n, device=masks.device), [[] for _ in range(n)]
    # mask IoU on every second pixel of every second row (every fourth beyond 32 masks):
    # a duplicate's IoU is ~0.9 and a neighbour's near 0, far from the threshold on either
    # grid. At 640x480, 10 masks: 1.2-2 ms; 100 masks: 27 ms on the finer grid, 8.5 ms on
    # the coarser (2 AVX-512 cores, back to back)
    k = 2 if n <= 32 else 4
    m = masks[:, ::k, ::k].flatten(1).to(torch.float32)
    inter = m @ m.T
    area = inter.diagonal()
    overlap = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)).cpu().numpy()
    labels_np, scores_np = labels.cpu().numpy(), scores.cpu().numpy()
    taken = np.zeros(n, dtype=bool)
    kept: list[int] = []
    merged: list[list[tuple[int, float]]] = []
    for i in range(n):  # greedy, best first: one row of the matrix per kept instance
        if taken[i]:
            continue
        kept.append(i)
        later = np.nonzero((overlap[i, i + 1:] > iou) & ~taken[i + 1:])[0] + i + 1
        taken[later] = True
        classes = {int(labels_np[i])}
        alts = []
        for j in later.tolist():  # descending score: the best of each other class
            c = int(labels_np[j])
            if c not in classes:
                classes.add(c)
                alts.append((c, float(scores_np[j])))
        merged.append(alts)
    return torch.tensor(kept, dtype=torch.long, device=masks.device), merged


def blend_id_map(image: torch.Tensor, id_map: torch.Tensor,
                 colors: Sequence[tuple[int, int, int]], alpha: float) -> torch.Tensor:
    """The visible masks of an id map drawn over a (3, H, W) uint8 image in one pass: a
    colour table indexed by the map, no loop over instances. Pixel for pixel what
    ``torchvision.utils.draw_segmentation_masks(image, masks, alpha, colors)`` draws for the
    map's (non-overlapping) masks, ``colors[k-1]`` for instance k.
    """
    lut = torch.zeros((len(colors) + 1, 3), dtype=torch.uint8)
    if colors:
        lut[1:] = torch.tensor(colors, dtype=torch.uint8)
    ids = id_map.to(torch.int64)
    painted = torch.where((ids > 0)[None], lut[ids].permute(2, 0, 1), image)
    return (image * (1 - alpha) + painted * alpha).to(torch.uint8)


def motion_thumbnail(image: torch.Tensor, width: int = 160) -> tuple[np.ndarray, float]:
    """A small copy of a (1, 3, H, W) frame for the tracker's camera-motion estimate: its
    green channel (the luminance's main part) sampled every k-th pixel, (h, w) float32 on
    the host, and k, the frame pixels per thumbnail pixel. Sampling, not averaging: ~20x
    cheaper, and phase correlation does not need the lost detail.
    """
    k = max(1, int(image.shape[-1]) // width)
    return image[0, 1, ::k, ::k].float().cpu().numpy(), float(k)


def overlay_labels(ids: Sequence[int], class_ids: Sequence[int],
                   class_names: Sequence[str]) -> list[str]:
    """The overlay's text of each instance: ``id:class`` with the published id (the track
    id with tracking), so the overlay names objects as the masks and detections do.
    """
    return [f'{int(i)}:{class_names[int(c)] if int(c) < len(class_names) else int(c)}'
            for i, c in zip(ids, class_ids, strict=True)]


class InstanceSegmenter:
    """Runs a Mask R-CNN model on one frame at a time.

    Args:
        loaded: from :func:`~seg_ros.core.models.registry.load_instance_model` (its ROI
            heads already
            apply ``score_threshold`` and ``max_detections``).
        device: the model's device.
        score_threshold: instances scoring below are dropped.
        mask_threshold: mask probability above which a pixel belongs to the instance.
        max_detections: at most this many instances, the highest-scored ones.
        classes: class names to keep (empty keeps all).
        precision: ``fp32`` | ``fp16`` | ``bf16`` (autocast, CUDA only).
        duplicate_iou: detections of one object under other classes (mask IoU above this
            with a higher-scored one) become further hypotheses of that instance (1.0:
            every detection of the model is an instance, as torchvision returns them).

    Raises:
        ValueError: a name in ``classes`` is not a class of the model.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device | str,
                 score_threshold: float = 0.5, mask_threshold: float = 0.5,
                 max_detections: int = 100, classes: Sequence[str] = (),
                 precision: str = 'fp32', duplicate_iou: float = DUPLICATE_IOU) -> None:
        self.loaded = loaded
        self.duplicate_iou = float(duplicate_iou)
        self.model = loaded.model
        #: seconds of the last model call alone (transform, network, torchvision post-processing)
        self.last_forward_s = 0.0
        self.device = torch.device(device)
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.max_detections = int(max_detections)
        self.precision = precision
        self.keep_ids: torch.Tensor | None = None
        self.set_classes(classes)
        self.palette = voc_palette(max(loaded.num_classes, 2))

    @property
    def compiled_graphs(self) -> list:
        """The compiled backend's graphs standing in the model (none on torch)."""
        return [m.compiled for m in self.model.modules()
                if isinstance(m, (CompiledBackbone, CompiledHead))]

    def warm_heads(self) -> None:
        """Export and compile the compiled ROI heads now (a frame without detections, such
        as a warm-up's blank one, never reaches the mask head: the first frame with an
        object would pay its export).
        """
        for mod in self.model.modules():
            if isinstance(mod, CompiledHead):
                mod.compiled.warm()
        warm = getattr(self.model, 'warm_up', None)
        if callable(warm):  # depth_objects: its compiled CPU loops (a blank frame has no depth)
            warm()

    def set_classes(self, classes: Sequence[str]) -> None:
        """Keep only instances of these class names (empty keeps all).

        Raises:
            ValueError: a name is not a class of the model (nothing is changed).
        """
        names = self.loaded.class_names
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ValueError(f'unknown class names {unknown}; the model knows {names}')
        self.keep_ids = (torch.tensor([names.index(c) for c in classes], device=self.device)
                         if classes else None)

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, want_overlay: bool = False,
                 tracker: Tracker | None = None, stamp_ns: int = 0) -> InstanceResult:
        """Detect and segment the objects of one frame.

        Args:
            image: (1, 3, H, W) float RGB in [0, 1] on the model's device.
            want_overlay: also draw masks, boxes and labels over the image.
            tracker: keeps ids across frames; ``ids`` and the id map then carry track ids.
            stamp_ns: the image's stamp (the tracker ages tracks on it).

        Returns:
            :class:`InstanceResult`; masks are thresholded and composed on the device and
            only the uint16 id map and small arrays reach the host.
        """
        return self.batch([image], [want_overlay], [tracker], [stamp_ns])[0]

    @property
    def needs_depth(self) -> bool:
        """True when the model segments the frame's registered depth (``depth_objects``)."""
        return bool(getattr(self.model, 'needs_depth', False))

    @torch.inference_mode()
    def batch(self, images: Sequence[torch.Tensor], want_overlay: Sequence[bool],
              trackers: Sequence[Tracker | None], stamps_ns: Sequence[int],
              depths: Sequence | None = None) -> list[InstanceResult]:
        """Several frames (each (1, 3, H, W), sizes may differ) in one model call, as
        torchvision's Mask R-CNN batches a list of images; each frame then has its own
        thresholds, id map, tracker and overlay. Same arguments as :meth:`__call__`, one
        per frame; ``depths``: each frame's
        :class:`~seg_ros.core.spatial.depth_objects.DepthFrame` (or None) for a model that
        :attr:`needs_depth`.
        """
        with autocast_context(self.device, self.precision):
            t0 = time.perf_counter()
            if self.needs_depth:  # depth_objects: its masks never overlap, one row image
                outs = self.model([im[0] for im in images], depths, masks=False)
            else:
                outs = self.model([im[0] for im in images])
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
            self.last_forward_s = time.perf_counter() - t0
        return [self._post(im, out, ov, tr, st) for im, out, ov, tr, st
                in zip(images, outs, want_overlay, trackers, stamps_ns, strict=True)]

    def _post(self, image: torch.Tensor, out: dict, want_overlay: bool,
              tracker: Tracker | None, stamp_ns: int) -> InstanceResult:
        h, w = image.shape[-2:]
        scores = out['scores'].float()
        keep = scores >= self.score_threshold
        if self.keep_ids is not None:
            keep &= torch.isin(out['labels'], self.keep_ids)
        idx = torch.nonzero(keep).flatten()
        idx = idx[torch.argsort(scores[idx], descending=True, stable=True)]
        # threshold in place, then gather bytes: gathering the float masks first copied
        # 123 MB for 100 instances at 640x480 (90 ms)
        if 'masks' in out:
            masks = (out['masks'][:, 0] > self.mask_threshold)[idx]
            rows, alternatives = merge_duplicates(masks, out['labels'][idx], scores[idx],
                                                  self.duplicate_iou)
            rows, alternatives = rows[:self.max_detections], alternatives[:self.max_detections]
            idx = idx[rows]
            id_map = compose_id_map(masks[rows], h, w)
        else:  # disjoint objects as one image of rows (depth_objects): nothing to compose
            idx = idx[:self.max_detections]
            alternatives = [[] for _ in range(idx.numel())]
            id_map = rows_to_id_map(out['rows'], idx, int(out['boxes'].shape[0]))
        boxes = out['boxes'][idx].float()
        labels = out['labels'][idx]
        boxes_np = boxes.cpu().numpy().astype(np.float32)
        class_np = labels.cpu().numpy().astype(np.int64)
        ids = np.arange(1, boxes_np.shape[0] + 1, dtype=np.int64)
        reset = False
        if tracker is not None:
            small, scale = motion_thumbnail(image)
            update = tracker.update(boxes_np, class_np, stamp_ns, small, scale)
            ids, reset = update.ids, update.reset
        overlay = (self._draw(image[0], boxes, labels, id_map, ids)
                   if want_overlay else None)
        id_map_np = id_map.cpu().numpy()
        if tracker is not None and ids.size:
            lut = np.concatenate([[0], ids]).astype(np.uint16)
            id_map_np = np.take(lut, id_map_np)  # instance k -> its track id
        return InstanceResult(
            boxes=boxes_np, scores=scores[idx].cpu().numpy().astype(np.float32),
            class_ids=class_np, id_map=id_map_np, ids=ids, overlay=overlay,
            tracks_reset=reset, alternatives=alternatives)

    def _draw(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
              id_map: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        img = (image * 255).round().to(torch.uint8)
        n = boxes.shape[0]
        if n:
            colors = [tuple(int(v) for v in self.palette[int(c) % len(self.palette)])
                      for c in labels.tolist()]
            img = blend_id_map(img.cpu(), id_map.cpu(), colors, 0.5)
            names = self.loaded.class_names
            text = overlay_labels(ids, labels.tolist(), names)
            img = draw_bounding_boxes(img, boxes.cpu(), labels=text, colors=colors, width=2)
        return img.permute(1, 2, 0).contiguous().cpu().numpy()
