"""segment_node with semantic + instance segmentation, as a separate process over DDS."""
import numpy as np
import pytest
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from seg_ros.testing.remote import LATCHED

from helpers import (
    image_msg,
    image_to_array,
    make_instance_weights,
    make_semantic_weights,
    serve_node,
    set_parameters,
    synthetic_image,
    torchvision_maskrcnn,
)

pytestmark = pytest.mark.ros
H, W = 120, 160
MIN_SIZE, MAX_SIZE = 160, 240
NODE = '/perception/seg'


def torchvision_instances(weights, rgb, score_threshold):
    return torchvision_maskrcnn(weights, rgb, score_threshold, MIN_SIZE, MAX_SIZE)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('inst')
    inst_w = make_instance_weights(tmp / 'inst.pt')
    sem_w = make_semantic_weights(tmp / 'sem.pt')
    args = [
        '-r', '__node:=seg', '-r', '__ns:=/perception', '-r', 'image:=/cam/image',
        '-p', 'device:=cpu', '-p', f'semantic.weights:={sem_w}', '-p', 'semantic.input_size:=0',
        '-p', 'instance.enabled:=true',
        '-p', 'instance.backend:=torch', '-p', 'instance.model:=maskrcnn_resnet50_fpn',
        '-p', f'instance.weights:={inst_w}', '-p', 'instance.class_names:=[bg, box, can, cup]',
        '-p', 'instance.score_threshold:=0.7', '-p', f'instance.min_size:={MIN_SIZE}',
        # torchvision's 1000 proposals: the reference is torchvision's own model
        '-p', 'instance.max_proposals:=0',
        # every detection an instance of its own, as torchvision returns them
        '-p', 'instance.duplicate_iou:=1.0',
        '-p', f'instance.max_size:={MAX_SIZE}']
    for node, client in serve_node(tmp, args):
        yield inst_w, node, client


def exchange(client, rgb, stamp, topics=('detections', 'masks')):
    """Publish a frame until the node answered it on every topic; returns the answers."""
    boxes = {t: client.collect(Detection2DArray if t == 'detections' else Image,
                               f'{NODE}/instances/{t}') for t in topics}
    pub = client.node.create_publisher(Image, '/cam/image', 10)
    lat = client.exchange(pub, image_msg(rgb, 'rgb8', stamp, frame_id='tool0'),
                          list(boxes.values()), timeout=60.0, resend=1.0)
    client.node.destroy_publisher(pub)
    assert lat is not None, 'no answer'
    return {t: b[stamp][0] for t, b in boxes.items()}


def test_detections_and_masks_match_torchvision(setup):
    weights, node, client = setup
    rgb = synthetic_image(H, W, seed=1)
    ref = torchvision_instances(weights, rgb, 0.7)
    assert len(ref['scores']) >= 3
    got = exchange(client, rgb, 10**9 + 1, ('detections', 'masks', 'overlay'))
    dets, masks = got['detections'], got['masks']
    assert dets.header.frame_id == 'tool0' and masks.header.frame_id == 'tool0'
    assert masks.encoding == 'mono16' and (masks.height, masks.width) == (H, W)
    names = ['bg', 'box', 'can', 'cup']
    assert not np.any(np.abs(ref['scores'] - 0.7) < 1e-4), 'threshold must not split a tie'
    assert len(dets.detections) == len(ref['scores'])
    scores = [d.results[0].hypothesis.score for d in dets.detections]
    assert scores == sorted(scores, reverse=True)
    ids = image_to_array(masks)[:, :, 0]
    ref_masks = ref['masks'][:, 0] > 0.5
    taken = np.zeros((H, W), bool)
    unmatched = set(range(len(ref['scores'])))
    for k, d in enumerate(dets.detections):
        assert d.id == str(k + 1)
        hyp = d.results[0].hypothesis
        box = np.array([d.bbox.center.position.x - d.bbox.size_x / 2,
                        d.bbox.center.position.y - d.bbox.size_y / 2,
                        d.bbox.center.position.x + d.bbox.size_x / 2,
                        d.bbox.center.position.y + d.bbox.size_y / 2])
        # Match by box and score (near-tied scores may swap order across processes).
        j = min(unmatched, key=lambda i: np.abs(ref['boxes'][i] - box).max()
                + abs(ref['scores'][i] - hyp.score))
        assert np.abs(ref['boxes'][j] - box).max() < 1e-2, (k, box, ref['boxes'][j])
        assert abs(hyp.score - ref['scores'][j]) < 1e-4
        assert hyp.class_id == names[ref['labels'][j]]
        unmatched.discard(j)
        visible = ref_masks[j] & ~taken  # higher-scored instances keep overlapping pixels
        taken |= ref_masks[j]
        mine = ids == k + 1
        union = (mine | visible).sum()
        assert union == 0 or (mine & visible).sum() / union >= 0.99, k
    assert not unmatched
    assert ids.max() <= len(dets.detections)
    assert got['overlay'].encoding == 'rgb8'


