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
from rcl_interfaces.srv import GetParameters
from sensor_msgs.msg import CameraInfo, Image
from vision_msgs.msg import Detection2DArray, Detection3DArray

from seg_ros.core.rgbd_scene import render

from helpers import (
    LaunchClientCase,
    assert_clean_exit,
    camera_info_msg,
    depth_msg,
    fresh_domain_id,
    image_msg,
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
        assert client.spin_until(lambda: stamp in det3d and stamp in dets, 90, step)
        d2, d3 = dets[stamp][0], det3d[stamp][0]
        assert d2.header.frame_id == 'cam' and d3.header.frame_id == 'base_link'
        assert d3.header.stamp == d2.header.stamp
        assert d2.detections, 'no detection: the test would not mean much'
        ids2 = [d.id for d in d2.detections]
        assert [d.id for d in d3.detections] == [i for i in ids2 if i in
                                                 {d.id for d in d3.detections}]
        for d in d3.detections:  # the table is 0.8 m below the camera: 0.2 m above base_link
            z = d.results[0].pose.pose.position.z
            assert 0.19 < z < 0.5 and np.isfinite(z)

    def test_the_launch_files_settings_hold(self, proc_output):
        proc_output.assertWaitFor('listening on', timeout=120, stream='stderr')
        client = self.client
        cli = client.node.create_client(GetParameters, f'{NS}/{NODE_NAME}/get_parameters')
        assert cli.wait_for_service(timeout_sec=30)



@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info, proc_output):
        assert_clean_exit(proc_info, proc_output)
