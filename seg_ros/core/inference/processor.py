"""The frame processor: a batch of camera frames in, every result out. No rclpy, no messages.

One processor serves the live node and ``segment_bag`` alike, so a frame's results never
depend on who asked. For each frame of a batch it runs the enabled models (frames of one
size share a forward pass), gives instances their ids (a tracker per camera lives here),
and, with ``depth.enabled``, computes the 3D of the frame from its registered depth and
camera model. Parameters come as an immutable :class:`~seg_ros.core.config.settings.Settings`
snapshot; :meth:`FrameProcessor.update` hands in a new one, taken before the next batch.

Contract of :meth:`FrameProcessor.process`:
    in: ``FrameInput`` per frame: ``camera`` (a name the processor was built with),
        ``frame`` (a validated :class:`~seg_ros.core.spatial.imaging.Frame`), ``stamp_ns``
        (its image stamp), ``frame_id``, ``want_color`` / ``want_overlay``, and optionally
        what it is paired with already (``depth``, ``camera_model``, ``transform``) and the
        camera's :class:`~seg_ros.core.spatial.pairing.Pairing` to complete that from,
        before inference and again after it; the batch's ``settings`` snapshot (taken once
        with :meth:`FrameProcessor.take_settings`) and, with ``depth.target_frame``, the
        :class:`~seg_ros.core.spatial.pairing.Transforms` to look the frame's transform up.
    out: ``FrameOutput`` per frame, in input order: ``result`` (labels, instances with
        ids; None when the frame failed), ``geometry`` (:class:`~seg_ros.core.spatial.geometry.
        Frame3D`, in the target frame when one is set; None without 3D), ``drops``
        ((reason, detail) pairs: why the frame or its 3D was not produced), ``error`` (the
        exception of a failed frame).
    never raises for a frame's content: one bad frame fails alone, the others of its batch
    are answered.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from seg_ros.core.config.settings import Settings
from seg_ros.core.inference.pipeline import Pipeline
from seg_ros.core.inference.results import FrameResult
from seg_ros.core.inference.tracking import Tracker
from seg_ros.core.spatial import geometry
from seg_ros.core.spatial.depth_objects_model import DepthFrame, params_from
from seg_ros.core.spatial.geometry import Frame3D, GeometryError, RigidTransform
from seg_ros.core.spatial.imaging import Frame
from seg_ros.core.spatial.pairing import (  # noqa: F401  (re-exported: the contract's types)
    CameraModel,
    DepthInput,
    Paired,
    Pairing,
    Transforms,
)


@dataclass
class FrameInput:
    """One camera's frame for the processor (see the module's contract)."""

    camera: str
    frame: Frame
    stamp_ns: int = 0
    want_color: bool = False
    want_overlay: bool = False
    depth: DepthInput | None = None
    camera_model: CameraModel | None = None
    transform: RigidTransform | None = None
    transform_error: str = ''
    frame_id: str = ''
    pairing: Pairing | None = None

    @classmethod
    def paired_with(cls, camera: str, frame: Frame, stamp_ns: int, got: Paired
                    ) -> FrameInput:
        """A frame already paired (segment_bag's driver pairs in bag order)."""
        return cls(camera, frame, stamp_ns, depth=got.depth, camera_model=got.camera_model,
                   transform=got.transform, transform_error=got.transform_error)


@dataclass
class FrameOutput:
    """What the processor made of one frame (see the module's contract)."""

    camera: str
    stamp_ns: int
    result: FrameResult | None = None
    geometry: Frame3D | None = None
    drops: list[tuple[str, str]] = field(default_factory=list)
    error: BaseException | None = None


class FrameProcessor:
    """Runs batches of frames of named cameras with one set of loaded models.

    Args:
        pipeline: the loaded models (:func:`seg_ros.core.inference.loading.load_pipeline`).
        settings: the parameter snapshot to start with.
        cameras: the camera names (``''`` for the single-camera node).

    Raises:
        ValueError: ``settings`` names instance classes the model does not know.
    """

    def __init__(self, pipeline: Pipeline, settings: Settings,
                 cameras: Sequence[str] = ('',)) -> None:
        self.pipeline = pipeline
        self.cameras = tuple(cameras) or ('',)
        self.trackers: dict[str, Tracker | None] = {}
        self._lock = threading.Lock()
        self._pending: Settings | None = None
        self.settings = settings
        self._apply(settings)
        for cam in self.cameras:
            self.trackers[cam] = (Tracker(settings.track_iou, settings.track_timeout)
                                  if pipeline.instance is not None and settings.tracking
                                  else None)

    # -- settings ------------------------------------------------------------------------
    def check(self, settings: Settings) -> str | None:
        """Why ``settings`` cannot be applied to these models (None if it can)."""
        inst = self.pipeline.instance
        if inst is not None:
            unknown = [c for c in settings.classes if c not in inst.loaded.class_names]
            if unknown:
                return (f'instance.classes: unknown class names {unknown}; the model knows '
                        f'{inst.loaded.class_names}')
        return None

    def update(self, settings: Settings) -> None:
        """Use ``settings`` from the next batch on (a batch running now keeps its own)."""
        with self._lock:
            self._pending = settings

    def take_settings(self) -> Settings:
        """The snapshot the next batch runs with (a pending :meth:`update` applied now): a
        caller that needs the batch's settings itself takes them here and hands them to
        :meth:`process`, so the batch never mixes two snapshots.
        """
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._apply(pending)
            self.settings = pending
        return self.settings

    def _apply(self, s: Settings) -> None:
        inst = self.pipeline.instance
        if inst is not None:
            inst.set_classes(s.classes)
            inst.score_threshold = s.score_threshold
            inst.model.roi_heads.score_thresh = s.score_threshold
            inst.mask_threshold = s.mask_threshold
            inst.duplicate_iou = s['instance.duplicate_iou']
            if hasattr(inst.model, 'nms_iou'):  # YOLO segmentation files
                inst.model.nms_iou = s['instance.nms_iou']
            if inst.needs_depth:  # depth_objects
                inst.model.params = params_from(s)
        for tracker in self.trackers.values():
            if tracker is not None:
                tracker.iou_threshold = s.track_iou
                tracker.timeout_s = s.track_timeout

    # -- frames --------------------------------------------------------------------------
    def process(self, frames: Sequence[FrameInput], settings: Settings | None = None,
                transforms: Transforms | None = None) -> list[FrameOutput]:
        """Run ``frames`` (at most one per camera) and return one output per frame.

        ``settings``: the batch's snapshot (default: :meth:`take_settings` now);
        ``transforms``: where the transform into ``depth.target_frame`` comes from.
        """
        s = settings if settings is not None else self.take_settings()
        try:
            return self._run(list(frames), s, transforms)
        except torch.cuda.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [FrameOutput(f.camera, f.stamp_ns, drops=[(
                'out_of_memory', f'CUDA out of memory, cache released: {str(exc)[:200]}')],
                error=exc) for f in frames]
        except Exception as exc:  # one bad batch: find the culprit, answer the others
            if len(frames) > 1:
                return [self._alone(f, s, transforms) for f in frames]
            return [_failed(frames[0], exc)]

    def _alone(self, frame: FrameInput, s: Settings,
               transforms: Transforms | None) -> FrameOutput:
        try:
            return self._run([frame], s, transforms)[0]
        except Exception as exc:
            return _failed(frame, exc)

    def _run(self, frames: list[FrameInput], s: Settings,
             transforms: Transforms | None) -> list[FrameOutput]:
        inst = self.pipeline.instance
        needs_depth = inst is not None and inst.needs_depth and s.depth_enabled
        before = [_pair(f, Paired(f.depth, f.camera_model, f.transform, f.transform_error), s,
                        wait=needs_depth) if s.depth_enabled else None for f in frames]
        results = self.pipeline.run_many(
            [f.frame for f in frames], [f.want_color for f in frames],
            [f.want_overlay for f in frames], [self.trackers.get(f.camera) for f in frames],
            [f.stamp_ns for f in frames], keep_image=s.depth_enabled, max_batch=s.max_batch,
            depths=(depths := [_depth_frame(f, got, self.pipeline.device) for f, got in
                               zip(frames, before, strict=True)] if needs_depth else None))
        outputs = []
        for i, (f, got, res) in enumerate(zip(frames, before, results, strict=True)):
            out = FrameOutput(f.camera, f.stamp_ns, result=res)
            if s.depth_enabled:
                used = got.depth if got is not None else None
                got = _pair(f, got, s, transforms)  # what arrived during inference
                # the depth the model segmented, already in metres: not converted again
                z = depths[i].z if depths and depths[i] is not None and got.depth is used \
                    else None
                t0 = time.perf_counter()
                out.geometry = self._geometry(res, f, got, s, out.drops, z)
                res.timings['depth3d'] = time.perf_counter() - t0
            outputs.append(out)
        return outputs

    def _geometry(self, res: FrameResult, f: FrameInput, got: Paired, s: Settings,
                  drops: list[tuple[str, str]], z: torch.Tensor | None = None
                  ) -> Frame3D | None:
        pairing = f.pairing
        if got.camera_model is None:
            on = f' on {pairing.info_topic}' if pairing is not None and pairing.info_topic else ''
            drops.append(('no_camera_info', f'no 3D outputs, no camera_info received yet{on} '
                          '(2D outputs continue)'))
            return None
        if got.depth is None:
            on = f' on {pairing.depth_topic}' if pairing is not None and pairing.depth_topic \
                else ''
            inst = self.pipeline.instance
            what = ('no instances (instance.model depth_objects segments depth) and no 3D '
                    'outputs' if inst is not None and inst.needs_depth else 'no 3D outputs')
            rest = ('' if inst is not None and inst.needs_depth and res.semantic is None
                    else ' (2D outputs continue)')
            drops.append(('no_depth', f'{what}, no depth image{on} within '
                          f'depth.slop={s.depth_slop}s of its stamp{rest}'))
            return None
        if s.target_frame and got.transform is None:
            why = (got.transform_error
                   or f'no transform into {s.target_frame} at the frame\'s stamp')
            drops.append(('no_transform', f'no 3D outputs: {why} (2D outputs continue)'))
            return None
        try:
            hw = tuple(int(v) for v in res.image.shape[-2:])
            m = got.camera_model
            intr = geometry.intrinsics_from(m.k, m.p, m.width, m.height, hw)
            return geometry.frame_3d(res, got.depth.depth, got.depth.scale, intr, s.depth_min,
                                     s.depth_max, s.depth_stride,
                                     got.transform if s.target_frame else None, z)
        except GeometryError as exc:
            drops.append((exc.reason, f'no 3D outputs: {exc}'))
            return None


def _failed(frame: FrameInput, exc: BaseException) -> FrameOutput:
    return FrameOutput(frame.camera, frame.stamp_ns, error=exc, drops=[(
        'processing_error', f'{type(exc).__name__}: {str(exc)[:300]}')])


def _pair(f: FrameInput, got: Paired, s: Settings,
          transforms: Transforms | None = None, wait: bool = False) -> Paired:
    """``got`` completed from the frame's pairing, and its transform looked up once depth and
    camera model are there (with ``depth.target_frame`` and a ``transforms``). ``wait``: a
    depth image not there yet is waited for up to ``depth.slop`` (a model needs it).
    """
    if f.pairing is not None:
        if wait and got.depth is None:
            got = Paired(f.pairing.wait_depth(f.stamp_ns, s.depth_slop, s.depth_slop),
                         got.camera_model, got.transform, got.transform_error)
        got = f.pairing.complete(got, f.stamp_ns, s.depth_slop)
    if (transforms is not None and s.target_frame and got.transform is None
            and got.depth is not None and got.camera_model is not None):
        got.transform, got.transform_error = transforms.lookup(
            s.target_frame, f.frame_id, f.stamp_ns, s.tf_timeout)
    return got


def _depth_frame(f: FrameInput, got: Paired | None, device: torch.device) -> DepthFrame | None:
    """The frame's depth in metres with its intrinsics, for a model that segments depth;
    None when it has none or it is unusable (the 3D step then says why).
    """
    if got is None or got.depth is None or got.camera_model is None:
        return None
    hw = tuple(int(v) for v in f.frame.array.shape[:2])
    m = got.camera_model
    try:
        intr = geometry.intrinsics_from(m.k, m.p, m.width, m.height, hw)
        z = geometry.depth_to_metres(got.depth.depth, got.depth.scale, hw, device)
    except GeometryError:
        return None
    return DepthFrame(z, intr.fx, intr.fy, intr.cx, intr.cy)


def drop_text(where: str, reason: str, detail: str, error: BaseException | None = None) -> str:
    """The warning line of a frame's drop (``where``: e.g. ``frame at 12.000000000``), one
    wording for the live node and segment_bag.
    """
    if reason == 'processing_error':
        return f'{where} failed: ' + (with_traceback(error) if error is not None else detail)
    return f'{where}: {detail}'


def with_traceback(exc: BaseException) -> str:
    """``Type: message`` and then the traceback (where it happened), for the log."""
    tb = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return f'{type(exc).__name__}: {str(exc)[:300]}\n{tb}'
