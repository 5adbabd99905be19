"""Semantic pipeline against torchvision's own forward pass (no ROS)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg_ros.core.inference.pipeline import Pipeline, resolve_device
from seg_ros.core.inference.semantic import SemanticSegmenter, resize_shorter
from seg_ros.core.models.registry import load_semantic_model
from seg_ros.core.spatial.colors import make_palette, voc_palette
from seg_ros.core.spatial.imaging import array_to_buffer, buffer_to_frame

from conftest import cpu_and_cuda
from helpers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    make_semantic_weights,
    synthetic_image,
    torchvision_semantic_labels,
)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return make_semantic_weights(tmp_path_factory.mktemp('w') / 'sem.pt')


@pytest.mark.parametrize('device', cpu_and_cuda())
@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'bgra8'])
def test_labels_match_torchvision(weights, device, encoding):
    rgb = synthetic_image(72, 96)
    ref = torchvision_semantic_labels(weights, rgb, 6)
    assert np.bincount(ref.ravel()).max() < 0.8 * ref.size, 'reference must vary'
    arr = {'rgb8': rgb, 'bgr8': rgb[:, :, ::-1],
           'bgra8': np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)])}
    h, w, step, data = array_to_buffer(np.ascontiguousarray(arr[encoding]), encoding,
                                       step=arr[encoding].shape[1] * arr[encoding].shape[2]
                                       + 8)
    dev = torch.device(device)
    seg = SemanticSegmenter(load_semantic_model('lraspp_mobilenet_v3_large', str(weights),
                                                device=dev), dev, input_size=0)
    res = Pipeline(dev, semantic=seg)(buffer_to_frame(encoding, h, w, step, False, data),
                                      want_color=True)
    labels = res.semantic.labels
    assert labels.shape == (72, 96) and labels.dtype == np.uint8
    assert (labels == ref).mean() >= 0.995
    np.testing.assert_array_equal(res.semantic.color, voc_palette(6)[labels])


def test_input_size_resizes_model_input_but_not_output(weights):
    seg = SemanticSegmenter(load_semantic_model('lraspp_mobilenet_v3_large', str(weights)),
                            'cpu', input_size=40)
    x = torch.rand(1, 3, 60, 80)
    seen = []
    hook = seg.model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    res = seg(x)
    hook.remove()
    assert seen[0][-2:] == (40, 53)
    assert res.labels.shape == (60, 80)
    ref = seg.logits(x)
    normalised = resize_shorter((x - IMAGENET_MEAN) / IMAGENET_STD, 40)
    manual = F.interpolate(seg.model(normalised)['out'], size=(60, 80), mode='bilinear',
                           align_corners=False)
    torch.testing.assert_close(ref, manual, atol=1e-4, rtol=1e-4)


def test_more_than_256_classes_gives_uint16():
    seg = SemanticSegmenter(load_semantic_model('lraspp_mobilenet_v3_large', 'none',
                                                num_classes=300), 'cpu', input_size=0)
    assert seg.label_encoding == 'mono16'
    assert seg(torch.rand(1, 3, 32, 32)).labels.dtype == np.uint16


def test_palette():
    pal = voc_palette(21)
    assert pal.shape == (21, 3) and len({tuple(c) for c in pal}) == 21
    assert tuple(make_palette(3, [[1, 2, 3]])[0]) == (1, 2, 3)
    with pytest.raises(ValueError):
        make_palette(3, [[1, 2, 300]])


def test_resolve_device():
    assert resolve_device('cpu').type == 'cpu'
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    for bad in ('gpu', 'cuda:x', '', 'tpu:0'):
        with pytest.raises(ValueError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            resolve_device('cuda:0')


def test_pipeline_needs_a_model():
    with pytest.raises(ValueError):
        Pipeline(torch.device('cpu'))


@pytest.mark.needs_cuda
@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_reduced_precision_on_cuda_agrees_with_fp32(weights, precision):
    loaded = load_semantic_model('lraspp_mobilenet_v3_large', str(weights), device='cuda')
    x = torch.from_numpy(synthetic_image(72, 96)).permute(2, 0, 1)[None].float().cuda() / 255
    full = SemanticSegmenter(loaded, 'cuda', input_size=0)(x).labels
    half = SemanticSegmenter(loaded, 'cuda', input_size=0, precision=precision)(x).labels
    assert (full == half).mean() >= 0.98


def test_channels_last_is_the_same_model(weights):
    x = torch.from_numpy(synthetic_image(72, 96)).permute(2, 0, 1)[None].float() / 255
    a = SemanticSegmenter(load_semantic_model('lraspp_mobilenet_v3_large', str(weights)),
                          'cpu', input_size=0, channels_last=True)
    b = SemanticSegmenter(load_semantic_model('lraspp_mobilenet_v3_large', str(weights)),
                          'cpu', input_size=0, channels_last=False)
    torch.testing.assert_close(a.logits(x), b.logits(x), atol=1e-3, rtol=1e-3)
