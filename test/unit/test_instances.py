"""Instance pipeline against torchvision's own Mask R-CNN (no ROS)."""
import numpy as np
import pytest
import torch

from seg_ros.core.config.params import PARAMS
from seg_ros.core.inference.instances import (
    DUPLICATE_IOU,
    InstanceSegmenter,
    compose_id_map,
    merge_duplicates,
)
from seg_ros.core.models.registry import load_instance_model

from conftest import cpu_and_cuda
from helpers import make_instance_weights, synthetic_image, torchvision_maskrcnn

MIN_SIZE, MAX_SIZE = 160, 240


def test_compose_overlap_rule_and_background():
    m = torch.zeros(3, 4, 5, dtype=torch.bool)
    m[0, 0:2, 0:2] = True      # best instance
    m[1, 1:3, 1:3] = True      # overlaps instance 1 at (1, 1)
    m[2, 3, 4] = True
    ids = compose_id_map(m, 4, 5)
    assert ids.dtype == torch.uint16
    expect = np.zeros((4, 5), np.uint16)
    expect[2, 1:3] = 2
    expect[1, 2] = 2
    expect[0:2, 0:2] = 1
    expect[3, 4] = 3
    np.testing.assert_array_equal(ids.numpy(), expect)
    assert compose_id_map(torch.zeros(0, 4, 5, dtype=torch.bool), 4, 5).sum() == 0


@pytest.mark.parametrize('n', [1, 255, 256, 300])
def test_compose_equals_painting_lowest_score_first(n):
    """Both paths (bytes up to 255 masks, int16 beyond) give the painter's result: paint
    the lowest-scored mask first, the best last."""
    gen = torch.Generator().manual_seed(n)
    m = torch.rand(n, 12, 16, generator=gen) > 0.97
    ref = torch.zeros(12, 16, dtype=torch.int64)
    for k in range(n - 1, -1, -1):
        ref[m[k]] = k + 1
    np.testing.assert_array_equal(compose_id_map(m, 12, 16).numpy().astype(np.int64),
                                  ref.numpy())


def test_duplicates_under_other_classes_merge_into_one_instance():
    """An object the model found as a box (0.8) and as a cylinder (0.7), a touching
    neighbour (0.75) whose mask shares an edge, a same-class near-copy (0.2): the object
    is one instance with the cylinder as its second hypothesis, the neighbour stays, the
    near-copy goes without adding a hypothesis; 1.0 merges nothing."""
    m = torch.zeros(4, 40, 60, dtype=torch.bool)
    m[0, 10:30, 10:30] = True             # box, 0.8
    m[1, 11:30, 10:31] = True             # cylinder, 0.7: the same object
    m[2, 10:30, 28:50] = True             # box, 0.75: the neighbour, overlapping 2 columns
    m[3, 10:29, 10:30] = True             # box, 0.2
    order = torch.tensor([0, 2, 1, 3])   # by descending score
    labels = torch.tensor([1, 2, 1, 1])[order]
    scores = torch.tensor([0.8, 0.7, 0.75, 0.2])[order]
    kept, alts = merge_duplicates(m[order], labels, scores, 0.5)
    assert kept.tolist() == [0, 1]
    assert alts[0] == [(2, pytest.approx(0.7))] and alts[1] == []
    kept, alts = merge_duplicates(m[order], labels, scores, 1.0)
    assert kept.tolist() == [0, 1, 2, 3] and alts == [[], [], [], []]
    kept, _ = merge_duplicates(m[:0], labels[:0], scores[:0], 0.5)
    assert kept.numel() == 0


def test_duplicate_iou_default_is_the_parameters():
    assert next(p.default for p in PARAMS if p.name == 'instance.duplicate_iou') == DUPLICATE_IOU


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return make_instance_weights(tmp_path_factory.mktemp('w') / 'inst.pt')


def reference(weights, rgb, score_threshold):
    return {k: torch.from_numpy(v) for k, v in
            torchvision_maskrcnn(weights, rgb, score_threshold, MIN_SIZE, MAX_SIZE).items()}


