"""A YOLO segmentation ONNX (Ultralytics' layout) served by segment_node over DDS with
``instance.weights:=FILE.onnx`` alone: class names in LabelInfo and every Detection2D, the
duplicate suppressed, the low score dropped, boxes and masks in the image's own pixels."""
import numpy as np
import pytest
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

from seg_ros.testing.remote import LATCHED
from seg_ros.testing.yolo_files import expected, tabletop_rows, write_yolo_seg

from helpers import image_msg, image_to_array, serve_node

pytestmark = pytest.mark.ros
W, H = 640, 480


def test_node_serves_a_yolo_segmentation_file(tmp_path):
    path = write_yolo_seg(tmp_path / 'parts-seg.onnx')
    args = ['-r', 'image:=/cam/image', '-p', 'device:=cpu', '-p', 'semantic.enabled:=false',
            '-p', 'instance.enabled:=true', '-p', f'instance.weights:={path}',
            '-p', f'warmup_size:={W}x{H}']
    for node, client in serve_node(tmp_path, args):
        assert 'YOLO segmentation ONNX' in node.log()
        infos = client.collect(LabelInfo, '/segmentation/instances/label_info', LATCHED)
        client.spin_until(lambda: bool(infos), 20)  # noqa: B023
        info = next(iter(infos.values()))[0]
        assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, 'cup'),
                                                                          (1, 'bottle')]
        dets = client.collect(Detection2DArray, '/segmentation/instances/detections')
        masks = client.collect(Image, '/segmentation/instances/masks')
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        stamp = 3 * 10**9
        rgb = np.full((H, W, 3), 120, np.uint8)
        assert client.exchange(pub, image_msg(rgb, 'rgb8', stamp), [dets, masks],
                               timeout=60.0, resend=2.0) is not None
        found = dets[stamp][0].detections
        want = expected([tabletop_rows()[i] for i in (0, 2, 4)], (H, W))
        # the bottle (0.6) covers most of the cup's pixels: the cup's second hypothesis
        # (instance.duplicate_iou), not an instance that would own none of them
        assert [[(r.hypothesis.class_id, round(r.hypothesis.score, 2)) for r in d.results]
                for d in found] == [[('cup', 0.9), ('bottle', 0.6)], [('bottle', 0.7)]]
        ids = image_to_array(masks[stamp][0])[:, :, 0]
        for d, (_, box, mask) in zip(found[:2], want[:2], strict=True):
            cx, cy = d.bbox.center.position.x, d.bbox.center.position.y
            got = np.array([cx - d.bbox.size_x / 2, cy - d.bbox.size_y / 2,
                            cx + d.bbox.size_x / 2, cy + d.bbox.size_y / 2])
            np.testing.assert_allclose(got, box, atol=2.0)
            mine = ids == int(d.id)
            assert (mine & mask).sum() / (mine | mask).sum() >= 0.9
