"""segment_node refuses bad parameters and unloadable models with one clear line."""
import os

import pytest

from helpers import run_node_to_exit

pytestmark = pytest.mark.ros


@pytest.mark.parametrize('args, expect', [
    (['-p', 'device:=gpu'], 'device'),
    (['-p', 'semantic.model:=resnet9000'], 'semantic.model'),
    (['-p', 'semantic.input_size:=-5'], 'semantic.input_size'),
    (['-p', 'reliability:=sometimes'], 'reliability'),
    (['-p', 'semantic.weights:=/nonexistent/w.pt'], 'weights file not found'),
    (['-p', 'semantic.backend:=tensorrt'], 'semantic.backend'),
    (['-p', 'cameras:=[front, front]'], 'must be distinct'),
    (['-p', 'cameras:=[front, 2nd]'], 'ROS name tokens'),
    (['-p', 'max_batch:=-1'], 'max_batch'),
    (['-p', 'instance.enabled:=true', '-p', 'instance.backend:=tensorrt'],
     'instance.backend'),
    (['-p', 'instance.enabled:=true', '-p', 'instance.model:=maskrcnn_mobilenet_v3_large_fpn'],
     'torchvision publishes no weights for maskrcnn_mobilenet_v3_large_fpn'),
    (['-p', 'semantic.weights:=none', '-p', 'semantic.class_names:=[a, b]',
      '-p', 'semantic.num_classes:=3'], 'class_names has 2'),
])
def test_refused_with_reason(args, expect):
    res = run_node_to_exit(['-p', 'warmup:=false', *args])
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if 'cannot start' in ln]
    assert len(lines) == 1 and expect in lines[0], res.stderr
    assert 'Traceback' not in res.stderr
    # one clean sentence: no rclpy boilerplate, the parameter named once
    assert 'Invalid parameter value' not in lines[0] and 'Reason' not in lines[0], lines[0]
    name = args[-1].split(':=')[0]
    if name in lines[0]:
        assert lines[0].count(name) == 1, lines[0]


def test_corrupt_weights_file(tmp_path):
    bad = tmp_path / 'corrupt.pt'
    bad.write_bytes(b'\x80\x02garbage')
    res = run_node_to_exit(['-p', f'semantic.weights:={bad}'])
    assert res.returncode == 1
    assert 'cannot read weights file' in res.stderr and 'Traceback' not in res.stderr


def test_wrong_class_count_and_non_state_dict(tmp_path):
    import torch

    from helpers import make_semantic_weights
    weights = make_semantic_weights(tmp_path / 'six.pt', num_classes=6)
    res = run_node_to_exit(['-p', 'warmup:=false', '-p', f'semantic.weights:={weights}',
                            '-p', 'semantic.num_classes:=21'])
    assert res.returncode == 1 and 'num_classes=21 but weights file' in res.stderr
    pickled = tmp_path / 'list.pt'
    torch.save([1, 2, 3], pickled)
    res = run_node_to_exit(['-p', 'warmup:=false', '-p', f'semantic.weights:={pickled}'])
    assert res.returncode == 1 and 'not a plain state dict' in res.stderr
    assert 'Traceback' not in res.stderr


def test_backend_not_installed_is_refused_in_one_line(tmp_path):
    """semantic.backend:=openvino where OpenVINO is not installed (hidden here by a package
    that raises ModuleNotFoundError for itself, as an absent one does) and where it is
    installed but broken (its import raises, e.g. a missing shared library): each refused
    in one line that says which, with pip install only for the absent one."""
    fake = tmp_path / 'hide' / 'openvino'
    fake.mkdir(parents=True)
    env = {'PYTHONPATH': f'{tmp_path / "hide"}:{os.environ.get("PYTHONPATH", "")}'}
    for body, expect, pip in (
            ('raise ModuleNotFoundError("No module named \'openvino\'", name="openvino")\n',
             'not installed', True),
            ('raise ImportError("libopenvino.so.2540: cannot open shared object file")\n',
             'libopenvino.so.2540', False)):
        (fake / '__init__.py').write_text(body)
        res = run_node_to_exit(['-p', 'semantic.weights:=none',
                                '-p', 'semantic.backend:=openvino'], env=env)
        assert res.returncode != 0
        lines = [ln for ln in res.stderr.splitlines() if 'cannot start' in ln]
        assert len(lines) == 1, res.stderr
        assert expect in lines[0] and ('pip install openvino' in lines[0]) == pip, lines[0]
        assert 'Traceback' not in res.stderr
