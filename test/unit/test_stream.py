"""segment_bag's one-pass reader: frames paired as the live node pairs them, in order, with
a bounded look-ahead (never the whole bag in memory)."""
from types import SimpleNamespace

import numpy as np
from rclpy.serialization import serialize_message

from seg_ros.offline.stream import LOOKAHEAD_NS, stream_items
from seg_ros.testing.remote import camera_info_msg, frame_msg

MS = 1_000_000


class FakeReader:
    """rosbags' Reader interface over a list of (topic, type, t, message); counts what was
    read so far."""

    def __init__(self, records):
        self.records = sorted(records, key=lambda r: r[2])
        types = {r[0]: r[1] for r in records}
        self.connections = [SimpleNamespace(topic=t, msgtype=m, msgcount=0)
                            for t, m in types.items()]
        self.read = 0

    def messages(self, connections):
        topics = {c.topic for c in connections}
        for topic, _mtype, t, msg in self.records:
            if topic in topics:
                self.read += 1
                conn = next(c for c in self.connections if c.topic == topic)
                yield conn, t, bytes(serialize_message(msg))


def depth(stamp, encoding='16UC1'):
    msg = frame_msg(np.full((6, 8, 1), 700, np.uint16), stamp, encoding='mono16')
    msg.encoding = encoding
    return msg


def test_frames_are_paired_in_order_and_streamed():
    k = [100.0, 0, 4, 0, 100.0, 3, 0, 0, 1]
    p = [100.0, 0, 4, 0, 0, 100.0, 3, 0, 0, 0, 1, 0]
    rgb = np.zeros((6, 8, 3), np.uint8)
    records = [('/info', 'sensor_msgs/msg/CameraInfo', 0, camera_info_msg(k, p, 8, 6, 0))]
    n = 200
    for i in range(n):
        t = 10**9 + i * 100 * MS
        records.append(('/img', 'sensor_msgs/msg/Image', t + 1, frame_msg(rgb, t)))
        if i % 10 == 5:
            continue  # no depth for this frame
        bad = i % 10 == 7
        records.append(('/depth', 'sensor_msgs/msg/Image', t + 30 * MS,
                        depth(t + 3 * MS, 'rgb8' if bad else '16UC1')))
    reader = FakeReader(records)
    drops = []
    items = stream_items(reader, {'': '/img'}, {'': '/depth'}, {'': '/info'}, 0.02,
                         10**8, lambda reason, text: drops.append(reason))
    got = []
    for item in items:
        got.append(item)
        if item.index == 0:  # answered long before the bag ends
            assert reader.read < 10, reader.read
        # bounded look-ahead: never more than ~LOOKAHEAD of bag time read past a frame
        assert reader.read <= 3 * (item.index + 1) + 3 * LOOKAHEAD_NS // (100 * MS) + 3
    assert [it.index for it in got] == list(range(n))
    for i, it in enumerate(got):
        paired = it.paired
        assert paired.camera_model is not None and paired.camera_model.k[0] == 100.0
        if i % 10 in (5, 7):  # none, or refused (never paired)
            assert paired.depth is None, i
        else:
            assert paired.depth.stamp_ns == it.stamp_ns + 3 * MS, i
    assert drops.count('bad_depth') == n // 10


def test_offline_runs_without_a_ros_node_or_the_live_engine(tmp_path):
    """segment_bag's modules, and a worker answering a frame, never import rclpy.node or the
    live engine (checked in a fresh interpreter)."""
    import subprocess
    import sys
    code = '''
import sys
import numpy as np
from rclpy.serialization import serialize_message
from seg_ros.offline import segment_bag, stream, runners, bagfile
from seg_ros.offline.worker import BagWorker, Item
from sensor_msgs.msg import Image
from seg_ros.ros.messages import array_to_image
w = BagWorker({'device': 'cpu', 'semantic.weights': 'none', 'semantic.num_classes': 3,
               'semantic.input_size': 0, 'semantic.backend': 'torch', 'warmup': False},
              quiet=True)
msg = array_to_image(np.zeros((8, 10, 3), np.uint8), 'rgb8', Image().header)
res = w.process(Item(0, 1, bytes(serialize_message(msg)), False))
assert [t for t, _, _ in res.outputs] == ['semantic/labels'], res
bad = [m for m in ('rclpy.node', 'seg_ros.ros.engine', 'seg_ros.ros.camera') if m in sys.modules]
assert not bad, bad
'''
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
