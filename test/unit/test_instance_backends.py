"""Compiled Mask R-CNN backbones (OpenVINO, ONNX Runtime): the instances equal eager
torch's at the same resolution. No ROS.

Criterion (issue "real-time instances"): instances matched one to one by mask IoU; in fp32
at least 99 % of the eager instances have a match of IoU >= 0.98 with the same class; in
bf16 at least 90 % at IoU >= 0.9.
"""
import numpy as np
import pytest
import torch

from seg_ros.core.inference.instances import InstanceSegmenter
from seg_ros.core.models import backends
from seg_ros.core.models.instance_backends import (
    CompiledBackbone,
    CompiledHead,
    CompiledRPNHead,
    compile_instance_model,
)
from seg_ros.core.models.registry import load_instance_model

from helpers import make_instance_weights, synthetic_image

COMPILED = [b for b in ('onnxruntime', 'openvino') if backends.installed(b)]
H, W = 120, 160


def _bf16_cpu() -> bool:
    if not backends.installed('openvino'):
        return False
    import openvino as ov
    return 'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')


@pytest.fixture(scope='module')
def r50_weights(tmp_path_factory):
    return make_instance_weights(tmp_path_factory.mktemp('w') / 'inst.pt')


@pytest.fixture(scope='module')
def light_weights(tmp_path_factory):
    torch.manual_seed(0)
    m = load_instance_model('maskrcnn_mobilenet_v3_large_fpn', 'none', 4).model
    path = tmp_path_factory.mktemp('w') / 'light.pt'
    torch.save(m.state_dict(), path)
    return path


def _instances(model_name, weights, backend, precision, cache, image, threshold):
    loaded = load_instance_model(model_name, str(weights), score_threshold=threshold,
                                 max_detections=100)
    lines = []
    if backend != 'torch':
        compile_instance_model(loaded.model, backend, loaded.name, torch.device('cpu'),
                               precision, str(cache), report=lines.append)
        m = loaded.model
        assert isinstance(m.backbone, CompiledBackbone)
        assert isinstance(m.rpn.head, CompiledRPNHead)
        assert isinstance(m.roi_heads.box_head, CompiledHead)
        assert isinstance(m.roi_heads.mask_head, CompiledHead)
    seg = InstanceSegmenter(loaded, 'cpu', threshold, 0.5, 100)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    res = seg(x)
    masks = np.stack([res.id_map == i for i in res.ids]) if len(res) else np.zeros((0, H, W))
    return res, masks, lines


