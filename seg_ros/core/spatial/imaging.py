"""Raw image buffers <-> numpy arrays <-> device tensors. No rclpy.

This is our small replacement for cv_bridge, which cannot be installed outside a ROS
distribution (PyPI's ``cv-bridge`` is an unmaintained ROS 1 copy). It works on the fields
of a sensor_msgs/Image (encoding, height, width, step, is_bigendian, data) rather than on
the message, so it is testable without ROS. As cv_bridge does, it honours ``step`` row
padding and ``is_bigendian``; unlike it, it validates every field before touching data and
raises :class:`ImageConversionError` with a machine-readable ``reason``.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# encoding -> (channels, numpy dtype, channel order of the colour channels)
ENCODINGS: dict[str, tuple[int, type, str]] = {
    'rgb8': (3, np.uint8, 'rgb'),
    'bgr8': (3, np.uint8, 'bgr'),
    'rgba8': (4, np.uint8, 'rgb'),
    'bgra8': (4, np.uint8, 'bgr'),
    'mono8': (1, np.uint8, 'mono'),
    'rgb16': (3, np.uint16, 'rgb'),
    'bgr16': (3, np.uint16, 'bgr'),
    'rgba16': (4, np.uint16, 'rgb'),
    'bgra16': (4, np.uint16, 'bgr'),
    'mono16': (1, np.uint16, 'mono'),
}

#: Default upper bound on width x height (a 16k x 16k frame): refuses absurd headers
#: before any allocation.
DEFAULT_MAX_PIXELS = 16384 * 16384

_HOST_BIG = sys.byteorder == 'big'


class ImageConversionError(ValueError):
    """An image cannot be converted; ``reason`` is a short code used for drop counters.

    Reasons: ``unsupported_encoding``, ``zero_size``, ``too_large``, ``bad_step``,
    ``data_size``, ``bad_array``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    """A validated image as a (possibly strided, zero-copy) numpy view.

    Attributes:
        array: (H, W, C) uint8 or uint16 array in host byte order; a view over the
            message buffer when no byte swap was needed (rows may be padded: strided).
        encoding: the source encoding (a key of :data:`ENCODINGS`).
    """

    array: np.ndarray
    encoding: str


def _lookup(encoding: str) -> tuple[int, type, str]:
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        shown = repr(encoding)[:40]
        raise ImageConversionError(
            'unsupported_encoding',
            f'unsupported encoding {shown}; supported: {", ".join(ENCODINGS)}') from None


