"""The labels of upsampled class scores without the full-size maps (UpsampledMax), and the
label graph that ends at the coarse scores for it. No ROS."""
import pytest
import torch
import torch.nn.functional as F

from seg_ros.core.inference import label_upsample
from seg_ros.core.inference.label_upsample import UpsampledMax, has_coarse_scores, resize_matrix
from seg_ros.core.inference.semantic import LabelGraph
from seg_ros.core.models.registry import load_semantic_model


def reference(scores, sizes):
    out = scores
    for hw in sizes[1:]:
        if tuple(out.shape[-2:]) != tuple(hw):
            out = F.interpolate(out, size=hw, mode='bilinear', align_corners=False)
    return out.argmax(1)


def smooth_scores(n, c, hw, blobs=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, blobs, blobs, generator=g) * 3
    return F.interpolate(s, size=hw, mode='bilinear', align_corners=False)


@pytest.mark.parametrize('sizes', [
    [(60, 80), (480, 640)],                  # LR-ASPP / DeepLabV3 at 640x480: x8
    [(45, 60), (360, 480), (480, 640)],      # camvid: the model at 360, then the image
    [(61, 81), (481, 641)],                  # odd sizes: not a whole factor
    [(13, 17), (101, 131)],
    [(30, 40), (240, 320), (120, 160)],      # up, then down
    [(20, 30), (20, 30)],                    # nothing to resize
])
def test_same_labels_as_upsampling_every_class_map(sizes):
    for seed, blobs in ((0, 4), (1, 9), (2, 17)):  # few to many class boundaries
        s = smooth_scores(2, 21, sizes[0], blobs, seed)
        got = UpsampledMax(sizes)(s)
        assert got.dtype == torch.uint8 and got.shape == (2, *sizes[-1])
        assert torch.equal(got.long(), reference(s, sizes))


def test_ties_go_to_the_lower_class_and_many_classes_widen_the_type():
    s = torch.zeros(1, 4, 6, 8)
    s[:, 2, :, 4:] = 1.0
    s[:, 3, :, 4:] = 1.0                     # a tie between 2 and 3 on the right half
    got = UpsampledMax([(6, 8), (24, 32)])(s)
    assert torch.equal(got.long(), reference(s, [(6, 8), (24, 32)]))
    assert set(got.unique().tolist()) == {0, 2}
    many = smooth_scores(1, 300, (10, 12), 3)
    got = UpsampledMax([(10, 12), (40, 48)])(many)
    assert got.dtype == torch.int32 and torch.equal(got.long(),
                                                    reference(many, [(10, 12), (40, 48)]))


def test_wide_windows_resize_every_map_and_bad_shapes_are_refused(monkeypatch):
    monkeypatch.setattr(label_upsample, 'MAX_WINDOW', 1)
    up = UpsampledMax([(16, 16), (64, 64)])  # windows of 2 sources > 1: the plain path
    assert not up.windowed
    s = smooth_scores(1, 5, (16, 16))
    assert torch.equal(up(s).long(), reference(s, [(16, 16), (64, 64)]))
    with pytest.raises(ValueError, match='expected'):
        up(smooth_scores(1, 5, (32, 32)))


def test_resize_matrix_is_torchs_resize():
    m = resize_matrix(7, 19)
    x = torch.randn(7, 3, dtype=torch.float64)
    want = F.interpolate(x.T[None, :, :, None], size=(19, 1), mode='bilinear',
                         align_corners=False)[0, :, :, 0].T
    assert torch.allclose(m @ x, want)
    assert torch.all(m >= 0) and torch.allclose(m.sum(1), torch.ones(19, dtype=torch.float64))


@pytest.mark.parametrize('input_size', [0, 40])
def test_label_graph_ending_at_coarse_scores_gives_the_full_graphs_labels(input_size):
    torch.manual_seed(0)
    loaded = load_semantic_model('lraspp_mobilenet_v3_large', 'none', 6)
    assert has_coarse_scores(loaded.model)
    one = torch.ones(1, 3, 1, 1)
    graph = LabelGraph(loaded.model.eval(), one, 0 * one, input_size, torch.uint8)
    graph.image_hw = (48, 64)
    x = torch.rand(1, 3, 48, 64)
    with torch.inference_mode():
        full = graph(x)
        graph.coarse = True
        scores = graph(x)
    assert scores.dtype == torch.float32 and scores.shape[:2] == (1, 6)
    assert scores.shape[-1] < 64  # before the model's upsample
    sizes = [tuple(scores.shape[-2:]), graph.model_hw(48, 64), (48, 64)]
    assert torch.equal(UpsampledMax(sizes)(scores), full)