def _matched_fraction(ref, ref_masks, got, got_masks, min_iou):
    if len(ref) == 0:
        return 1.0 if len(got) == 0 else 0.0
    a, b = ref_masks.astype(np.float32), got_masks.astype(np.float32)
    inter = np.einsum('ahw,bhw->ab', a, b)
    union = ref_masks.sum((1, 2))[:, None] + got_masks.sum((1, 2))[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    iou[ref.class_ids[:, None] != got.class_ids[None]] = 0.0
    from scipy.optimize import linear_sum_assignment
    r, c = linear_sum_assignment(-iou)
    return float((iou[r, c] >= min_iou).sum()) / len(ref)


@pytest.mark.parametrize('backend', COMPILED)
@pytest.mark.parametrize('model_name', ['maskrcnn_resnet50_fpn',
                                        'maskrcnn_mobilenet_v3_large_fpn'])
def test_compiled_instances_equal_eager_fp32(backend, model_name, r50_weights, light_weights,
                                             tmp_path):
    image = synthetic_image(H, W, seed=3)
    weights = r50_weights if model_name == 'maskrcnn_resnet50_fpn' else light_weights
    threshold = 0.7 if model_name == 'maskrcnn_resnet50_fpn' else 0.0
    ref, ref_m, _ = _instances(model_name, weights, 'torch', 'fp32', tmp_path, image, threshold)
    got, got_m, lines = _instances(model_name, weights, backend, 'fp32', tmp_path, image,
                                   threshold)
    assert len(ref) >= 3, 'the comparison needs instances'
    assert any('exported' in ln for ln in lines), lines
    assert abs(len(got) - len(ref)) <= max(1, len(ref) // 100)
    assert _matched_fraction(ref, ref_m, got, got_m, 0.98) >= 0.99
    np.testing.assert_allclose(np.sort(got.scores)[::-1][:len(ref)], ref.scores, atol=2e-3)
    # the second model of the same weights reuses the export
    _, _, lines2 = _instances(model_name, weights, backend, 'fp32', tmp_path, image, threshold)
    assert any('reused from cache' in ln for ln in lines2), lines2


def _raw_instances(loaded, image):
    """The model's own output (before the published id map is composed): labels, scores,
    boxes and each instance's mask at 0.5."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        out = loaded.model([x])[0]
    return (out['labels'].numpy(), out['scores'].numpy(), out['boxes'].numpy(),
            (out['masks'][:, 0] > 0.5).numpy())


def _mask_iou_matched(ref_labels, ref_masks, got_labels, got_masks):
    """Best one-to-one assignment by mask IoU (0 across classes): the matched IoUs."""
    a, b = ref_masks.astype(np.float32), got_masks.astype(np.float32)
    inter = np.einsum('ahw,bhw->ab', a, b)
    union = a.sum((1, 2))[:, None] + b.sum((1, 2))[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    iou[ref_labels[:, None] != got_labels[None]] = 0.0
    from scipy.optimize import linear_sum_assignment
    r, c = linear_sum_assignment(-iou)
    return iou[r, c]


@pytest.mark.skipif(not _bf16_cpu(), reason='this CPU has no BF16 (OpenVINO)')
def test_openvino_bf16_instances_close(tmp_path):
    """bf16 OpenVINO against eager fp32 on a trained model (the shipped tabletop model on a
    generated table scene at its training size), instance by instance on the model's own
    masks. Measured on an AVX-512 BF16 CPU over 6 such scenes: 54 of 54 instances matched,
    mask IoU 0.947-0.999, scores within 0.007. The random-weight R50 this test used before
    has ~100 near-tied detections (scores 0.86-0.93 capped at 100): bf16 rounding changes
    which of them make the cut, so 0.3 of them matched; that measured the model's
    fragility, not the bf16 path, and a composed id map (an overlap goes to the higher
    score) swaps whole regions between near-duplicates on the smallest change."""
    from seg_ros.synthetic import tabletop
    scene = tabletop.render(np.random.default_rng([7, 0]), 640, 480)
    eager = load_instance_model('', 'tabletop', score_threshold=0.3, max_detections=100)
    ref = _raw_instances(eager, scene.rgb)
    compiled = load_instance_model('', 'tabletop', score_threshold=0.3, max_detections=100)
    compile_instance_model(compiled.model, 'openvino', compiled.name, torch.device('cpu'),
                           'bf16', str(tmp_path), report=lambda _: None)
    assert isinstance(compiled.model.backbone, CompiledBackbone)
    got = _raw_instances(compiled, scene.rgb)
    assert len(ref[0]) >= 5, 'the comparison needs instances'
    assert abs(len(got[0]) - len(ref[0])) <= 1
    ious = _mask_iou_matched(ref[0], ref[3], got[0], got[3])
    assert (ious >= 0.9).sum() >= 0.9 * len(ref[0]), np.round(ious, 3)
    n = min(len(ref[1]), len(got[1]))
    np.testing.assert_allclose(got[1][:n], ref[1][:n], atol=0.02)


@pytest.mark.parametrize('backend', COMPILED)
def test_compiled_parts_serve_every_roi_count(backend, r50_weights, tmp_path):
    """One export each for the trunk, the box head and the mask head, whatever the counts of
    proposals and detections (the ROI count is a dynamic dimension; no detection at all
    works too); the RPN head's maps come from the compiled trunk, never the eager head."""
    loaded = load_instance_model('maskrcnn_resnet50_fpn', str(r50_weights), score_threshold=0.0,
                                 max_detections=100, max_proposals=300)
    lines = []
    compile_instance_model(loaded.model, backend, loaded.name, torch.device('cpu'), 'fp32',
                           str(tmp_path), report=lines.append)
    m = loaded.model
    # warm-up exports both heads although its blank frame has no detection
    InstanceSegmenter(loaded, 'cpu', 0.0, 0.5, 100).warm_heads()
    assert sorted(ln.split(' for input')[0].split()[-1] for ln in lines if 'exported' in ln) \
        == ['maskrcnn_resnet50_fpn-box_head', 'maskrcnn_resnet50_fpn-mask_head'], lines
    eager_rpn = []
    m.rpn.head.eager.register_forward_hook(lambda *_: eager_rpn.append(1))
    x = torch.from_numpy(synthetic_image(H, W, seed=5)).permute(2, 0, 1).float() / 255
    counts = []
    with torch.inference_mode():
        for proposals, detections, threshold in ((300, 100, 0.0), (77, 5, 0.0),
                                                 (300, 100, 1.0)):
            m.rpn._post_nms_top_n['testing'] = proposals
            m.roi_heads.detections_per_img = detections
            m.roi_heads.score_thresh = threshold
            out = m([x])[0]
            if not counts:
                eager_rpn.clear()  # the first frame's export traced the eager head
            counts.append(len(out['boxes']))
            assert out['masks'].shape == (len(out['boxes']), 1, H, W)
    assert counts[1] == 5 and counts[2] == 0 and counts[0] > 5
    assert eager_rpn == []
    exported = [ln for ln in lines if 'exported' in ln]
    assert len(exported) == 3, lines
    assert sum('box_head' in ln for ln in exported) == 1
    assert sum('mask_head' in ln for ln in exported) == 1
