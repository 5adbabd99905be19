"""launch_testing: `segment.launch.py` with its arguments starts segment_node and serves.

Run twice (launch_testing.parametrize): without a ``device`` argument the params file's
``device: cpu`` applies; with ``device:=auto`` the argument overrides the file. Checks: the
remapped input is subscribed, an image is answered on the namespaced outputs with its
header, params_file values reach the node, and every process exits cleanly on shutdown.
"""
import os
import unittest

import launch_testing
import numpy as np
import pytest
from rcl_interfaces.srv import GetParameters
from sensor_msgs.msg import Image

from seg_ros.testing.remote import frame_msg

from helpers import (
    LaunchClientCase,
    assert_clean_exit,
    fresh_domain_id,
    image_to_array,
    included_launch,
    synthetic_image,
)

DOMAIN = fresh_domain_id()
NAMESPACE, NODE_NAME = '/rig1', 'seg'
PARAMS_YAML = """\
/**:
  ros__parameters:
    device: cpu
    warmup: false
    diagnostics_period: 0.5
    semantic:
      input_size: 0
"""


@pytest.mark.launch_test
@launch_testing.parametrize('device_arg, expected_device', [(None, 'cpu'), ('auto', 'auto')])
def generate_test_description(device_arg, expected_device):
    os.environ['ROS_DOMAIN_ID'] = str(DOMAIN)  # the launched node inherits it
    params = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'seg_ros_launch_{os.getpid()}.yaml')
    with open(params, 'w', encoding='utf-8') as f:
        f.write(PARAMS_YAML)
    args = {'image': '/cam/image', 'params_file': params, 'namespace': NAMESPACE,
            'node_name': NODE_NAME}
    if device_arg is not None:
        args['device'] = device_arg
    return included_launch('segment.launch.py', args)


def camvid_reference(rgb):
    """Labels of the shipped CamVid model (semantic.weights: camvid) at the image's own size
    (semantic.input_size: 0), computed here with eager torch."""
    import torch

    from seg_ros.core.models.registry import load_semantic_model
    loaded = load_semantic_model('', 'camvid', device=torch.device('cpu'))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return loaded.model((x - mean) / std)['out'].argmax(1)[0].numpy()


class TestServes(LaunchClientCase, unittest.TestCase):
    DOMAIN = DOMAIN

    def test_answers_on_namespaced_outputs(self, proc_output, expected_device):
        proc_output.assertWaitFor('listening on /cam/image', timeout=120, stream='stderr')
        client = self.client
        labels = client.collect(Image, f'{NAMESPACE}/{NODE_NAME}/semantic/labels')
        pub = client.node.create_publisher(Image, '/cam/image', 1)
        assert client.spin_until(lambda: pub.get_subscription_count() > 0, 30), \
            'the remapped input /cam/image has no subscriber'
        rgb = synthetic_image(48, 64, seed=2)
        msg = frame_msg(rgb, 1_700_000_000_123_456_789, frame_id='rig1_camera')
        assert client.exchange(pub, msg, [labels], timeout=60, resend=1.0) is not None
        out = labels[1_700_000_000_123_456_789][0]
        assert out.header.frame_id == 'rig1_camera'
        assert (out.encoding, out.height, out.width) == ('mono8', 48, 64)
        got = image_to_array(out)[:, :, 0]
        want = camvid_reference(rgb)  # the shipped model, eager torch in this process
        assert (got == want).mean() >= 0.99, (got == want).mean()
        assert len(np.unique(want)) >= 2  # an all-zero answer could not pass

    def test_params_file_and_launch_argument_reach_the_node(self, proc_output, expected_device):
        proc_output.assertWaitFor('listening on', timeout=120, stream='stderr')
        client = self.client
        cli = client.node.create_client(GetParameters,
                                        f'{NAMESPACE}/{NODE_NAME}/get_parameters')
        assert cli.wait_for_service(timeout_sec=30)
        req = GetParameters.Request(names=['device', 'diagnostics_period', 'warmup',
                                           'semantic.input_size'])
        fut = cli.call_async(req)
        assert client.spin_until(fut.done, 30)
        values = fut.result().values
        assert [v.string_value for v in values[:1]] == [expected_device]
        assert values[1].double_value == 0.5
        assert values[2].bool_value is False
        assert values[3].integer_value == 0


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_code(self, proc_info, proc_output):
        assert_clean_exit(proc_info, proc_output)
