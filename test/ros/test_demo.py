"""tools/demo.py (README command 1's main job): refusals before anything starts, and an
honest summary and viewable pictures with --instance."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from seg_ros.synthetic.rgbd_scene import default_objects

from helpers import TEST_TRANSPORTS, fresh_domain_id, run_killing_group, synthetic_image

pytestmark = pytest.mark.ros
DEMO = Path(__file__).resolve().parents[2] / 'tools' / 'demo.py'


def demo(*args, timeout=300, env=None):
    # the demo picks 50 + pid % 50 by itself, which met the other xdist worker's domains
    # (30-99, split between the workers): a demo then never discovered its node now and
    # then. It runs in this worker's own domain.
    domain = fresh_domain_id()
    full = dict(os.environ, ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS='1',
                FASTDDS_BUILTIN_TRANSPORTS=TEST_TRANSPORTS, **(env or {}))
    if env and 'HOME' in env:  # a fresh HOME, as for a user who has not set XDG_CACHE_HOME
        full.pop('XDG_CACHE_HOME', None)
    return run_killing_group([sys.executable, str(DEMO), '--domain', str(domain), *args],
                             timeout, full)


@pytest.mark.parametrize('make_args, expect', [
    (lambda tmp: ['--images', '/nonexistent/frames'], 'no such folder'),
    (lambda tmp: ['--images', str(tmp)], 'no images in it'),
    (lambda tmp: ['--video', str(tmp / 'missing.mp4')], 'no such file'),
    (lambda tmp: ['--frames', '0'], 'at least 1'),
])
def test_refusals_are_one_line_before_the_node_starts(tmp_path, make_args, expect):
    res = demo(*make_args(tmp_path), '--out', str(tmp_path / 'out'), timeout=60)
    assert res.returncode != 0
    out = (res.stdout + res.stderr).strip()
    assert len(out.splitlines()) == 1 and expect in out, out
    assert 'starting segment_node' not in out and not (tmp_path / 'out').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_cuda_without_cuda_is_refused(tmp_path):
    res = demo('--device', 'cuda', '--out', str(tmp_path / 'out'), timeout=60)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode != 0 and len(out.splitlines()) == 1 and 'CUDA' in out, out


def test_help_documents_every_option():
    res = demo('--help', timeout=60)
    assert res.returncode == 0
    for opt in ('--images', '--video', '--frames', '--out', '--device', '--weights',
                '--instance', '--instance-weights', '--timeout', 'default: 12', '--semantic'):
        assert opt in res.stdout, opt


def test_instance_demo_is_honest_and_writes_viewable_pictures(tmp_path):
    frames = tmp_path / 'frames'
    frames.mkdir()
    for i in range(3):
        PILImage.fromarray(synthetic_image(60, 80, seed=i)).save(frames / f'f{i}.png')
    out = tmp_path / 'out'
    home = tmp_path / 'home'  # must stay empty: nothing written outside the repository
    home.mkdir()
    res = demo('--images', str(frames), '--frames', '2', '--instance', '--device', 'cpu',
               '--out', str(out), '--',
               '-p', 'instance.backend:=torch', '-p', 'instance.min_size:=128',
               '-p', 'instance.max_size:=160', '-p', 'instance.score_threshold:=0.0',
               env={'HOME': str(home)})
    assert res.returncode == 0, res.stdout + res.stderr
    written = sorted(str(p.relative_to(home)) for p in home.rglob('*'))
    assert written == [], f'written outside the repository: {written}'
    assert 'instance model (Mask R-CNN) has RANDOM WEIGHTS' in res.stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['random_weights'] is True and summary['random_models'] == ['instance']
    assert summary['frames_answered'] == 2
    # frames spread over the folder: the first and the last
    for name in ('f0', 'f2'):
        assert (out / f'{name}_overlay.png').is_file()
        ids = np.asarray(PILImage.open(out / f'{name}_instances.png'))
        color = np.asarray(PILImage.open(out / f'{name}_instances_color.png'))
        assert color.shape == (60, 80, 3) and color.dtype == np.uint8
        assert (ids > 0).any(), 'no instance pixel: the check below would hold vacuously'
        assert ((ids > 0) == color.any(-1)).all()  # coloured exactly where an instance is
    assert not (out / 'f1_labels.png').exists()


def footprint(obj, x: float, y: float, margin: float = 0.01) -> bool:
    """(x, y) in the camera frame lies over ``obj`` (seen from above, with a margin)."""
    from seg_ros.synthetic.rgbd_scene import Box
    if isinstance(obj, Box):
        return abs(x - obj.x) <= obj.sx / 2 + margin and abs(y - obj.y) <= obj.sy / 2 + margin
    return (x - obj.x) ** 2 + (y - obj.y) ** 2 <= (obj.radius + margin) ** 2


def test_depth_mode_writes_3d_outputs_and_a_picture(tmp_path):
    """Instances and 3D only (no street-scene labels on a tabletop); and nothing written
    outside the repository and --out: the demo runs with an empty HOME that must stay
    empty (pip, rcl logs, ONNX Runtime, torch caches would land there)."""
    out = tmp_path / 'out'
    home = tmp_path / 'home'
    home.mkdir()
    res = demo('--depth', '--frames', '1', '--device', 'cpu', '--out', str(out),
               env={'HOME': str(home)})
    assert res.returncode == 0, res.stdout + res.stderr
    written = sorted(str(p.relative_to(home)) for p in home.rglob('*'))
    assert written == [], f'written outside the repository: {written}'
    assert not list(out.glob('*_labels.png'))
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['semantic'] is False
    # unseen objects from depth by default: no weights, no random weights
    assert summary['frames_answered'] == 1 and summary['random_models'] == []
    assert summary['instance_model'] == 'depth_objects' and 'RANDOM' not in res.stdout
    assert 'RGB-D' in summary['source']
    view = np.asarray(PILImage.open(out / 'rgbd_0000_3d.png'))
    assert view.ndim == 3 and (view != 255).any()  # something was drawn
    dets = json.loads((out / 'rgbd_0000_detections_3d.json').read_text())
    # the scene: two boxes and two cylinders standing on a table 0.8 m below the camera,
    # each one object (class-agnostic)
    assert len(dets) == 4 and {d['class'] for d in dets} == {'object'}
    # each position is the median of its mask's points (the written id image, the rendered
    # depth in mm as the demo sends it), to 1 mm
    from seg_ros.synthetic.rgbd_scene import render
    scene = render(480, 360, default_objects(), seed=0)
    ids = np.asarray(PILImage.open(out / 'rgbd_0000_instances.png')).astype(np.int64)
    z_m = scene.depth_16uc1().astype(np.float32) * np.float32(0.001)
    fx, cx, fy, cy = scene.p[0], scene.p[2], scene.p[5], scene.p[6]
    for d in dets:
        v, u = np.nonzero(ids == int(d['id']))
        z = z_m[v, u].astype(np.float64)
        pts = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], 1)
        assert np.allclose(d['position_m'], np.median(pts, 0), atol=1e-3), d
    for d in dets:  # over a rendered object: between its top and the table, to 1 cm
        x, y, z = d['position_m']
        under = [o for o in default_objects() if footprint(o, x, y)]
        assert under, (d, 'is over no object of the scene')
        top = 0.8 - max(o.height for o in under)
        assert top - 0.01 <= z <= 0.8 + 0.001, (d, top)
    assert ' at (' in res.stdout  # the console names each object's 3D position


def test_rgbd_folder_replay(tmp_path):
    """--depth --rgbd DIR replays an RGB-D folder (images/, depth/ 16-bit mm,
    camera_params.json) through depth_objects."""
    from seg_ros.synthetic.rgbd_scene import render
    scene = render(320, 240, default_objects(), seed=0)
    folder = tmp_path / 'rgbd'
    (folder / 'images').mkdir(parents=True)
    (folder / 'depth').mkdir()
    PILImage.fromarray(scene.rgb).save(folder / 'images' / 'a.png')
    PILImage.fromarray(scene.depth_16uc1()).save(folder / 'depth' / 'a.png')
    (folder / 'camera_params.json').write_text(json.dumps(
        {'img_width': 320, 'img_height': 240, 'fx': scene.k[0], 'fy': scene.k[4],
         'x_offset': scene.k[2], 'y_offset': scene.k[5]}))
    out = tmp_path / 'out'
    res = demo('--depth', '--rgbd', str(folder), '--frames', '1', '--device', 'cpu',
               '--out', str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    dets = json.loads((out / 'a_detections_3d.json').read_text())
    assert len(dets) == 4 and all(d['class'] == 'object' for d in dets)
    assert (out / 'a_overlay.png').is_file() and (out / 'a_3d.png').is_file()
