"""Model registry: weights sources and the errors of bad weights files (no ROS)."""

import pytest
import torch

from seg_ros.core.models.registry import (
    SEMANTIC_MODELS,
    ModelLoadError,
    load_instance_model,
    load_semantic_model,
    read_state_dict,
)

from helpers import make_semantic_weights


def test_random_init_is_flagged(tmp_path):
    m = load_semantic_model('lraspp_mobilenet_v3_large', 'none', num_classes=4)
    assert m.random_init and m.num_classes == 4 and m.class_names == ['0', '1', '2', '3']
    assert not m.model.training


def test_file_weights_load_exactly(tmp_path):
    path = make_semantic_weights(tmp_path / 'w.pt', num_classes=5)
    m = load_semantic_model('lraspp_mobilenet_v3_large', str(path),
                            class_names=['a', 'b', 'c', 'd', 'e'])
    assert m.class_names == ['a', 'b', 'c', 'd', 'e'] and not m.random_init
    ref = torch.load(path, weights_only=True)
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_num_classes_taken_from_file(tmp_path):
    path = make_semantic_weights(tmp_path / 'w.pt', num_classes=7)
    assert load_semantic_model('lraspp_mobilenet_v3_large', str(path)).num_classes == 7


@pytest.mark.parametrize('name', sorted(SEMANTIC_MODELS))
def test_every_semantic_architecture_builds(name):
    if 'resnet101' in name:
        pytest.skip('same builder family as resnet50; skipped for time')
    m = load_semantic_model(name, 'none', num_classes=3)
    with torch.no_grad():
        out = m.model(torch.zeros(1, 3, 32, 32))['out']
    assert out.shape == (1, 3, 32, 32)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match='not found'):
        load_semantic_model('lraspp_mobilenet_v3_large', str(tmp_path / 'nope.pt'))


def test_wrong_class_count(tmp_path):
    path = make_semantic_weights(tmp_path / 'w.pt', num_classes=5)
    with pytest.raises(ModelLoadError, match='num_classes=9 but weights file'):
        load_semantic_model('lraspp_mobilenet_v3_large', str(path), num_classes=9)


def test_wrong_architecture(tmp_path):
    path = make_semantic_weights(tmp_path / 'w.pt', num_classes=5)
    with pytest.raises(ModelLoadError, match='does not fit'):
        load_semantic_model('deeplabv3_mobilenet_v3_large', str(path))


def test_class_names_length_checked(tmp_path):
    path = make_semantic_weights(tmp_path / 'w.pt', num_classes=5)
    with pytest.raises(ModelLoadError, match='class_names has 2'):
        load_semantic_model('lraspp_mobilenet_v3_large', str(path), class_names=['a', 'b'])


def test_corrupt_file(tmp_path):
    p = tmp_path / 'bad.pt'
    p.write_bytes(b'this is not a torch file')
    with pytest.raises(ModelLoadError, match='cannot read weights file'):
        read_state_dict(p)


def test_non_torch_file_says_what_it_must_be(tmp_path):
    # e.g. a video passed by mistake: the reason must not suggest weights_only=False
    p = tmp_path / 'clip.mp4'
    p.write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError) as err:
        read_state_dict(p)
    text = str(err.value)
    assert 'torch.save(model.state_dict(), path)' in text
    assert 'weights_only=False' not in text


class Evil:
    def __reduce__(self):
        return (print, ('pwned',))


def test_arbitrary_pickle_is_refused(tmp_path):
    p = tmp_path / 'evil.pt'
    torch.save({"x": Evil()}, p, pickle_protocol=2)
    with pytest.raises(ModelLoadError, match='cannot read weights file') as err:
        read_state_dict(p)
    assert 'weights_only=False' not in str(err.value)


def test_a_text_file_is_called_what_it_is(tmp_path):
    p = tmp_path / 'params.yaml'
    p.write_text('/**:\n  ros__parameters:\n    device: cpu\n')
    with pytest.raises(ModelLoadError, match='not a PyTorch file \\(a text file\\)') as err:
        read_state_dict(p)
    assert 'pickle' not in str(err.value)


def test_non_state_dict_is_refused(tmp_path):
    p = tmp_path / 'list.pt'
    torch.save([torch.zeros(1)], p)
    with pytest.raises(ModelLoadError, match='not a plain state dict'):
        read_state_dict(p)


