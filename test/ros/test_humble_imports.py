"""Humble's rclpy has no ``rclpy.event_handler`` (Iron renamed ``rclpy.qos_event``,
rclpy#1058). segment_node must start and serve with that module hidden from seg_ros' own
imports; rclpy itself still needs it here (Kilted's ``qos_event`` re-exports it), so an
import hook refuses it only to importers inside seg_ros.
"""
import sys

import pytest
from sensor_msgs.msg import Image

from seg_ros.testing.remote import NodeProcess, frame_msg

from helpers import RosClient, fresh_domain_id, synthetic_image

pytestmark = pytest.mark.ros

HOOK = r'''
import builtins, sys
_real_import = builtins.__import__
def _humble_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get('__name__', '')
    wants = name == 'rclpy.event_handler' or (
        name == 'rclpy' and 'event_handler' in (fromlist or ()))
    if importer.startswith('seg_ros') and wants:
        print(f'humble-hook: refused rclpy.event_handler to {importer}', file=sys.stderr,
              flush=True)
        raise ImportError("No module named 'rclpy.event_handler' (hidden: Humble)")
    return _real_import(name, globals, locals, fromlist, level)
builtins.__import__ = _humble_import
from seg_ros.ros.segment_node import main
sys.exit(main())
'''


def test_node_serves_without_rclpy_event_handler(tmp_path):
    domain = fresh_domain_id()
    node = NodeProcess(['-p', 'device:=cpu', '-p', 'warmup:=false', '-r', 'image:=/cam/image'],
                       domain, tmp_path / 'node.log', env={'OMP_NUM_THREADS': '1'},
                       command=[sys.executable, '-c', HOOK])
    client = None
    try:
        node.wait_ready()
        assert 'humble-hook: refused rclpy.event_handler to seg_ros.ros.engine' in node.log()
        client = RosClient(domain)
        labels = client.collect(Image, '/segmentation/semantic/labels')
        pub = client.node.create_publisher(Image, '/cam/image', 1)
        msg = frame_msg(synthetic_image(40, 56, seed=3), 1_700_000_000_000_000_777)
        assert client.exchange(pub, msg, [labels], timeout=60, resend=1.0) is not None, \
            node.log()
    finally:
        if client is not None:
            client.close()
        code = node.stop()
    assert code == 0, node.log()
