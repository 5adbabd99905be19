"""One frame through every enabled model: raw buffer -> results ready to publish. No rclpy."""
from __future__ import annotations

import time

import torch

from .imaging import Frame, PinnedStaging, frame_to_rgb8, frame_to_tensor
from .instances import InstanceSegmenter
from .results import FrameResult
from .semantic import SemanticSegmenter
from .tracking import Tracker


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
    def warm_up(self, height: int = 240, width: int = 320) -> None:
        """Run the models once on a blank frame (allocations, lazy init, cuDNN choice)."""
        x = torch.zeros((1, 3, height, width), device=self.device)
        if self.semantic is not None:
            self.semantic(x, want_color=True)
        if self.instance is not None:
            self.instance(x, want_overlay=False)

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
        t0 = time.perf_counter()
        sem = self.semantic
        if (sem is not None and sem.compiled is not None and self.instance is None
                and not keep_image and self.device.type == 'cpu'):
            pixels = frame_to_rgb8(frame)
            if pixels is not None:  # the backend's graph converts the 8-bit pixels itself
                res = FrameResult()
                t1 = time.perf_counter()
                res.timings['to_tensor'] = t1 - t0
                res.semantic = sem.from_pixels(pixels, want_color=want_color)
                res.timings['semantic'] = time.perf_counter() - t1
                res.timings['semantic_forward'] = sem.last_forward_s
                return res
        # One float [0, 1] image for every model. (Normalising the integer pixels directly
        # measured slower inside the node here: 67 vs 52 ms for lraspp at 640x480.)
        x = frame_to_tensor(frame, self.device, self.staging)
        res = FrameResult(image=x)
        t1 = time.perf_counter()
        res.timings['to_tensor'] = t1 - t0
        if self.semantic is not None:
            res.semantic = self.semantic(x, want_color=want_color)
            t2 = time.perf_counter()
            res.timings['semantic'] = t2 - t1
            res.timings['semantic_forward'] = self.semantic.last_forward_s
            t1 = t2
        if self.instance is not None:
            res.instances = self.instance(x, want_overlay=want_overlay, tracker=tracker,
                                          stamp_ns=stamp_ns)
            res.timings['instance'] = time.perf_counter() - t1
            res.timings['instance_forward'] = self.instance.last_forward_s
        return res
