"""The frame processor: a batch of camera frames in, every result out. No rclpy, no messages.

One processor serves the live node and ``segment_bag`` alike, so a frame's results never
depend on who asked. For each frame of a batch it runs the enabled models (frames of one
size share a forward pass), gives instances their ids (a tracker per camera lives here),
and, with ``depth.enabled``, computes the 3D of the frame from its registered depth and
camera model. Parameters come as an immutable :class:`~seg_ros.core.config.settings.Settings`
snapshot; :meth:`FrameProcessor.update` hands in a new one, taken before the next batch.

Contract of :meth:`FrameProcessor.process`:
    in: ``FrameInput`` per frame: ``camera`` (a name the processor was built with),
        ``frame`` (a validated :class:`~seg_ros.core.spatial.imaging.Frame`), ``stamp_ns`` (its
        image stamp), ``want_color`` / ``want_overlay``, and optionally ``depth``
        (:class:`DepthInput`), ``camera_model`` (:class:`CameraModel`) and, with
        ``depth.target_frame``, ``transform`` (:class:`~seg_ros.core.spatial.geometry.
        RigidTransform` from the camera's frame into the target frame at the stamp).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from seg_ros.core.config.settings import Settings
from seg_ros.core.inference.pipeline import Pipeline
from seg_ros.core.inference.results import FrameResult
from seg_ros.core.inference.tracking import Tracker
from seg_ros.core.spatial import geometry
from seg_ros.core.spatial.geometry import Frame3D, GeometryError, RigidTransform
from seg_ros.core.spatial.imaging import Frame


@dataclass(frozen=True)
class DepthInput:
    """A validated depth image registered to the colour frame.

    Attributes:
        depth: (h, w) uint16 or float32, as received; ``scale`` metres per unit.
        stamp_ns: its image stamp.
    """

    depth: np.ndarray
    scale: float
    stamp_ns: int = 0


@dataclass(frozen=True)
class CameraModel:
    """The colour camera's calibration, as sensor_msgs/CameraInfo carries it (k: 9 values,
    p: 12 values; width/height 0 = not stated).
    """

    k: tuple[float, ...]
    p: tuple[float, ...]
    width: int = 0
    height: int = 0


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


@dataclass
class Paired:
    """What a frame was paired with for its 3D: depth, camera model and, with
    ``depth.target_frame``, the transform into that frame at the frame's stamp
    (``transform_error``: why there is none).
    """

    depth: DepthInput | None = None
    camera_model: CameraModel | None = None
    transform: RigidTransform | None = None
    transform_error: str = ''


@dataclass
class FrameOutput:
    """What the processor made of one frame (see the module's contract)."""

    camera: str
    stamp_ns: int
    result: FrameResult | None = None
    geometry: Frame3D | None = None
    drops: list[tuple[str, str]] = field(default_factory=list)
    error: BaseException | None = None


#: called after inference with a frame's index in the batch and what it has been paired with
#: so far; returns the pairing completed where it can be (a depth or camera model that
#: arrived meanwhile, the transform at the frame's stamp)
LatePairing = Callable[[int, Paired], Paired]


class FrameProcessor:
    """Runs batches of frames of named cameras with one set of loaded models.

    Args:
        pipeline: the loaded models (:func:`seg_ros.core.models.loading.load_pipeline`).
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

    def _take_settings(self) -> Settings:
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
        for tracker in self.trackers.values():
            if tracker is not None:
                tracker.iou_threshold = s.track_iou
                tracker.timeout_s = s.track_timeout

    # -- frames --------------------------------------------------------------------------
    def process(self, frames: Sequence[FrameInput],
                late_pairing: LatePairing | None = None) -> list[FrameOutput]:
        """Run ``frames`` (at most one per camera) and return one output per frame."""
        s = self._take_settings()
        try:
            return self._run(list(frames), s, late_pairing)
        except torch.cuda.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [FrameOutput(f.camera, f.stamp_ns, drops=[(
                'out_of_memory', f'CUDA out of memory, cache released: {str(exc)[:200]}')],
                error=exc) for f in frames]
        except Exception as exc:  # one bad batch: find the culprit, answer the others
            if len(frames) > 1:
                return [self._alone(i, f, s, late_pairing) for i, f in enumerate(frames)]
            return [_failed(frames[0], exc)]

    def _alone(self, index: int, frame: FrameInput, s: Settings,
               late_pairing: LatePairing | None) -> FrameOutput:
        try:
            late = ((lambda _i, got: late_pairing(index, got)) if late_pairing is not None
                    else None)
            return self._run([frame], s, late)[0]
        except Exception as exc:
            return _failed(frame, exc)

    def _run(self, frames: list[FrameInput], s: Settings,
             late_pairing: LatePairing | None) -> list[FrameOutput]:
        results = self.pipeline.run_many(
            [f.frame for f in frames], [f.want_color for f in frames],
            [f.want_overlay for f in frames], [self.trackers.get(f.camera) for f in frames],
            [f.stamp_ns for f in frames], keep_image=s.depth_enabled, max_batch=s.max_batch)
        outputs = []
        for i, (f, res) in enumerate(zip(frames, results, strict=True)):
            out = FrameOutput(f.camera, f.stamp_ns, result=res)
            if s.depth_enabled:
                got = Paired(f.depth, f.camera_model, f.transform)
                if late_pairing is not None:
                    got = late_pairing(i, got)
                t0 = time.perf_counter()
                out.geometry = self._geometry(res, got, s, out.drops)
                res.timings['depth3d'] = time.perf_counter() - t0
            outputs.append(out)
        return outputs

    def _geometry(self, res: FrameResult, got: Paired, s: Settings,
                  drops: list[tuple[str, str]]) -> Frame3D | None:
        if got.camera_model is None:
            drops.append(('no_camera_info', 'no camera_info received yet'))
            return None
        if got.depth is None:
            drops.append(('no_depth', f'no depth image within depth.slop={s.depth_slop}s '
                          'of its stamp'))
            return None
        if s.target_frame and got.transform is None:
            drops.append(('no_transform', got.transform_error
                          or f'no transform into {s.target_frame} at the frame\'s stamp'))
            return None
        try:
            hw = tuple(int(v) for v in res.image.shape[-2:])
            m = got.camera_model
            intr = geometry.intrinsics_from(m.k, m.p, m.width, m.height, hw)
            return geometry.frame_3d(res, got.depth.depth, got.depth.scale, intr, s.depth_min,
                                     s.depth_max, s.depth_stride,
                                     got.transform if s.target_frame else None)
        except GeometryError as exc:
            drops.append((exc.reason, str(exc)))
            return None


def _failed(frame: FrameInput, exc: BaseException) -> FrameOutput:
    return FrameOutput(frame.camera, frame.stamp_ns, error=exc, drops=[(
        'processing_error', f'{type(exc).__name__}: {str(exc)[:300]}')])
