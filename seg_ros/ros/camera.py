"""One camera of the node: its subscriptions, QoS following, mailbox, outputs and counters.

The single-camera node has one camera named ``''`` (topics ``image``, ``~/semantic/labels``,
...); with ``cameras: [front, ...]`` each has its own (``front/image``,
``~/front/semantic/labels``, ...). The image callback only validates and converts, then puts
the frame into a one-slot mailbox (newest wins, superseded frames counted) shared with the
worker through the engine's condition variable. Depth and camera_info go to the camera's
:class:`~seg_ros.core.spatial.pairing.Pairing` (validated messages only).
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass
from typing import Any

try:  # Iron and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble: the same classes under their old module name (rclpy#1058)
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from seg_ros.core.spatial.imaging import Frame
from seg_ros.core.spatial.pairing import Pairing, stamp_text
from seg_ros.core.throttle import ThrottledWarner
from seg_ros.ros import messages
from seg_ros.ros.outputs import CAMERA_INFO, DEPTH, IMAGE
from seg_ros.ros.stats import FrameStats

# Subscription "matched" events exist from Iron on; Humble falls back to the 1 s poll.
HAS_MATCHED_EVENT = 'matched' in inspect.signature(SubscriptionEventCallbacks).parameters
RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}


@dataclass
class Job:
    """A frame waiting for the model: the message, its converted frame, timings."""

    msg: Any
    frame: Frame
    t_queued: float
    convert_s: float


class Camera:
    """One camera (see the module). ``cv`` is the engine's condition variable: the slot is
    read and written under it.
    """

    def __init__(self, node: Node, name: str, cv: threading.Condition,
                 warn_incompatible) -> None:
        self.node, self.log = node, node.get_logger()
        self.name = name
        self.prefix = f'{name}/' if name else ''
        self.stats = FrameStats()
        self.cv = cv
        self.slot: Job | None = None
        self.sub = None
        self.sub_reliability: ReliabilityPolicy | None = None
        self.input_topic = ''
        self.depth_topics = ('', '')
        self.pubs: dict[str, Any] = {}  # 'semantic/labels' -> its publisher
        self.depth_subs: list = []
        self.pairing: Pairing | None = None
        #: warn(key, text): at most once per key every 5 s, with the camera's name
        self.warn_throttled = ThrottledWarner(self._warn)
        self.oneshot = None
        self.batched = 0  # frames that shared their forward pass with other cameras' frames
        self._warn_incompatible = warn_incompatible
        self.mode = 'auto'
        self.compressed = False
        self.max_pixels = 0
        self.max_age = 0.0
        self.active = False
        # silence watch (see :meth:`watch`)
        self.silence: str | None = None
        self.qos_problem: str | None = None
        self.last_frame: float | None = None
        self._no_publisher_since: float | None = None
        self._matched_since: float | None = None

    def wants(self, topic: str) -> bool:
        """Whether output ``topic`` (relative, e.g. 'semantic/color') has a subscriber."""
        pub = self.pubs.get(topic)
        return pub is not None and pub.get_subscription_count() > 0

    def _warn(self, text: str) -> None:
        self.log.warning((f'camera {self.name}: ' if self.name else '') + text)

    def watch(self, timeout: float, now: float | None = None) -> str | None:
        """Why this camera receives nothing (None while frames arrive, or ``timeout`` 0):
        no publisher for ``timeout`` s, a matched publisher without a frame for ``timeout``
        s (large frames without LARGE_DATA on both ends, QoS), an incompatible QoS offered.
        Sets :attr:`silence` (/diagnostics goes WARN) and warns, throttled.
        """
        now = time.monotonic() if now is None else now
        reason, kind = None, 'silence'
        if timeout > 0 and self.sub is not None:
            if self.node.count_publishers(self.input_topic) == 0:
                self._matched_since = None
                if self._no_publisher_since is None:
                    self._no_publisher_since = now
                quiet = now - self._no_publisher_since
                if quiet >= timeout:
                    kind = 'no_publisher'
                    reason = (f'no publisher on {self.input_topic} for {quiet:.0f} s: check the '
                              'topic name and remappings (ros2 topic list)')
            else:
                self._no_publisher_since = None
                if self._matched_since is None:
                    self._matched_since = now
                quiet = now - max(self._matched_since, self.last_frame or -1e18)
                if quiet >= timeout:
                    kind = 'no_frame'
                    reason = (f'publisher matched on {self.input_topic}, no frame in {quiet:.0f} '
                              's: check FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA on both ends '
                              '(large images), or QoS')
            if self.qos_problem and (reason or self.last_frame is None):
                reason = (reason + '; ' if reason else '') + self.qos_problem
        self.silence = reason
        if reason:
            self.warn_throttled(kind, reason)
        return reason

    def drop(self, reason: str, text: str) -> None:
        """Count a dropped frame and warn, at most once per reason every 5 s."""
        count = self.stats.on_dropped(reason)
        self.warn_throttled(reason, f'{text} ({reason}: {count} so far)')

    # -- start / stop --------------------------------------------------------------------
    def start(self, settings, outputs: list[tuple[type, str]], make_pub, depth_qos) -> None:
        """Create the camera's publishers and subscriptions (``depth_qos`` when 3D is on)."""
        node = self.node
        self.mode = settings['reliability']
        self.compressed = settings['input_transport'] == 'compressed'
        self.max_pixels = settings.max_image_pixels
        self.pubs = {topic: make_pub(msg_type, f'~/{self.prefix}{topic}')
                     for msg_type, topic in outputs}
        base = node.resolve_topic_name(self.prefix + IMAGE)
        self.input_topic = base + '/compressed' if self.compressed else base
        self.active = True
        self.update_subscription()
        if depth_qos is not None:
            self._start_depth(settings, depth_qos)

    def _start_depth(self, settings, qos: QoSProfile) -> None:
        import message_filters

        node = self.node
        self.depth_topics = (node.resolve_topic_name(self.prefix + DEPTH),
                             node.resolve_topic_name(self.prefix + CAMERA_INFO))
        self.pairing = Pairing(settings.max_image_pixels, depth_topic=self.depth_topics[0],
                               info_topic=self.depth_topics[1])
        depth_sub = message_filters.Subscriber(node, Image, self.prefix + DEPTH,
                                               qos_profile=qos)
        info_sub = message_filters.Subscriber(node, CameraInfo, self.prefix + CAMERA_INFO,
                                              qos_profile=qos)
        depth_sub.registerCallback(self._on_depth)
        info_sub.registerCallback(self._on_camera_info)
        self.depth_subs = [depth_sub, info_sub]
        self.log.info(f'3D on: depth from {self.depth_topics[0]}, intrinsics from '
                      f'{self.depth_topics[1]}')

    def _on_depth(self, msg) -> None:
        err = self.pairing.add_depth(msg)
        if err is not None:
            self.drop(err.reason, f'dropped depth image at {_safe_stamp(msg)}: {err}')

    def _on_camera_info(self, msg) -> None:
        err = self.pairing.add_camera_info(msg)
        if err is not None:
            self.drop(err.reason, f'dropped camera_info at {_safe_stamp(msg)}: {err}')

    def stop(self) -> None:
        """Destroy the camera's subscriptions, publishers and timer (executor stopped)."""
        self.active = False
        with self.cv:
            self.slot = None
        node = self.node
        if self.oneshot is not None:
            node.destroy_timer(self.oneshot)
            self.oneshot = None
        if self.sub is not None:
            node.destroy_subscription(self.sub)
        for sub in self.depth_subs:
            node.destroy_subscription(sub.sub)
        for pub in self.pubs.values():
            node.destroy_publisher(pub)
        self.depth_subs, self.pairing = [], None
        self.sub, self.sub_reliability, self.pubs = None, None, {}

    # -- QoS following -------------------------------------------------------------------
    def wanted_reliability(self) -> ReliabilityPolicy:
        if self.mode in RELIABILITY:
            return RELIABILITY[self.mode]
        infos = self.node.get_publishers_info_by_topic(self.input_topic)
        if not infos and self.sub_reliability is not None:
            return self.sub_reliability  # a publisher left: keep what matched it
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                         for i in infos):
            return ReliabilityPolicy.RELIABLE
        return ReliabilityPolicy.BEST_EFFORT  # none seen yet, or a best-effort publisher

    def update_subscription(self) -> None:
        """(Re)subscribe when the wanted reliability differs from the subscription's."""
        if not self.active:
            return
        want = self.wanted_reliability()
        if self.sub is not None and want == self.sub_reliability:
            return
        if self.sub is not None:
            self.node.destroy_subscription(self.sub)
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=want)
        kwargs = {'incompatible_qos': self._on_incompatible}
        if self.mode == 'auto' and HAS_MATCHED_EVENT:
            kwargs['matched'] = lambda _info: self.reevaluate_soon()
        msg_type = CompressedImage if self.compressed else Image
        self.sub = self.node.create_subscription(
            msg_type, self.input_topic, self.on_image, qos,
            event_callbacks=SubscriptionEventCallbacks(**kwargs))
        self.sub_reliability = want
        self.log.info(f'subscribed to {self.input_topic} with reliability '
                      f'{want.name.lower()}')

    def _on_incompatible(self, event) -> None:
        self._warn_incompatible('input', event, self)
        self.qos_problem = (f'a publisher on {self.input_topic} offers an incompatible QoS '
                            f'({event.total_count} so far)')
        if self.mode == 'auto':
            self.reevaluate_soon()

    def reevaluate_soon(self) -> None:
        """Re-check the publishers' QoS right away (a publisher matched or was refused),
        from a one-shot timer: the subscription is not replaced inside its own callback.
        """
        if self.oneshot is not None or not self.active:
            return

        def fire() -> None:
            timer, self.oneshot = self.oneshot, None
            if timer is not None:
                self.node.destroy_timer(timer)
            self.update_subscription()
        self.oneshot = self.node.create_timer(0.0, fire)

    # -- input ---------------------------------------------------------------------------
    def on_image(self, msg) -> None:
        """Validate and convert, then leave the frame in the slot for the worker."""
        t_arrival = time.perf_counter()
        self.last_frame = time.monotonic()
        self.qos_problem = None
        self.stats.on_received()
        frame, dropped = messages.ingest(msg, self.compressed, self.max_pixels)
        if dropped is not None:
            self.drop(*dropped)
            return
        if self.max_age > 0:
            age = age_s(self.node, msg.header)
            if age > self.max_age:
                self.drop('too_old', f'dropped frame at {stamp_text(msg.header)}: '
                          f'{age:.3f}s old > max_age {self.max_age}s')
                return
        t_queued = time.perf_counter()
        with self.cv:
            if not self.active:
                return
            if self.slot is not None:
                self.stats.on_dropped('superseded')
            self.slot = Job(msg, frame, t_queued, t_queued - t_arrival)
            self.cv.notify()


def warn_incompatible_qos(log, side: str, event, topic: str = '') -> None:
    """Log an incompatible-QoS event (``side`` input or output) with a hint naming the
    mismatched policy.
    """
    kind = event.last_policy_kind
    policy = getattr(kind, 'name', str(kind)).replace('_QOS_POLICY', '').upper()
    what, reliability_hint = {
        'input': (f'a publisher on {topic} offers a QoS incompatible with this '
                  'subscription', 'set reliability:=auto or best_effort, or make the '
                  'publisher reliable'),
        'output': ('a subscriber of an output requests an incompatible QoS',
                   'the subscriber asks for reliable: set output_reliability:=reliable'),
    }[side]
    hint = reliability_hint if policy == 'RELIABILITY' else \
        'align the QoS of publisher and subscriber'
    log.warning(f'{what} ({policy}; {event.total_count} so far): {hint}')


def age_s(node: Node, header) -> float:
    """Seconds from the header's stamp to now on the node's clock (negative if ahead)."""
    return (node.get_clock().now().nanoseconds - messages.stamp_ns(header)) / 1e9


def _safe_stamp(msg) -> str:
    try:
        return stamp_text(msg.header)
    except Exception:  # noqa: BLE001 - a malformed message still gets a line
        return '?'

