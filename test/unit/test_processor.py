"""The frame processor, settings snapshots and depth pairing, driven with arrays (no ROS)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from seg_ros.core.config.settings import (
    Settings,
    SettingsError,
    params_file_values,
    resolve_values,
    unknown_names,
)
from seg_ros.core.inference.loading import LoadError, load_pipeline
from seg_ros.core.inference.processor import (
    CameraModel,
    DepthInput,
    FrameInput,
    FrameProcessor,
)
from seg_ros.core.spatial.geometry import RigidTransform
from seg_ros.core.spatial.imaging import buffer_to_frame
from seg_ros.core.spatial.pairing import Pairing
from seg_ros.synthetic.rgbd_scene import render

from helpers import make_instance_weights, make_semantic_weights, synthetic_image

H, W = 96, 128


def frame(rgb):
    h, w, _ = rgb.shape
    return buffer_to_frame('rgb8', h, w, w * 3, False, rgb.tobytes())


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('w')
    return (make_semantic_weights(tmp / 'sem.pt', num_classes=5),
            make_instance_weights(tmp / 'inst.pt'))


def settings(weights, **extra):
    sem, inst = weights
    values = {'device': 'cpu', 'semantic.weights': str(sem), 'semantic.num_classes': 5,
              'semantic.input_size': 0, 'semantic.backend': 'torch', 'warmup': False,
              'instance.enabled': True, 'instance.model': 'maskrcnn_resnet50_fpn',
              'instance.backend': 'torch',
              'instance.weights': str(inst), 'instance.num_classes': 4,
              'instance.score_threshold': 0.3, 'instance.min_size': H,
              'instance.max_size': W}
    values.update(extra)
    return Settings.from_values(values)


def test_settings_snapshot_is_validated_and_immutable(weights):
    s = settings(weights)
    assert s.score_threshold == 0.3 and s['semantic.num_classes'] == 5
    with pytest.raises(SettingsError, match='depth.min'):
        s.with_changes({'depth.min': 30.0})
    with pytest.raises(SettingsError, match='semantic.input_size'):
        s.with_changes({'semantic.input_size': -7})
    with pytest.raises(TypeError):
        s.values['device'] = 'cuda'
    with pytest.raises(AttributeError):
        s.score_threshold = 0.9
    assert s.with_changes({'instance.score_threshold': 0.9}).score_threshold == 0.9
    assert s.score_threshold == 0.3


def test_params_file_and_overrides_as_rcl_reads_them(tmp_path):
    f = tmp_path / 'p.yaml'
    f.write_text('/**:\n  ros__parameters:\n    device: cpu\n    depth:\n      slop: 1\n'
                 'other_node:\n  ros__parameters:\n    device: cuda\n'
                 'segmentation:\n  ros__parameters:\n    max_batch: 3\n')
    assert params_file_values(f) == {'device': 'cpu', 'depth.slop': 1, 'max_batch': 3}
    values = resolve_values([f], ['max_batch:=2', 'cameras:=[a, b]', 'devcie:=cpu'])
    assert values['depth.slop'] == 1.0 and isinstance(values['depth.slop'], float)
    assert values['max_batch'] == 2 and values['cameras'] == ['a', 'b']
    assert 'did you mean device?' in unknown_names(values)[0]
    with pytest.raises(SettingsError, match='NAME:=VALUE'):
        resolve_values([], ['device=cpu'])


def test_load_refusal_is_one_line(weights):
    with pytest.raises(LoadError, match='weights'):
        load_pipeline(settings(weights, **{'instance.weights': '/nonexistent.pt'}))


def test_batch_of_cameras_with_tracks_and_a_settings_change(weights):
    s = settings(weights, **{'instance.tracking': True, 'cameras': ['a', 'b']})
    proc = FrameProcessor(load_pipeline(s), s, s.cameras)
    rgb = synthetic_image(H, W, seed=1)
    out = proc.process([FrameInput('a', frame(rgb), 10**9, want_overlay=True),
                        FrameInput('b', frame(rgb), 10**9)])
    assert [o.camera for o in out] == ['a', 'b'] and all(o.error is None for o in out)
    a = out[0].result.instances
    assert len(a) >= 1, 'the test model must detect something'
    assert out[0].result.batch_size == 2  # one forward pass for both cameras
    again = proc.process([FrameInput('a', frame(rgb), 2 * 10**9)])[0].result.instances
    np.testing.assert_array_equal(again.ids, a.ids)  # same objects, same track ids
    # a change is taken between batches, never inside one
    proc.update(s.with_changes({'instance.score_threshold': 1.0}))
    assert proc.pipeline.instance.score_threshold == 0.3
    none = proc.process([FrameInput('b', frame(rgb), 3 * 10**9)])[0].result.instances
    assert len(none) == 0 and proc.pipeline.instance.model.roi_heads.score_thresh == 1.0
    why = proc.check(s.with_changes({'instance.classes': ['zebra']}))
    assert why is not None and 'instance.classes' in why and "'zebra'" in why, why
    assert proc.check(s.with_changes({'instance.classes': []})) is None  # a valid change


def test_a_failing_frame_fails_alone(weights):
    s = settings(weights, **{'instance.enabled': False, 'cameras': ['a', 'b']})
    proc = FrameProcessor(load_pipeline(s), s, s.cameras)
    good = frame(synthetic_image(H, W))
    bad = SimpleNamespace(array=np.zeros((H, W, 3), np.uint8), encoding='nonsense')
    out = proc.process([FrameInput('a', good, 1), FrameInput('b', bad, 1)])
    assert out[0].error is None and out[0].result.semantic.labels.shape == (H, W)
    assert out[1].result is None and out[1].drops[0][0] == 'processing_error'
    assert out[1].error is not None and out[1].error.__traceback__ is not None


def test_3d_with_depth_late_pairing_and_missing_inputs(weights):
    sc = render(W, H)
    s = settings(weights, **{'depth.enabled': True, 'semantic.enabled': False})
    proc = FrameProcessor(load_pipeline(s), s)
    depth = DepthInput(sc.depth_16uc1(), 0.001, 5)
    model = CameraModel(tuple(sc.k), tuple(sc.p), W, H)
    f = frame(sc.rgb)
    pairing = Pairing(depth_topic='/cam/depth', info_topic='/cam/camera_info')
    out = proc.process([FrameInput('', f, 5, pairing=pairing)])[0]
    assert out.geometry is None and [r for r, _ in out.drops] == ['no_camera_info']
    assert '/cam/camera_info' in out.drops[0][1]
    stamp = SimpleNamespace(sec=0, nanosec=5)
    assert pairing.add_camera_info(SimpleNamespace(  # a camera_info arrived; depth later
        header=SimpleNamespace(stamp=stamp), k=sc.k, p=sc.p, width=W, height=H)) is None
    out = proc.process([FrameInput('', f, 5, pairing=pairing)])[0]
    assert [r for r, _ in out.drops] == ['no_depth'] and '/cam/depth within depth.slop=' in \
        out.drops[0][1]
    d16 = sc.depth_16uc1()
    assert pairing.add_depth(SimpleNamespace(
        header=SimpleNamespace(stamp=stamp), encoding='16UC1', height=H, width=W, step=2 * W,
        is_bigendian=0, data=d16.tobytes())) is None
    out = proc.process([FrameInput('', f, 5, pairing=pairing)])[0]
    assert out.geometry is not None and out.geometry.instances is not None and not out.drops
    assert proc.process([FrameInput('', f, 5, camera_model=model)])[0].drops[0][0] == \
        'no_depth'
    assert proc.process([FrameInput('', f, 5, depth=depth)])[0].drops[0][0] == \
        'no_camera_info'
    other = CameraModel(tuple(sc.k), tuple(sc.p), W * 2, H * 2)
    assert proc.process([FrameInput('', f, 5, depth=depth, camera_model=other)]
                        )[0].drops[0][0] == 'bad_camera_info'


def _image_msg(arr, encoding, stamp_ns, itemsize=1):
    h, w = arr.shape[:2]
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=stamp_ns // 10**9,
                                                     nanosec=stamp_ns % 10**9)),
        encoding=encoding, height=h, width=w, step=arr.strides[0], is_bigendian=0,
        data=arr.tobytes())


def test_pairing_keeps_valid_messages_only_and_takes_the_nearest():
    pairing = Pairing(capacity=3)
    z = np.full((4, 6), 800, np.uint16)
    assert pairing.add_depth(_image_msg(z, '16UC1', 1_000)) is None
    assert pairing.add_depth(_image_msg(z, '16UC1', 1_500)) is None
    bad = _image_msg(z, '16UC1', 1_200)
    bad.data = bad.data[:-3]
    assert pairing.add_depth(bad).reason == 'bad_depth'  # never cached, never paired
    assert pairing.add_depth(_image_msg(z, 'rgb8', 1_200)).reason == 'bad_depth'
    assert pairing.depth(1_190, 1e-6).stamp_ns == 1_000
    assert pairing.depth(1_300, 1e-6).stamp_ns == 1_500
    assert pairing.depth(5_000, 1e-6) is None
    for t in (2_000, 3_000, 4_000):  # bounded: the oldest go
        pairing.add_depth(_image_msg(z, '16UC1', t))
    assert pairing.depth(1_000, 1e-7) is None
    info = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=1)),
                           k=[0.0] * 9, p=[0.0] * 12, width=6, height=4)
    assert pairing.add_camera_info(info).reason == 'bad_camera_info'
    assert pairing.camera_model() is None
    info.k = [100.0, 0, 3, 0, 100.0, 2, 0, 0, 1]
    assert pairing.add_camera_info(info) is None and pairing.camera_model().k[0] == 100.0
    assert pairing.add_camera_info(object()).reason == 'bad_camera_info'  # never raises


def test_overlay_of_a_tracked_frame_names_the_track_ids(weights):
    """The overlay's labels are the ids the masks and detections carry (track ids), not
    1..n."""
    s = settings(weights, **{'semantic.enabled': False, 'instance.tracking': True})
    proc = FrameProcessor(load_pipeline(s), s)
    rgb = synthetic_image(H, W, seed=1)
    first = proc.process([FrameInput('', frame(rgb), 10**9)])[0].result.instances
    # far in time: every track expired, so new ids follow the first frame's
    out = proc.process([FrameInput('', frame(rgb), 100 * 10**9, want_overlay=True)])[0]
    inst = out.result.instances
    assert len(inst) >= 1 and inst.ids.min() > first.ids.max()
    names = proc.pipeline.instance.loaded.class_names
    img = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    ids_map = torch.from_numpy(inst.id_map.astype(np.int64))
    visible = ids_map[None] == torch.as_tensor(inst.ids).view(-1, 1, 1)
    palette = proc.pipeline.instance.palette
    colors = [tuple(int(v) for v in palette[int(c) % len(palette)]) for c in inst.class_ids]
    expect = draw_segmentation_masks(img, visible, alpha=0.5, colors=colors)
    expect = draw_bounding_boxes(expect, torch.from_numpy(inst.boxes), colors=colors, width=2,
                                 labels=[f'{int(i)}:{names[int(c)]}' for i, c in
                                         zip(inst.ids, inst.class_ids, strict=True)])
    np.testing.assert_array_equal(out.result.instances.overlay,
                                  expect.permute(1, 2, 0).numpy())


def test_3d_in_a_target_frame_is_computed_on_the_moved_points(weights):
    """With depth.target_frame the statistics are those of the transformed points (a box
    upright in the target frame), and a frame without its transform gets no 3D."""
    sc = render(W, H)
    s = settings(weights, **{'depth.enabled': True, 'semantic.enabled': False,
                             'depth.target_frame': 'base_link'})
    proc = FrameProcessor(load_pipeline(s), s)
    depth = DepthInput(sc.depth_16uc1(), 0.001, 5)
    model = CameraModel(tuple(sc.k), tuple(sc.p), W, H)
    half = np.sqrt(0.5)
    tr = RigidTransform.from_quaternion((0.2, -0.1, 0.5), (half, 0.0, 0.0, half))  # 90 deg x
    np.testing.assert_allclose(tr.rotation, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    f = frame(sc.rgb)
    first = proc.process([FrameInput('', f, 5, depth=depth, camera_model=model,
                                      transform=tr)])[0]
    moved, ids = first.geometry.instances, first.result.instances.ids
    s0 = s.with_changes({'depth.target_frame': ''})
    proc.update(s0)
    plain = proc.process([FrameInput('', f, 5, depth=depth, camera_model=model,
                                     transform=tr)])[0].geometry.instances
    assert moved.counts.sum() > 0 and np.array_equal(moved.counts, plain.counts)
    pts = plain.points.astype(np.float64) @ tr.rotation.T + tr.translation
    np.testing.assert_allclose(moved.points, pts, atol=1e-5)
    for k, ident in enumerate(ids):
        sel = pts[plain.point_ids == ident]
        if len(sel) == 0:
            continue
        np.testing.assert_allclose(moved.position[k], np.median(sel, 0), atol=1e-6)
        np.testing.assert_allclose(moved.box_min[k], np.percentile(sel, 2, 0), atol=1e-6)
        np.testing.assert_allclose(moved.box_max[k], np.percentile(sel, 98, 0), atol=1e-6)
    proc.update(s)
    asked = []

    class NoTransforms:
        def lookup(self, target, source, stamp_ns, timeout_s):
            asked.append((target, source, stamp_ns, timeout_s))
            return None, f'no transform from {source} to {target}'
    out = proc.process([FrameInput('', f, 5, depth=depth, camera_model=model, frame_id='cam')],
                       transforms=NoTransforms())[0]
    assert asked == [('base_link', 'cam', 5, s.tf_timeout)]
    assert out.geometry is None and out.drops == [(
        'no_transform', 'no 3D outputs: no transform from cam to base_link (2D outputs '
        'continue)')]
    found = proc.process([FrameInput('', f, 5, depth=depth, camera_model=model,
                                     frame_id='cam')],
                         transforms=type('T', (), {'lookup': lambda *_: (tr, '')})())[0]
    assert not found.drops and np.allclose(found.geometry.instances.points,
                                           first.geometry.instances.points)