def buffer_to_frame(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                    data, max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """Validate image fields and view ``data`` as an (H, W, C) array without copying.

    Args:
        encoding, height, width, step, is_bigendian: the sensor_msgs/Image fields.
        data: any bytes-like buffer (bytes, array.array('B'), memoryview, ndarray).
        max_pixels: refuse frames with more than this many pixels.

    Returns:
        A :class:`Frame`. 16-bit data in non-host byte order is byte-swapped (one copy);
        otherwise the array is a view over ``data``.

    Raises:
        ImageConversionError: unsupported encoding, zero/absurd size, ``step`` smaller than
            a row, or ``len(data) != step * height``.
    """
    channels, dtype, _ = _lookup(encoding)
    return Frame(buffer_to_array(height, width, step, is_bigendian, data, channels, dtype,
                                 max_pixels), encoding)


def buffer_to_array(height: int, width: int, step: int, is_bigendian: bool, data,
                    channels: int, dtype, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Validate image fields and view ``data`` as an (H, W, channels) ``dtype`` array
    (a view unless a byte swap was needed); the checks of :func:`buffer_to_frame`.

    Raises:
        ImageConversionError: zero/absurd size, bad ``step``, ``len(data) != step * height``.
    """
    itemsize = np.dtype(dtype).itemsize
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError('zero_size', f'image has zero size ({width}x{height})')
    if height * width > max_pixels:
        raise ImageConversionError(
            'too_large', f'image {width}x{height} exceeds max_image_pixels={max_pixels}')
    row = width * channels * itemsize
    if step < row:
        raise ImageConversionError(
            'bad_step', f'step {step} smaller than width x bytes per pixel = {row}')
    if step % itemsize:
        raise ImageConversionError('bad_step', f'step {step} not a multiple of {itemsize}')
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != step * height:
        raise ImageConversionError(
            'data_size', f'data has {buf.size} bytes, expected step x height = {step * height}')
    wire = np.dtype(dtype).newbyteorder('>' if is_bigendian else '<')
    arr = np.ndarray((height, width, channels), dtype=wire, buffer=buf,
                     strides=(step, channels * itemsize, itemsize))
    if itemsize > 1 and not wire.isnative:
        arr = arr.astype(wire.newbyteorder('='))
    return arr


def array_to_buffer(array: np.ndarray, encoding: str, is_bigendian: bool = False,
                    step: int | None = None) -> tuple[int, int, int, bytes]:
    """Encode an (H, W[, C]) array as image fields; the inverse of :func:`buffer_to_frame`.

    Args:
        array: uint8 or uint16 array matching ``encoding``'s channels and depth.
        encoding: a key of :data:`ENCODINGS`.
        is_bigendian: byte order to write 16-bit data in.
        step: bytes per row (default: packed); larger values pad each row with zeros.

    Returns:
        ``(height, width, step, data)``.

    Raises:
        ImageConversionError: shape or dtype does not fit the encoding, or step too small.
    """
    channels, dtype, _ = _lookup(encoding)
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels or a.dtype != np.dtype(dtype):
        raise ImageConversionError(
            'bad_array', f'array {a.shape} {a.dtype} does not fit {encoding} '
            f'({channels} x {np.dtype(dtype).name})')
    h, w = a.shape[:2]
    row = w * channels * a.itemsize
    step = row if step is None else int(step)
    if step < row:
        raise ImageConversionError('bad_step', f'step {step} smaller than row size {row}')
    order = '>' if is_bigendian else '<'
    a = a.astype(a.dtype.newbyteorder(order), copy=False) if a.itemsize > 1 else a
    packed = np.ascontiguousarray(a).view(np.uint8).reshape(h, row)
    if step == row:
        return h, w, step, packed.tobytes()
    out = np.zeros((h, step), np.uint8)
    out[:, :row] = packed
    return h, w, step, out.tobytes()


def frame_to_device(frame: Frame, device: torch.device | str,
                    staging: PinnedStaging | None = None) -> tuple[torch.Tensor, float]:
    """Move a frame's raw pixels to ``device`` as a (1, 3, H, W) RGB integer tensor.

    One host->device copy of the raw pixels (through ``staging``, a reused pinned buffer,
    with a non-blocking copy when given and the device is CUDA); channel reordering, alpha
    dropping and grey expansion are views on the device (BGR costs one integer copy). On
    the CPU the result is a zero-copy view of the frame. Its strides are channels-last.

    Returns:
        ``(pixels, full_scale)``: uint8 or uint16 tensor and 255.0 or 65535.0.
    """
    _, _, order = ENCODINGS[frame.encoding]
    arr = frame.array
    with warnings.catch_warnings():
        # A view over a read-only message buffer: torch warns, but we only read from it.
        warnings.simplefilter('ignore', UserWarning)
        t = torch.from_numpy(arr)  # zero-copy, strided rows allowed
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    device = torch.device(device)
    if device.type == 'cuda' and staging is not None:
        t = staging.upload(t, device)
    else:
        t = t.to(device)
    t = t.permute(2, 0, 1)  # C, H, W
    if order == 'mono':
        t = t.expand(3, -1, -1)
    else:
        t = t[:3]
        if order == 'bgr':
            t = t.flip(0)
    return t.unsqueeze(0), scale


def frame_to_rgb8(frame: Frame) -> torch.Tensor | None:
    """A frame's pixels as a contiguous (1, H, W, 3) uint8 RGB host tensor, what a compiled
    backend takes: a zero-copy view for an unpadded rgb8 frame, one copy for other 8-bit
    encodings; None for 16-bit encodings (they take the float path).
    """
    _, dtype, order = ENCODINGS[frame.encoding]
    if dtype != np.uint8:
        return None
    arr = frame.array
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # read-only message buffer: only read
        t = torch.from_numpy(arr)
    if order == 'mono':
        t = t.expand(-1, -1, 3)
    else:
        t = t[..., :3]
        if order == 'bgr':
            t = t.flip(-1)
    return t.contiguous().unsqueeze(0)


def to_unit_float(pixels: torch.Tensor, full_scale: float) -> torch.Tensor:
    """Integer pixels -> float32 in [0, 1] in one pass (layout preserved)."""
    if pixels.dtype == torch.uint8:
        return pixels * (1.0 / full_scale)  # uint8 x python float -> float32, one kernel
    return pixels.to(torch.float32).mul_(1.0 / full_scale)


def frame_to_tensor(frame: Frame, device: torch.device | str,
                    staging: PinnedStaging | None = None) -> torch.Tensor:
    """Move a frame to ``device`` as a float (1, 3, H, W) RGB tensor in [0, 1]."""
    return to_unit_float(*frame_to_device(frame, device, staging))


class PinnedStaging:
    """A reused page-locked host buffer for non-blocking host->GPU copies.

    The buffer is reallocated only when the frame's shape or dtype changes. Reuse is safe
    because the pipeline reads its results back to the host (a synchronisation) before the
    next frame is staged.
    """

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def upload(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Copy host tensor ``t`` into the pinned buffer, then to ``device`` (async)."""
        if self._buf is None or self._buf.shape != t.shape or self._buf.dtype != t.dtype:
            self._buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self._buf.copy_(t)
        return self._buf.to(device, non_blocking=True)


#: sensor_msgs/CompressedImage formats we decode (image_transport's "compressed" plugin
#: writes e.g. "rgb8; jpeg compressed bgr8"; plain "jpeg"/"png" are accepted too).
COMPRESSED_FORMATS = ('jpeg', 'png')


def decode_compressed(fmt: str, data, max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """Decode a CompressedImage payload (JPEG or PNG) into an rgb8 or mono8 frame.

    The image header is read first: the size is checked against ``max_pixels`` before any
    pixel is decoded (no decompression bombs).

    Raises:
        ImageConversionError: ``unsupported_format``, ``empty_data``, ``too_large``,
            ``zero_size`` or ``decode_error`` (truncated or garbage bytes).
    """
    import io

    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    f = str(fmt).lower()
    kind = next((k for k in COMPRESSED_FORMATS if k in f), None)
    if kind is None:
        raise ImageConversionError(
            'unsupported_format', f'compressed format {str(fmt)[:40]!r} is not jpeg or png')
    raw = memoryview(data).cast('B') if not isinstance(data, (bytes, bytearray)) else data
    if len(raw) == 0:
        raise ImageConversionError('empty_data', 'compressed image has no data')
    try:
        with PILImage.open(io.BytesIO(bytes(raw)), formats=[kind.upper()]) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageConversionError('zero_size', f'image has zero size ({w}x{h})')
            if w * h > max_pixels:
                raise ImageConversionError(
                    'too_large', f'image {w}x{h} exceeds max_image_pixels={max_pixels}')
            mono = im.mode in ('L', '1', 'I;16', 'I')
            im = im.convert('L' if mono else 'RGB')
            arr = np.asarray(im)
    except ImageConversionError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageConversionError('decode_error',
                                   f'cannot decode {kind}: {str(exc)[:120]}') from None
    if mono:
        return Frame(arr[:, :, None], 'mono8')
    return Frame(arr, 'rgb8')
