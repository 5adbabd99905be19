"""Write and read rosbag2 files with the ``rosbags`` library (no ROS distribution needed).

``ros2 bag record`` is the way on a robot; where there is no ``ros2 bag`` (as on these
machines), :func:`write_bag` makes a bag of rclpy messages for ``segment_bag``::

    from seg_ros.offline.bagfile import write_bag
    write_bag('in_bag', {'/cam/image': [(receive_time_ns, image_msg), ...]}, storage='mcap')
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def type_name(msg: Any) -> str:
    """``sensor_msgs/msg/Image`` for a message instance."""
    cls = type(msg)
    return f'{cls.__module__.split(".")[0]}/msg/{cls.__name__}'


def write_bag(path: str | Path, streams: dict[str, Iterable[tuple[int, Any]]],
              storage: str = 'mcap') -> Path:
    """A rosbag2 at ``path`` (``storage`` 'mcap' or 'sqlite3'): each topic of ``streams``
    with its (receive time ns, rclpy message) pairs, serialised with rclpy's serializer.
    Streams may be generators (written as they come, so a long bag never sits in memory).
    """
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    writer = Writer(Path(path), version=9, storage_plugin=plugin)
    writer.open()
    try:
        for topic, msgs in streams.items():
            conn = None
            for t, msg in msgs:
                if conn is None:
                    conn = writer.add_connection(topic, type_name(msg), typestore=store)
                writer.write(conn, int(t), bytes(serialize_message(msg)))
    finally:
        writer.close()
    return Path(path)


def read_bag(path: str | Path) -> dict[str, list[tuple[int, str, bytes]]]:
    """Topic -> [(receive time, type, CDR bytes)] of every message of a rosbag2."""
    from rosbags.rosbag2 import Reader

    out: dict[str, list] = {}
    with Reader(Path(path)) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, conn.msgtype, bytes(raw)))
    return out
