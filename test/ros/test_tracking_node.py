"""segment_node with instance.tracking over DDS, with a real (random-weights) Mask R-CNN."""
import numpy as np
import pytest
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from seg_ros.core.inference.tracking import box_iou

from helpers import image_msg, image_to_array, make_instance_weights, serve_node, synthetic_image

pytestmark = pytest.mark.ros
H, W, SHIFT = 160, 240, 32
NODE = '/segmentation'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('track')
    weights = make_instance_weights(tmp / 'inst.pt', anchors_as_boxes=True)
    args = ['-r', 'image:=/cam/image', '-p', 'device:=cpu', '-p', 'semantic.enabled:=false',
            '-p', 'instance.enabled:=true',
            '-p', 'instance.backend:=torch', '-p', 'instance.model:=maskrcnn_resnet50_fpn',
            '-p', f'instance.weights:={weights}', '-p', 'instance.num_classes:=4',
            '-p', 'instance.score_threshold:=0.6', '-p', 'instance.min_size:=160',
            '-p', 'instance.max_size:=240', '-p', 'instance.tracking:=true',
            '-p', 'instance.track_timeout:=5.0']
    for node, client in serve_node(tmp, args):
        dets = client.collect(Detection2DArray, f'{NODE}/instances/detections')
        masks = client.collect(Image, f'{NODE}/instances/masks')
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        yield node, client, pub, dets, masks


def send(setup, rgb, stamp):
    node, client, pub, dets, masks = setup
    assert client.exchange(pub, image_msg(rgb, 'rgb8', stamp), [dets, masks], timeout=60,
                           resend=1.0) is not None, node.log()
    d, m = dets[stamp][0], image_to_array(masks[stamp][0])[:, :, 0]
    # the mask rule holds with track ids: every non-zero pixel is some detection's id
    # (a fully overlapped or degenerate detection may own no pixel)
    assert all(1 <= int(det.id) <= 65535 for det in d.detections)
    assert set(np.unique(m).tolist()) - {0} <= {int(x.id) for x in d.detections}
    assert (m > 0).any()
    assert len({x.id for x in d.detections}) == len(d.detections)
    return d.detections


def boxes_of(dets):
    return np.array([[d.bbox.center.position.x - d.bbox.size_x / 2,
                      d.bbox.center.position.y - d.bbox.size_y / 2,
                      d.bbox.center.position.x + d.bbox.size_x / 2,
                      d.bbox.center.position.y + d.bbox.size_y / 2] for d in dets])


def test_ids_persist_follow_a_shift_and_reset_on_a_backwards_stamp(setup):
    node = setup[0]
    rgb = synthetic_image(H, W, seed=4)
    base = 1_800_000_000 * 10**9
    first = send(setup, rgb, base)
    assert len(first) >= 2
    ids = [d.id for d in first]
    for i in range(1, 5):  # the same frame five times: every id kept
        assert [d.id for d in send(setup, rgb, base + i * 33_000_000)] == ids

    shifted = np.zeros_like(rgb)
    shifted[:, SHIFT:] = rgb[:, :-SHIFT]
    moved = send(setup, shifted, base + 5 * 33_000_000)
    old, new = boxes_of(first), boxes_of(moved)
    pairs = 0
    for j, d in enumerate(moved):  # every object that moved with the frame keeps its id
        for i, o in enumerate(first):
            same = o.results[0].hypothesis.class_id == d.results[0].hypothesis.class_id
            if same and box_iou(old[i:i + 1] + [SHIFT, 0, SHIFT, 0], new[j:j + 1])[0, 0] > 0.9:
                assert d.id == o.id, (o.id, d.id)
                pairs += 1
    assert pairs >= 3, 'too few objects moved with the frame for the test to mean much'

    before = {d.id for d in moved}
    back = send(setup, rgb, base - 10**9)  # sim reset / bag loop
    assert not before & {d.id for d in back}
    assert node.log().count('tracks reset') == 1
