"""A weights file written by train_instances is served by segment_node with its own
architecture and class names (``instance.weights:=FILE`` alone), over DDS."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from seg_ros.synthetic import tabletop
from seg_ros.testing.remote import LATCHED
from seg_ros.training import make_tabletop, train_instances

from helpers import (
    TEST_TRANSPORTS,
    image_msg,
    image_to_array,
    run_killing_group,
    run_node_to_exit,
    serve_node,
)

pytestmark = pytest.mark.ros
W, H = 128, 96


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('custom')
    ann = make_tabletop.make(tmp / 'data', 4, seed=11, width=W, height=H, workers=1)
    out = tmp / 'parts.pt'
    assert train_instances.main(['--coco', str(ann), '--images', str(tmp / 'data/images'),
                                 '--epochs', '1', '--size', str(H), '--batch', '2',
                                 '--out', str(out)]) == 0
    return tmp, out, json.loads(ann.read_text())


def test_node_serves_the_file_with_its_names(trained):
    tmp, weights, data = trained
    args = ['-r', 'image:=/cam/image', '-p', 'device:=cpu', '-p', 'semantic.enabled:=false',
            '-p', 'instance.enabled:=true', '-p', f'instance.weights:={weights}',
            '-p', 'instance.score_threshold:=0.0', '-p', f'warmup_size:={W}x{H}']
    for node, client in serve_node(tmp, args):
        assert "maskrcnn_mobilenet_v3_large_fpn, 3 classes" in node.log()
        infos = client.collect(LabelInfo, '/segmentation/instances/label_info', LATCHED)
        client.spin_until(lambda: bool(infos), 20)  # noqa: B023
        info = next(iter(infos.values()))[0]
        assert [c.class_name for c in info.class_map] == ['__background__', *tabletop.CLASSES]
        dets = client.collect(Detection2DArray, '/segmentation/instances/detections')
        masks = client.collect(Image, '/segmentation/instances/masks')
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        rgb = np.array(__import__('PIL.Image', fromlist=['Image']).open(
            tmp / 'data/images' / data['images'][0]['file_name']).convert('RGB'))
        stamp = 7 * 10**9
        assert client.exchange(pub, image_msg(rgb, 'rgb8', stamp), [dets, masks],
                               timeout=60.0, resend=2.0) is not None
        found = dets[stamp][0].detections
        assert found, 'a barely trained model still ranks some proposals at threshold 0'
        assert {d.results[0].hypothesis.class_id for d in found} <= set(tabletop.CLASSES)
        ids = image_to_array(masks[stamp][0])[:, :, 0]
        present = set(np.unique(ids)) - {0}
        assert present, 'an all-background id image would pass the next check vacuously'
        assert present <= {int(d.id) for d in found}


def test_model_contradicting_the_file_refused(trained):
    _, weights, _ = trained
    res = run_node_to_exit(['-p', 'warmup:=false', '-p', 'semantic.enabled:=false',
                            '-p', 'instance.enabled:=true', '-p', f'instance.weights:={weights}',
                            '-p', 'instance.model:=maskrcnn_resnet50_fpn_v2'])
    lines = [ln for ln in res.stderr.splitlines() if 'cannot start' in ln]
    assert res.returncode != 0 and len(lines) == 1, res.stderr
    assert 'contradicts weights file' in lines[0] and 'Traceback' not in res.stderr


def _eval_instances(*args: str) -> subprocess.CompletedProcess:
    # in a child process: a DDS participant that hangs on destruction holds the GIL in C
    # (no timeout of this process could fire); a child is ended on its timeout, its node
    # with it, and the run goes on
    env = dict(os.environ, ROS_DOMAIN_ID=os.environ['SEG_ROS_DOMAIN_ID'], OMP_NUM_THREADS='1',
               FASTDDS_BUILTIN_TRANSPORTS=TEST_TRANSPORTS)
    return run_killing_group([sys.executable, '-m', 'seg_ros.training.eval_instances', *args],
                             400, env)


def test_eval_instances_direct_equals_node(trained, tmp_path):
    tmp, weights, _ = trained
    out = tmp_path / 'eval.json'
    ann = str(tmp / 'data/annotations.json')
    res = _eval_instances('--weights', str(weights), '--coco', ann,
                          '--images', str(tmp / 'data/images'), '--limit', '2',
                          '--score-threshold', '0.0', '--json', str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    figures = json.loads(out.read_text())
    assert figures['agree'], res.stdout
    assert figures['direct'] == figures['node'] and figures['same_instance_count'] == 2
    # a dataset whose classes the model lacks is refused in one line, exit 2
    data = json.loads((tmp / 'data/annotations.json').read_text())
    data['categories'] = [{'id': 1, 'name': 'tote'}, {'id': 2, 'name': 'cylinder'}]
    other = tmp_path / 'other.json'
    other.write_text(json.dumps(data))
    res = _eval_instances('--weights', str(weights), '--coco', str(other),
                          '--images', str(tmp / 'data/images'), '--skip-node')
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "no class ['tote']" in err[0], res.stderr
