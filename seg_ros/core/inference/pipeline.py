"""One frame through every enabled model: raw buffer -> results ready to publish. No rclpy."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch

from seg_ros.core.inference.instances import InstanceSegmenter
from seg_ros.core.inference.results import FrameResult
from seg_ros.core.inference.semantic import SemanticSegmenter
from seg_ros.core.inference.tracking import Tracker
from seg_ros.core.spatial import geometry
from seg_ros.core.spatial.imaging import (
    Frame,
    PinnedStaging,
    buffer_to_frame,
    frame_to_rgb8,
    frame_to_tensor,
)


def resolve_device(spec: str) -> torch.device:
    """Parse a device parameter: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.

    ``auto`` picks CUDA when present. Raises ValueError for anything else, and for a CUDA
    device this machine does not have.
    """
    s = (spec or '').strip().lower()
    if s == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if s == 'cpu':
        return torch.device('cpu')
    if s == 'cuda' or (s.startswith('cuda:') and s[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f'device {spec!r} requested but CUDA is not available')
        dev = torch.device(s)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f'device {spec!r}: only {torch.cuda.device_count()} CUDA devices')
        return dev
    raise ValueError(f'device must be auto, cpu, cuda or cuda:N, got {spec!r}')


class Pipeline:
    """Converts a frame once and runs the enabled models on the same device tensor.

    Args:
        device: where the models live.
        semantic, instance: the enabled segmenters (at least one).
    """

    def __init__(self, device: torch.device, semantic: SemanticSegmenter | None = None,
                 instance: InstanceSegmenter | None = None) -> None:
        if semantic is None and instance is None:
            raise ValueError('enable at least one of semantic and instance segmentation')
        self.device = device
        self.semantic = semantic
        self.instance = instance
        self.staging = PinnedStaging() if device.type == 'cuda' else None

    @torch.inference_mode()
    def warm_up(self, height: int = 240, width: int = 320, keep_image: bool = True) -> None:
        """Run the models once on a blank rgb8 frame, through the path frames will take
        (``keep_image`` as the frames will have it): allocations, lazy init, cuDNN choice, a
        compiled backend's export and compile for this size.
        """
        blank = buffer_to_frame('rgb8', height, width, width * 3, False,
                                bytes(height * width * 3))
        with contextlib.ExitStack() as stack:  # int8 graphs are built here, never on a frame
            for compiled in self.compiled_graphs():
                stack.enter_context(compiled.warming())
            self.run_many([blank], want_color=[self.semantic is not None],
                          keep_image=keep_image)
        if self.instance is not None:
            self.instance.warm_heads()
        if keep_image:  # 3D from depth: the instances' compiled loops (the blank has none)
            geometry.warm_up(self.device)

    def compiled_graphs(self) -> list:
        """The compiled backends' graphs of the enabled models (none on torch)."""
        graphs = [self.semantic.compiled] if self.semantic is not None else []
        if self.instance is not None:
            graphs += getattr(self.instance, 'compiled_graphs', [])
        return [g for g in graphs if g is not None]

    @torch.inference_mode()
    def __call__(self, frame: Frame, want_color: bool = False,
                 want_overlay: bool = False, tracker: Tracker | None = None,
                 stamp_ns: int = 0, keep_image: bool = True) -> FrameResult:
        """Run every enabled model on ``frame``; timings per stage in seconds.

        ``semantic_forward`` / ``instance_forward`` are the model calls alone (inside
        ``semantic`` / ``instance``): the floor the rest of the frame is measured against.
        ``tracker`` (with the frame's ``stamp_ns``) gives instances persistent ids.
        ``keep_image=False`` allows leaving ``res.image`` unset (nothing needs the float
        image: no instances, no 3D), so that a compiled semantic backend takes the 8-bit
        pixels directly.
        """
        return self.run_many([frame], [want_color], [want_overlay], [tracker], [stamp_ns],
                             keep_image)[0]

    @torch.inference_mode()
    def run_many(self, frames: Sequence[Frame], want_color: Sequence[bool] | None = None,
                 want_overlay: Sequence[bool] | None = None,
                 trackers: Sequence[Tracker | None] | None = None,
                 stamps_ns: Sequence[int] | None = None, keep_image: bool = True,
                 max_batch: int = 0, depths: Sequence | None = None) -> list[FrameResult]:
        """Several frames (e.g. one per camera) with as few forward passes as possible:
        frames of the same size run as one batch (at most ``max_batch`` frames, 0 = no
        limit), different sizes in separate batches. Results in the order of ``frames``;
        each frame's timings are its batch's. Per-frame arguments as :meth:`__call__`;
        ``depths``: each frame's :class:`~seg_ros.core.spatial.depth_objects.DepthFrame` or
        None, for an instance model that needs depth.
        """
        n = len(frames)
        want_color = list(want_color or [False] * n)
        want_overlay = list(want_overlay or [False] * n)
        trackers = list(trackers or [None] * n)
        stamps_ns = list(stamps_ns or [0] * n)
        depths = list(depths or [None] * n)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(tuple(f.array.shape[:2]), []).append(i)
        results: list[FrameResult | None] = [None] * n
        for idxs in groups.values():
            step = max_batch if max_batch > 0 else len(idxs)
            for k in range(0, len(idxs), step):
                part = idxs[k:k + step]
                out = self._batch([frames[i] for i in part], [want_color[i] for i in part],
                                  [want_overlay[i] for i in part], [trackers[i] for i in part],
                                  [stamps_ns[i] for i in part], keep_image,
                                  [depths[i] for i in part])
                for i, r in zip(part, out, strict=True):
                    results[i] = r
        return results  # type: ignore[return-value]

    def _batch(self, frames: list[Frame], want_color: list[bool], want_overlay: list[bool],
               trackers: list, stamps_ns: list[int], keep_image: bool,
               depths: list) -> list[FrameResult]:
        """Frames of one size through every enabled model in one forward pass each."""
        t0 = time.perf_counter()
        n = len(frames)
        sem = self.semantic
        if (sem is not None and sem.compiled is not None and self.instance is None
                and not keep_image and self.device.type == 'cpu'):
            pixels = [frame_to_rgb8(f) for f in frames]
            if all(p is not None for p in pixels):  # the backend's graph converts them
                t1 = time.perf_counter()
                sem_out = sem.from_pixels(pixels, want_color=want_color)  # frame by frame
                timings = {'to_tensor': t1 - t0, 'semantic': time.perf_counter() - t1,
                           'semantic_forward': sem.last_forward_s}
                return [FrameResult(semantic=r, timings=dict(timings), batch_size=n)
                        for r in sem_out]
        # One float [0, 1] image for every model. (Normalising the integer pixels directly
        # measured slower inside the node here: 67 vs 52 ms for lraspp at 640x480.) The
        # pinned staging buffer is reused per frame: only for a batch of one.
        staging = self.staging if n == 1 else None
        xs = [frame_to_tensor(f, self.device, staging) for f in frames]
        x = xs[0] if n == 1 else torch.cat(xs)
        results = [FrameResult(image=x[i:i + 1], batch_size=n) for i in range(n)]
        t1 = time.perf_counter()
        timings = {'to_tensor': t1 - t0}
        if sem is not None:
            for r, s in zip(results, sem(x, want_color=want_color), strict=True):
                r.semantic = s
            t2 = time.perf_counter()
            timings['semantic'] = t2 - t1
            timings['semantic_forward'] = sem.last_forward_s
            t1 = t2
        if self.instance is not None:
            inst = self.instance.batch([r.image for r in results], want_overlay, trackers,
                                       stamps_ns, depths)
            for r, res in zip(results, inst, strict=True):
                r.instances = res
            timings['instance'] = time.perf_counter() - t1
            timings['instance_forward'] = self.instance.last_forward_s
        for r in results:
            r.timings = dict(timings)
        return results
