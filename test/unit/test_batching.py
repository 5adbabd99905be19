"""Several frames through one pipeline (many cameras): batches by size, order, limits.
No ROS."""
import numpy as np
import pytest
import torch

from seg_ros.core.inference.instances import InstanceSegmenter
from seg_ros.core.inference.pipeline import Pipeline
from seg_ros.core.inference.semantic import SemanticSegmenter
from seg_ros.core.inference.tracking import Tracker
from seg_ros.core.models import backends
from seg_ros.core.models.registry import load_instance_model, load_semantic_model
from seg_ros.core.spatial.imaging import buffer_to_frame

from helpers import make_instance_weights, make_semantic_weights, synthetic_image


def frame(h, w, seed):
    rgb = synthetic_image(h, w, seed)
    return rgb, buffer_to_frame('rgb8', h, w, w * 3, False, rgb.tobytes())


@pytest.fixture(scope='module')
def sem_weights(tmp_path_factory):
    return make_semantic_weights(tmp_path_factory.mktemp('b') / 's.pt', num_classes=6)


def semantic_pipeline(weights, backend='torch', cache=None):
    loaded = load_semantic_model('lraspp_mobilenet_v3_large', str(weights), 0, [], 'cpu')
    seg = SemanticSegmenter(loaded, 'cpu', input_size=0, backend=backend,
                            cache_dir=str(cache) if cache else backends.DEFAULT_CACHE_DIR)
    return Pipeline(torch.device('cpu'), semantic=seg)


@pytest.mark.parametrize('backend', ['torch', pytest.param('onnxruntime', marks=pytest.mark.skipif(
    not backends.installed('onnxruntime'), reason='onnxruntime absent'))])
def test_batched_equals_one_at_a_time_and_keeps_order(sem_weights, tmp_path, backend):
    pipe = semantic_pipeline(sem_weights, backend, tmp_path)
    frames = [frame(72, 96, 0)[1], frame(120, 160, 1)[1], frame(72, 96, 2)[1],
              frame(72, 96, 3)[1]]
    alone = [pipe(f, keep_image=False).semantic.labels for f in frames]
    many = pipe.run_many(frames, keep_image=False)
    assert [r.batch_size for r in many] == [3, 1, 3, 3]  # same sizes together
    for a, r in zip(alone, many, strict=True):
        assert r.semantic.labels.shape == a.shape
        assert (r.semantic.labels == a).mean() >= 0.999
    # no cross-talk: each result is its own frame's, not a neighbour's
    assert (many[0].semantic.labels != many[2].semantic.labels).mean() > 0.05
    limited = pipe.run_many(frames, keep_image=False, max_batch=2)
    assert [r.batch_size for r in limited] == [2, 1, 2, 1]
    for a, r in zip(alone, limited, strict=True):
        assert (r.semantic.labels == a).mean() >= 0.999


def test_colour_and_image_follow_each_frame(sem_weights):
    pipe = semantic_pipeline(sem_weights)
    (rgb0, f0), (rgb1, f1) = frame(72, 96, 0), frame(72, 96, 1)
    r0, r1 = pipe.run_many([f0, f1], want_color=[True, False])
    assert r0.semantic.color is not None and r1.semantic.color is None
    # the float image kept for 3D is each frame's own
    assert np.allclose(r0.image[0].permute(1, 2, 0).numpy() * 255, rgb0, atol=0.01)
    assert np.allclose(r1.image[0].permute(1, 2, 0).numpy() * 255, rgb1, atol=0.01)


def test_instances_batched_with_a_tracker_per_camera(tmp_path):
    weights = make_instance_weights(tmp_path / 'i.pt')
    loaded = load_instance_model('maskrcnn_resnet50_fpn', str(weights), 0, [], 'cpu',
                                 min_size=96, max_size=160, score_threshold=0.5)
    inst = InstanceSegmenter(loaded, 'cpu', 0.5, 0.5, 20)
    pipe = Pipeline(torch.device('cpu'), instance=inst)
    frames = [frame(96, 128, 0)[1], frame(96, 128, 1)[1]]
    alone = [pipe(f).instances for f in frames]
    trackers = [Tracker(), Tracker()]
    many = pipe.run_many(frames, trackers=trackers, stamps_ns=[10**9, 10**9])
    for a, r in zip(alone, many, strict=True):
        got = r.instances
        assert len(got) == len(a) > 0
        np.testing.assert_allclose(got.boxes, a.boxes, atol=0.05)
        assert (got.id_map > 0).sum() == pytest.approx((a.id_map > 0).sum(), rel=0.01)
    # each camera's tracker saw only its own frame
    assert all(len(t.live_ids) == len(a) for t, a in zip(trackers, alone, strict=True))


@pytest.mark.needs_cuda
def test_batched_equals_one_at_a_time_on_cuda(sem_weights):
    loaded = load_semantic_model('lraspp_mobilenet_v3_large', str(sem_weights), 0, [], 'cuda')
    pipe = Pipeline(torch.device('cuda'), semantic=SemanticSegmenter(loaded, 'cuda',
                                                                     input_size=0))
    frames = [frame(72, 96, s)[1] for s in range(4)]
    alone = [pipe(f).semantic.labels for f in frames]
    many = pipe.run_many(frames)
    assert all(r.batch_size == 4 for r in many)
    for a, r in zip(alone, many, strict=True):
        assert (r.semantic.labels == a).mean() >= 0.999