def test_unknown_model():
    with pytest.raises(ModelLoadError, match='unknown semantic model'):
        load_semantic_model('resnet9000', 'none')
    with pytest.raises(ModelLoadError, match='unknown instance model'):
        load_instance_model('yolo', 'none')


def test_instance_model_settings():
    m = load_instance_model('maskrcnn_resnet50_fpn', 'none', num_classes=3, min_size=160,
                            max_size=320, score_threshold=0.3, max_detections=7)
    assert m.model.roi_heads.score_thresh == 0.3
    assert m.model.roi_heads.detections_per_img == 7
    assert m.model.transform.min_size == (160,) and m.model.transform.max_size == 320


@pytest.mark.parametrize('cap, own, expect', [(0, 1000, 1000), (300, 1000, 300),
                                               (300, 150, 150), (40, 150, 40)])
def test_max_proposals_caps_what_the_roi_heads_see(cap, own, expect):
    """instance.max_proposals: at most that many proposals per image reach the box head
    (0 = the architecture's own count; a cap never raises it)."""
    name = 'maskrcnn_resnet50_fpn' if own == 1000 else 'maskrcnn_mobilenet_v3_large_fpn'
    torch.manual_seed(0)
    m = load_instance_model(name, 'none', num_classes=3, max_proposals=cap).model.eval()
    assert m.rpn.post_nms_top_n() == expect
    rois = []
    m.roi_heads.box_roi_pool.register_forward_hook(lambda mod, inp, out: rois.append(len(out)))
    with torch.inference_mode():
        m([torch.rand(3, 240, 320)])
    # random weights over 240x320 leave far more than `expect` boxes after the RPN's NMS
    assert rois == [expect]


def test_native_size_by_default_and_capped():
    """instance.min_size 0: the network sees the frame at its own size (no upsampling of
    a 640x480 frame to 1067x800); max_size then only caps a larger frame."""
    m = load_instance_model('maskrcnn_mobilenet_v3_large_fpn', 'none', num_classes=3)
    seen = []
    m.model.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    with torch.inference_mode():
        out = m.model([torch.rand(3, 120, 160)])[0]
    assert seen[-1][-2:] == (128, 160)  # 120 padded to a multiple of 32, not resized
    assert out['masks'].shape[-2:] == (120, 160)
    capped = load_instance_model('maskrcnn_mobilenet_v3_large_fpn', 'none', num_classes=3,
                                 max_size=96)
    capped.model.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    with torch.inference_mode():
        out = capped.model([torch.rand(3, 120, 160)])[0]
    assert seen[-1][-1] == 96 and out['masks'].shape[-2:] == (120, 160)


def test_version_matches_package_xml():
    import re
    from pathlib import Path

    import seg_ros
    xml = (Path(__file__).resolve().parents[2] / 'package.xml').read_text()
    assert re.search(r'<version>([^<]+)</version>', xml).group(1) == seg_ros.__version__


def test_default_weights_unavailable_gives_a_clear_error(monkeypatch, tmp_path):
    """Offline: torchvision cannot fetch its weights (simulated, nothing is downloaded)."""
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise OSError('<urlopen error [Errno -3] Temporary failure in name resolution>')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(tv_api, 'load_state_dict_from_url', offline)
    with pytest.raises(ModelLoadError, match='cannot get torchvision pretrained weights') as e:
        load_semantic_model('lraspp_mobilenet_v3_large', 'DEFAULT')
    assert 'offline' in str(e.value) and 'name resolution' in str(e.value)


def test_shipped_camvid_model():
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from seg_ros.core.inference.semantic import SemanticSegmenter
    m = load_semantic_model('ignored_for_shipped', 'camvid')
    assert m.name == 'lraspp_mobilenet_v3_large' and m.input_size == 360
    assert m.class_names[0] == 'Sky' and len(m.class_names) == 11 and len(m.palette) == 11
    assert not m.random_init
    root = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'camvid'
    if not (root / 'val').is_dir():
        pytest.skip('CamVid not beside this checkout')
    rgb = np.asarray(Image.open(root / 'val' / '0016E5_07965.png').convert('RGB'))
    gt = np.asarray(Image.open(root / 'valannot' / '0016E5_07965.png'))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    labels = SemanticSegmenter(m, 'cpu')(x).labels
    valid = gt != 11
    assert (labels[valid] == gt[valid]).mean() > 0.8  # a trained model, not a random one