def segmenter(weights, device='cpu', **kw):
    opts = dict(score_threshold=0.3, mask_threshold=0.5, max_detections=100, classes=())
    opts.update(kw)
    loaded = load_instance_model('maskrcnn_resnet50_fpn', str(weights), device=device,
                                 min_size=MIN_SIZE, max_size=MAX_SIZE,
                                 score_threshold=opts['score_threshold'],
                                 max_detections=opts['max_detections'])
    return InstanceSegmenter(loaded, device, **opts)


def image_tensor(rgb, device='cpu'):
    return (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255).to(device)


@pytest.mark.parametrize('device', cpu_and_cuda())
def test_matches_torchvision(weights, device):
    rgb = synthetic_image(120, 160, seed=1)
    ref = reference(weights, rgb, 0.3)
    assert len(ref['scores']) >= 2, 'the test model must detect something'
    res = segmenter(weights, device)(image_tensor(rgb, device), want_overlay=True)
    assert len(res) == len(ref['scores'])
    assert np.all(np.diff(res.scores) <= 0)
    np.testing.assert_allclose(res.scores, ref['scores'].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.boxes, ref['boxes'].numpy(), atol=1e-3)
    np.testing.assert_array_equal(res.class_ids, ref['labels'].numpy())
    assert res.id_map.shape == (120, 160) and res.id_map.dtype == np.uint16
    assert res.overlay.shape == (120, 160, 3) and res.overlay.dtype == np.uint8
    # Each instance's visible pixels are its own mask minus higher-scored masks.
    masks = (ref['masks'][:, 0] > 0.5).numpy()
    taken = np.zeros(masks.shape[1:], bool)
    for k in range(len(masks)):
        visible = masks[k] & ~taken
        taken |= masks[k]
        got = res.id_map == k + 1
        union = (got | visible).sum()
        assert union == 0 or (got & visible).sum() / union >= 0.99


def test_thresholds_and_limits(weights):
    rgb = synthetic_image(120, 160, seed=1)
    x = image_tensor(rgb)
    low = segmenter(weights, score_threshold=0.3)(x)
    high = segmenter(weights, score_threshold=float(np.median(low.scores)))(x)
    assert 0 < len(high) < len(low) and high.scores.min() >= np.median(low.scores)
    few = segmenter(weights, score_threshold=0.3, max_detections=2)(x)
    np.testing.assert_allclose(few.scores, low.scores[:2])
    strict = segmenter(weights, mask_threshold=0.9)(x)
    loose = segmenter(weights, mask_threshold=0.1)(x)
    assert (strict.id_map > 0).sum() < (loose.id_map > 0).sum()


def test_class_filter(weights):
    x = image_tensor(synthetic_image(120, 160, seed=1))
    everything = segmenter(weights)(x)
    cls = int(everything.class_ids[0])
    only = segmenter(weights, classes=[str(cls)])(x)
    assert len(only) == int((everything.class_ids == cls).sum()) > 0
    assert set(only.class_ids.tolist()) == {cls}
    with pytest.raises(ValueError, match='unknown class'):
        segmenter(weights, classes=['unicorn'])


def test_empty_frame_result(weights):
    res = segmenter(weights, score_threshold=1.0)(image_tensor(synthetic_image(60, 80)),
                                                  want_overlay=True)
    assert len(res) == 0 and res.boxes.shape == (0, 4)
    assert res.id_map.shape == (60, 80) and not res.id_map.any()
    assert res.overlay.shape == (60, 80, 3)


def test_blend_id_map_equals_torchvision_drawing():
    """The overlay's masks in one pass equal draw_segmentation_masks' per-mask loop."""
    from torchvision.utils import draw_segmentation_masks

    from seg_ros.core.inference.instances import blend_id_map
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 256, (3, 40, 50), dtype=np.uint8))
    ids = torch.from_numpy(rng.integers(0, 6, (40, 50)).astype(np.uint16))
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(5)]
    masks = ids.to(torch.int64)[None] == torch.arange(1, 6).view(5, 1, 1)
    expect = draw_segmentation_masks(img, masks, alpha=0.5, colors=colors)
    assert torch.equal(blend_id_map(img, ids, colors, 0.5), expect)
    assert torch.equal(blend_id_map(img, torch.zeros(40, 50, dtype=torch.uint16), [], 0.5), img)
