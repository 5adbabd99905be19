"""One pass over a bag in time order: colour frames paired as the live node pairs them.

Depth and camera_info go into a :class:`~seg_ros.core.spatial.pairing.Pairing` per camera (the live
node's rule: validated messages only, a bounded cache, the depth nearest in stamp within
``depth.slop``, the newest valid camera_info). A colour frame waits in a short queue until
its pairing is decided: the camera's depth stream has passed its stamp by the slop, or
:data:`LOOKAHEAD_NS` of bag time has gone by, or the bag ends. Memory is bounded by the
queue and the caches, never by the bag's length.
"""
from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterator

from seg_ros.core.spatial.pairing import Pairing
from seg_ros.offline.worker import Item

#: how long (bag receive time) a colour frame may wait for a depth image
LOOKAHEAD_NS = 1_000_000_000
#: at most this many colour frames wait for their depth (then the oldest goes on)
MAX_PENDING = 64


def header_stamp(raw: bytes) -> int | None:
    """The header stamp (ns) of a CDR-serialised message whose first field is a
    std_msgs/Header (Image, CompressedImage, CameraInfo): read from the encapsulation header
    and the two 4-byte stamp fields after it, without deserialising the data.
    """
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in (0, 1):
        return None
    sec, nanosec = struct.unpack_from('<iI' if raw[1] == 1 else '>iI', raw, 4)
    return sec * 10**9 + nanosec


def header_frame_id(raw: bytes) -> str:
    """The header frame_id of a CDR-serialised message starting with a std_msgs/Header."""
    if len(raw) < 16 or raw[0] != 0 or raw[1] not in (0, 1):
        return ''
    (n,) = struct.unpack_from('<I' if raw[1] == 1 else '>I', raw, 12)
    return bytes(raw[16:16 + max(n - 1, 0)]).decode('utf-8', 'replace')


def stream_items(reader, images: dict[str, str], depths: dict[str, str],
                 infos: dict[str, str], slop_s: float, max_pixels: int,
                 drop: Callable[[str, str], None],
                 copy: Callable[[str, str, int, bytes], None] | None = None,
                 target_frame: str = '') -> Iterator[Item]:
    """The colour frames of ``images`` (camera -> topic) in receive order, each with its
    paired depth and camera model when ``depths`` / ``infos`` (camera -> topic) are given.

    Args:
        drop: called with (reason, text) for a depth or camera_info that is refused.
        copy: called with (topic, type, receive time, raw) for every depth and camera_info
            read (``--copy-input``).
        target_frame: with depth, each frame also gets the transform from its frame_id into
            this frame at its stamp, from the bag's ``/tf`` and ``/tf_static``.
    """
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from seg_ros.ros.transforms import BagTransforms

    conns = {c.topic: c for c in reader.connections}
    of_image = {t: c for c, t in images.items()}
    of_depth = {t: c for c, t in depths.items()}
    of_info = {t: c for c, t in infos.items()}
    pairing = {cam: Pairing(max_pixels, depth_topic=depths.get(cam, ''),
                            info_topic=infos.get(cam, '')) for cam in {*depths, *infos}}
    horizon: dict[str, int] = {}  # newest depth stamp seen per camera (valid or not)
    slop = int(round(slop_s * 1e9))
    tf_topics = [t for t in ('/tf', '/tf_static') if t in conns] if target_frame and \
        pairing else []
    tf = BagTransforms() if target_frame and pairing else None
    if tf is not None:
        from tf2_msgs.msg import TFMessage
    wanted = [conns[t] for t in dict.fromkeys([*images.values(), *depths.values(),
                                               *infos.values(), *tf_topics])]
    pending: deque[Item] = deque()

    def decided(item: Item, now: int) -> bool:
        if item.camera not in pairing or item.stamp_ns is None:
            return True
        if now - item.recv_ns > LOOKAHEAD_NS:
            return True
        seen = horizon.get(item.camera)
        tf_seen = tf.horizon_ns if tf is not None and '/tf' in tf_topics else None
        return (seen is not None and seen >= item.stamp_ns + slop) and \
            (tf is None or '/tf' not in tf_topics or
             (tf_seen is not None and tf_seen >= item.stamp_ns))

    def ready(now: int | None) -> Iterator[Item]:
        while pending and (now is None or len(pending) > MAX_PENDING
                           or decided(pending[0], now)):
            item = pending.popleft()
            got = item.paired
            if item.camera in pairing and item.stamp_ns is not None:
                got.depth, got.camera_model = pairing[item.camera].pair(item.stamp_ns, slop_s)
            elif item.camera in pairing:
                got.camera_model = pairing[item.camera].camera_model()
            if tf is not None and item.stamp_ns is not None:
                got.transform, got.transform_error = tf.lookup(
                    target_frame, header_frame_id(item.image), item.stamp_ns)
            yield item
    index = 0
    for conn, t, raw in reader.messages(connections=wanted):
        topic = conn.topic
        if topic in tf_topics:
            if copy is not None:
                copy(topic, conn.msgtype, t, bytes(raw))
            try:
                tf.add(deserialize_message(bytes(raw), TFMessage), topic == '/tf_static')
            except Exception as exc:  # noqa: BLE001 - a corrupt record adds nothing
                drop('bad_transform', f'{topic} at receive time {t}: {exc}')
        elif topic in of_image:
            pending.append(Item(index, t, bytes(raw), conn.msgtype.endswith('CompressedImage'),
                                of_image[topic], header_stamp(raw)))
            index += 1
        else:
            if copy is not None:
                copy(topic, conn.msgtype, t, bytes(raw))
            is_depth = topic in of_depth
            cam = of_depth[topic] if is_depth else of_info[topic]
            what = 'depth image' if is_depth else 'camera_info'
            if is_depth:
                stamp = header_stamp(raw)
                if stamp is not None:
                    horizon[cam] = max(horizon.get(cam, stamp), stamp)
            try:
                msg = deserialize_message(bytes(raw), Image if is_depth else CameraInfo)
            except Exception as exc:  # noqa: BLE001 - a corrupt record pairs with nothing
                drop('bad_depth' if is_depth else 'bad_camera_info',
                     f'{what} at receive time {t}: cannot deserialise: {exc}')
                continue
            pair = pairing[cam]
            err = pair.add_depth(msg) if is_depth else pair.add_camera_info(msg)
            if err is not None:
                where = f'camera {cam}: ' if cam else ''
                drop(err.reason, f'{where}dropped {what} at '
                     f'{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}: {err}')
        yield from ready(t)
    yield from ready(None)
