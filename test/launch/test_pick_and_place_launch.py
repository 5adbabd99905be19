"""launch_testing: `pick_and_place.launch.py` starts segment_node with instances, tracking
and 3D from depth on; its colour, depth and camera_info inputs are remapped and answered.

Checks: the three remapped inputs are subscribed; with target_frame:=base_link (a static
camera mount from tf2_ros.StaticTransformBroadcaster) a colour frame with its registered
depth and camera_info is answered on the namespaced 2D outputs (the image's frame) and 3D
outputs (base_link), Detection3D ids being 2D ids; the launch file's own settings
(instance, depth, tracking on; semantic off) hold even against a params file that says
otherwise; every process exits cleanly on shutdown.
"""
import os
import time
import unittest
from pathlib import Path

import launch_testing
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image
from vision_msgs.msg import Detection2DArray, Detection3DArray

from seg_ros.synthetic.rgbd_scene import render

from helpers import (
    LaunchClientCase,
    assert_clean_exit,
    camera_info_msg,
    depth_msg,
    fresh_domain_id,
    get_parameters,
    image_msg,
    image_to_array,
    included_launch,
    make_instance_weights,
)

DOMAIN = fresh_domain_id()
NS, NODE_NAME = '/cell', 'segmentation'
TOPICS = {'image': '/rig/color/image_raw', 'depth': '/rig/aligned_depth/image_raw',
          'camera_info': '/rig/color/camera_info'}
H, W = 120, 160


@pytest.mark.launch_test
def generate_test_description():
    os.environ['ROS_DOMAIN_ID'] = str(DOMAIN)
    tmp = Path(os.environ.get('TMPDIR', '/tmp')) / f'seg_ros_pnp_{os.getpid()}'
    tmp.mkdir(parents=True, exist_ok=True)
    weights = make_instance_weights(tmp / 'inst.pt')
    params = tmp / 'params.yaml'
    params.write_text(f"""\
/**:
  ros__parameters:
    device: cpu
    warmup: false
    semantic:
      enabled: true
    instance:
      enabled: false
      model: maskrcnn_resnet50_fpn
      backend: torch
      weights: {weights}
      num_classes: 4
      score_threshold: 0.6
      # torchvision's 1000 proposals: few of the random test weights' boxes score >= 0.6
      max_proposals: 0
      min_size: 120
      max_size: 160
    depth:
      enabled: false
      min_points: 5
""")
    args = {**TOPICS, 'params_file': str(params), 'namespace': NS, 'target_frame': 'base_link'}
    return included_launch('pick_and_place.launch.py', args)


class TestPickAndPlace(LaunchClientCase, unittest.TestCase):
    DOMAIN = DOMAIN

    def test_answers_in_3d_with_the_2d_ids(self, proc_output):
        proc_output.assertWaitFor('3D on: depth from /rig/aligned_depth/image_raw',
                                  timeout=120, stream='stderr')
        client = self.client
        dets = client.collect(Detection2DArray, f'{NS}/{NODE_NAME}/instances/detections')
        masks = client.collect(Image, f'{NS}/{NODE_NAME}/instances/masks')
        det3d = client.collect(Detection3DArray, f'{NS}/{NODE_NAME}/instances/detections_3d')
        pubs = {'image': client.node.create_publisher(Image, TOPICS['image'], 1),
                'depth': client.node.create_publisher(Image, TOPICS['depth'], 1),
                'camera_info': client.node.create_publisher(CameraInfo, TOPICS['camera_info'],
                                                            1)}
        for name, pub in pubs.items():
            assert client.spin_until(lambda pub=pub: pub.get_subscription_count() > 0, 30), \
                f'the remapped input {TOPICS[name]} has no subscriber'
        import tf2_ros
        from geometry_msgs.msg import TransformStamped
        mount = TransformStamped()  # the camera 1 m above base_link, looking straight down
        mount.header.frame_id, mount.child_frame_id = 'base_link', 'cam'
        mount.transform.translation.z = 1.0
        mount.transform.rotation.x, mount.transform.rotation.w = 1.0, 0.0  # 180 deg about x
        tf2_ros.StaticTransformBroadcaster(client.node).sendTransform(mount)
        scene = render(W, H)
        stamp = 1_700_000_000_500_000_000
        frames = (camera_info_msg(scene.k, scene.p, W, H, stamp),
                  depth_msg(scene.depth, '32FC1', stamp), image_msg(scene.rgb, 'rgb8', stamp))

        last = [0.0]

        def step():
            if time.perf_counter() - last[0] > 1.5:
                last[0] = time.perf_counter()
                pubs['camera_info'].publish(frames[0])
                pubs['depth'].publish(frames[1])
                client.spin_until(lambda: False, 0.05)
                pubs['image'].publish(frames[2])
        assert client.spin_until(
            lambda: stamp in det3d and stamp in dets and stamp in masks, 90, step)
        d2, d3 = dets[stamp][0], det3d[stamp][0]
        assert d2.header.frame_id == 'cam' and d3.header.frame_id == 'base_link'
        assert d3.header.stamp == d2.header.stamp
        assert d2.detections, 'no detection: the test would not mean much'
        assert d3.detections, 'no detection in 3D: the test would not mean much'
        ids2 = [d.id for d in d2.detections]
        assert [d.id for d in d3.detections] == [i for i in ids2 if i in
                                                 {d.id for d in d3.detections}]
        # each position is the median of its mask's rendered points, moved into base_link
        # (camera 1 m above, looking down: x' = x, y' = -y, z' = 1 - z), to 1 mm
        ids = image_to_array(masks[stamp][0])[:, :, 0]
        fx, cx, fy, cy = scene.p[0], scene.p[2], scene.p[5], scene.p[6]
        for d in d3.detections:
            v, u = np.nonzero(ids == int(d.id))
            z = scene.depth[v, u].astype(np.float64)
            pts = np.stack([(u - cx) * z / fx, -(v - cy) * z / fy, 1.0 - z], 1)
            p = d.results[0].pose.pose.position
            assert np.allclose([p.x, p.y, p.z], np.median(pts, 0), atol=1e-3), d.id
            # and it lies on the table (0.2 m above base_link) or on an object (<= 0.2 m tall)
            assert 0.2 - 1e-3 <= p.z <= 0.4 + 1e-3

    def test_the_launch_files_settings_hold(self, proc_output):
        proc_output.assertWaitFor('listening on', timeout=120, stream='stderr')
        client = self.client
        values = get_parameters(client, f'{NS}/{NODE_NAME}',
                                ['instance.enabled', 'depth.enabled', 'instance.tracking',
                                 'semantic.enabled', 'depth.min_points', 'device'], timeout=30)
        # the launch file's own settings win over the params file (instance, depth: false;
        # semantic: true); the params file's other values reach the node
        assert values == [True, True, True, False, 5, 'cpu'], values


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info, proc_output):
        assert_clean_exit(proc_info, proc_output)
