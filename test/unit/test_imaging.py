"""Round trips and validation of the image conversion module (no ROS)."""
import numpy as np
import pytest
import torch

from seg_ros.core.spatial.imaging import (
    ENCODINGS,
    ImageConversionError,
    array_to_buffer,
    buffer_to_frame,
    frame_to_tensor,
)

from conftest import cpu_and_cuda


def _random(encoding, h=5, w=7, seed=0):
    ch, dtype, _ = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, (h, w, ch), endpoint=True).astype(dtype)


@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('pad', [0, 3, 16])
def test_round_trip_every_encoding(encoding, bigendian, pad):
    a = _random(encoding)
    row = a.shape[1] * a.shape[2] * a.itemsize
    pad = pad + (pad % a.itemsize)  # step must stay a multiple of the sample size
    h, w, step, data = array_to_buffer(a, encoding, bigendian, step=row + pad)
    assert (h, w, step, len(data)) == (5, 7, row + pad, (row + pad) * 5)
    frame = buffer_to_frame(encoding, h, w, step, bigendian, data)
    assert frame.array.dtype == a.dtype and frame.array.dtype.isnative
    np.testing.assert_array_equal(frame.array, a)


def test_big_endian_bytes_are_really_big_endian():
    a = np.array([[[0x0102]]], np.uint16)
    _, _, _, data = array_to_buffer(a, 'mono16', is_bigendian=True)
    assert data == b'\x01\x02'
    assert buffer_to_frame('mono16', 1, 1, 2, True, data).array[0, 0, 0] == 0x0102
    assert buffer_to_frame('mono16', 1, 1, 2, False, data).array[0, 0, 0] == 0x0201


def test_native_frame_is_a_view_not_a_copy():
    a = _random('rgb8')
    buf = bytearray(array_to_buffer(a, 'rgb8', step=32)[3])
    frame = buffer_to_frame('rgb8', 5, 7, 32, False, buf)
    buf[32] = (int(a[1, 0, 0]) + 1) % 256  # first byte of row 1
    assert frame.array[1, 0, 0] == (int(a[1, 0, 0]) + 1) % 256


@pytest.mark.parametrize('device', cpu_and_cuda())
@pytest.mark.parametrize('encoding', sorted(ENCODINGS))
def test_tensor_is_rgb_in_unit_range(encoding, device):
    a = _random(encoding, seed=3)
    h, w, step, data = array_to_buffer(a, encoding, step=a.shape[1] * a.shape[2] *
                                       a.itemsize + 4)
    t = frame_to_tensor(buffer_to_frame(encoding, h, w, step, False, data), device)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32
    _, dtype, order = ENCODINGS[encoding]
    scale = float(np.iinfo(dtype).max)
    if order == 'mono':
        expect = np.repeat(a, 3, axis=2)
    else:
        expect = a[:, :, :3] if order == 'rgb' else a[:, :, 2::-1]
    got = t[0].permute(1, 2, 0).cpu().numpy() * scale
    np.testing.assert_allclose(got, expect.astype(np.float64), atol=0.5)


@pytest.mark.parametrize('fields, reason', [
    (('yuv422', 2, 2, 4, False, b'\0' * 8), 'unsupported_encoding'),
    (('8UC3', 2, 2, 6, False, b'\0' * 12), 'unsupported_encoding'),
    (('rgb8', 0, 2, 6, False, b''), 'zero_size'),
    (('rgb8', 2, 0, 0, False, b''), 'zero_size'),
    (('rgb8', 2, 2, 5, False, b'\0' * 10), 'bad_step'),
    (('mono16', 2, 2, 5, False, b'\0' * 10), 'bad_step'),
    (('rgb8', 2, 2, 6, False, b'\0' * 11), 'data_size'),
    (('rgb8', 2, 2, 6, False, b'\0' * 13), 'data_size'),
    (('rgb8', 100000, 100000, 300000, False, b'\0' * 4), 'too_large'),
])
def test_bad_fields_are_refused_with_a_reason(fields, reason):
    with pytest.raises(ImageConversionError) as info:
        buffer_to_frame(*fields)
    assert info.value.reason == reason
    assert str(info.value)


def test_max_pixels_limit():
    with pytest.raises(ImageConversionError, match='max_image_pixels'):
        buffer_to_frame('mono8', 10, 10, 10, False, b'\0' * 100, max_pixels=99)
    at_limit = buffer_to_frame('mono8', 10, 10, 10, False, bytes(range(100)), max_pixels=100)
    assert at_limit.encoding == 'mono8' and at_limit.array.shape[:2] == (10, 10)
    assert int(at_limit.array[9, 9].ravel()[0]) == 99  # the data, not a placeholder


def test_encoder_refuses_mismatched_arrays():
    with pytest.raises(ImageConversionError):
        array_to_buffer(np.zeros((2, 2, 3), np.uint16), 'rgb8')
    with pytest.raises(ImageConversionError):
        array_to_buffer(np.zeros((2, 2), np.uint8), 'rgb8')
    with pytest.raises(ImageConversionError):
        array_to_buffer(np.zeros((2, 2, 3), np.uint8), 'rgb8', step=5)


@pytest.mark.needs_cuda
def test_pinned_staging_uploads_exactly():
    from seg_ros.core.spatial.imaging import PinnedStaging
    a = _random('rgb8')
    h, w, step, data = array_to_buffer(a, 'rgb8', step=32)
    frame = buffer_to_frame('rgb8', h, w, step, False, data)
    staging = PinnedStaging()
    t = frame_to_tensor(frame, 'cuda', staging)
    ref = frame_to_tensor(frame, 'cpu')
    torch.testing.assert_close(t.cpu(), ref)
    buf = staging._buf
    frame_to_tensor(frame, 'cuda', staging)
    assert staging._buf is buf  # reused, not reallocated


def test_decode_compressed_png_jpeg_and_errors():
    import io

    from PIL import Image

    from seg_ros.core.spatial.imaging import decode_compressed
    a = _random('rgb8', 16, 24)
    for fmt in ('PNG', 'JPEG'):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, fmt, quality=95)
        f = decode_compressed(f'rgb8; {fmt.lower()} compressed bgr8', buf.getvalue())
        assert f.encoding == 'rgb8' and f.array.shape == (16, 24, 3)
        if fmt == 'PNG':
            np.testing.assert_array_equal(f.array, a)
        data = buf.getvalue()
        for bad, reason in ((b'', 'empty_data'), (data[:len(data) // 2], 'decode_error'),
                            (b'nonsense' * 9, 'decode_error')):
            with pytest.raises(ImageConversionError) as info:
                decode_compressed(fmt.lower(), bad)
            assert info.value.reason == reason
        with pytest.raises(ImageConversionError) as info:
            decode_compressed(fmt.lower(), data, max_pixels=100)
        assert info.value.reason == 'too_large'
    with pytest.raises(ImageConversionError) as info:
        decode_compressed('tiff', b'II*\0')
    assert info.value.reason == 'unsupported_format'
    buf = io.BytesIO()
    Image.fromarray(a[:, :, 0]).save(buf, 'PNG')
    f = decode_compressed('mono8; png compressed', buf.getvalue())
    assert f.encoding == 'mono8' and f.array.shape == (16, 24, 1)