def test_semantic_runs_beside_instances(setup):
    _, node, client = setup
    labels = {}
    client.node.create_subscription(Image, f'{NODE}/semantic/labels',
                                    lambda m: labels.setdefault(m.header.stamp.sec, m), 10)
    exchange(client, synthetic_image(H, W, seed=2), 2 * 10**9)
    assert client.spin_until(lambda: 2 in labels, 10.0)
    assert (labels[2].height, labels[2].width) == (H, W)


def test_label_info(setup):
    _, _, client = setup
    box = client.collect(LabelInfo, f'{NODE}/instances/label_info', LATCHED)
    assert client.spin_until(lambda: box, 15.0)
    info = next(iter(box.values()))[0]
    assert [c.class_name for c in info.class_map] == ['bg', 'box', 'can', 'cup']


def test_class_filter_threshold_and_empty_frames(setup):
    weights, node, client = setup
    rgb = synthetic_image(H, W, seed=1)
    ref = torchvision_instances(weights, rgb, 0.7)
    names = np.array(['bg', 'box', 'can', 'cup'])
    present = names[ref['labels']]
    rare = min(set(present), key=lambda n: (present == n).sum())
    results = set_parameters(client, NODE, {'instance.classes': [rare]})
    assert results[0].successful, results[0].reason
    got = exchange(client, rgb, 3 * 10**9)
    classes = [d.results[0].hypothesis.class_id for d in got['detections'].detections]
    assert classes == [rare] * int((present == rare).sum())
    ids = image_to_array(got['masks'])[:, :, 0]
    assert ids.max() == len(classes)

    refused = set_parameters(client, NODE, {'instance.classes': ['unicorn']})
    assert not refused[0].successful and 'unicorn' in refused[0].reason
    assert set_parameters(client, NODE, {'instance.classes': ['']})[0].successful

    higher = float(np.median(ref['scores']))
    assert set_parameters(client, NODE, {'instance.score_threshold': higher})[0].successful
    got = exchange(client, rgb, 4 * 10**9)
    kept = [d.results[0].hypothesis.score for d in got['detections'].detections]
    assert len(kept) == int((ref['scores'] >= higher).sum()) and min(kept) >= higher

    assert not set_parameters(client, NODE, {'instance.score_threshold': 1.5})[0].successful
    assert set_parameters(client, NODE, {'instance.score_threshold': 1.0})[0].successful
    got = exchange(client, rgb, 5 * 10**9)
    assert got['detections'].detections == []  # "nothing seen", still published
    empty = image_to_array(got['masks'])
    assert empty.shape == (H, W, 1) and not empty.any()
    assert node.alive()


def test_duplicate_iou_is_a_dynamic_parameter(setup):
    """instance.duplicate_iou (dynamic; the merge itself: test_yolo_node and the unit
    tests): at 0.5 every published hypothesis is one of torchvision's detections, each
    detection's classes are distinct and best first, every id in the mask image is a
    detection's; out of range is refused; 1.0 gives torchvision's list one for one."""
    weights, node, client = setup
    rgb = synthetic_image(H, W, seed=1)
    ref = torchvision_instances(weights, rgb, 0.7)
    names = ['bg', 'box', 'can', 'cup']
    assert set_parameters(client, NODE, {'instance.duplicate_iou': 0.5,
                                         'instance.score_threshold': 0.7})[0].successful
    got = exchange(client, rgb, 6 * 10**9)
    dets = got['detections'].detections
    rows = [[(r.hypothesis.class_id, r.hypothesis.score) for r in d.results] for d in dets]
    assert rows and sum(map(len, rows)) <= len(ref['scores'])
    for r in rows:
        assert len({c for c, _ in r}) == len(r) and [s for _, s in r] == sorted(
            [s for _, s in r], reverse=True)
    ref_pairs = [(names[c], float(s))
                 for c, s in zip(ref['labels'], ref['scores'], strict=True)]
    for c, s in (pair for r in rows for pair in r):  # each hypothesis is a detection's
        assert any(c == rc and abs(s - rs) < 1e-4 for rc, rs in ref_pairs), (c, s)
    ids = set(np.unique(image_to_array(got['masks'])[:, :, 0])) - {0}
    assert ids and ids <= {int(d.id) for d in dets}
    assert not set_parameters(client, NODE, {'instance.duplicate_iou': 1.5})[0].successful
    assert set_parameters(client, NODE, {'instance.duplicate_iou': 1.0})[0].successful
    got = exchange(client, rgb, 7 * 10**9)
    assert len(got['detections'].detections) == len(ref['scores'])
    assert all(len(d.results) == 1 for d in got['detections'].detections)
