"""The ROS side of segmentation, shared by the plain and the lifecycle node.

:class:`Engine` is bound to a node whose parameters are declared (:func:`declare`). It
loads the models (:meth:`Engine.load`), starts and stops the ROS interfaces
(:meth:`Engine.start` / :meth:`Engine.stop`) and releases the models
(:meth:`Engine.release`). The image callback only validates and converts, then puts the
frame into a one-slot mailbox (newest wins, superseded frames are counted); one inference
loop (:meth:`Engine.work`, in a worker thread or in the caller's thread) runs the pure
pipeline and publishes. Inference never runs on the executor's thread.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import os
import threading
import time
from typing import Any

import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult

try:  # Iron and later
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble: the same classes under their old module name (rclpy#1058)
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo
from visualization_msgs.msg import MarkerArray

from seg_ros.core import backends, geometry
from seg_ros.core.backends import BackendError
from seg_ros.core.geometry import GeometryError
from seg_ros.core.imaging import ImageConversionError, decode_compressed
from seg_ros.core.instances import InstanceSegmenter
from seg_ros.core.models import ModelLoadError, load_instance_model, load_semantic_model
from seg_ros.core.pipeline import Pipeline, resolve_device
from seg_ros.core.semantic import SemanticSegmenter
from seg_ros.core.stats import FrameStats
from seg_ros.core.tracking import Tracker
from seg_ros.ros import messages
from seg_ros.ros.params import PARAMS, names, validate, validate_together

_ROS_TYPES = {
    'bool': ParameterType.PARAMETER_BOOL,
    'int': ParameterType.PARAMETER_INTEGER,
    'double': ParameterType.PARAMETER_DOUBLE,
    'string': ParameterType.PARAMETER_STRING,
    'string_array': ParameterType.PARAMETER_STRING_ARRAY,
}
# Subscription "matched" events exist from Iron on; Humble falls back to the 1 s poll.
_HAS_MATCHED_EVENT = 'matched' in inspect.signature(SubscriptionEventCallbacks).parameters
_RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
                'best_effort': ReliabilityPolicy.BEST_EFFORT}

LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
WARN_PERIOD_S = 5.0
#: depth images kept for pairing with colour frames (1 s at 30 Hz; the lookup happens when
#: the inference thread takes the frame, and again after inference if none matched yet)
DEPTH_CACHE = 30
LATENCY_LABELS = 'processing_s,stamp_to_publish_s'
TIMING_LABELS = 'stamp_s,forward_s,processing_s'
FASTDDS_SHM_SEGMENT = 512 * 1024  # Fast DDS's default shared-memory segment (bytes)


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, model cannot load): one clear line."""


def declare(node: Node) -> None:
    """Declare every parameter of the table with its descriptor and a value.

    Every parameter has a value, string arrays included (an empty list), so that
    GetParameters / ``ros2 param dump`` answer for every declared name. Values given at
    start-up are validated first, so a refusal is one sentence of ours. Validation of later
    changes runs in the :class:`Engine`'s on-set callback, so create the engine first.
    Overrides that name no declared parameter are warned about (:func:`warn_unknown`).

    Raises:
        StartupError: a value given at start-up is refused (the reason says why).
    """
    overrides = _overrides(node)
    for spec in PARAMS:
        given = overrides.get(spec.name)
        if given is not None and given.type_ != Parameter.Type.NOT_SET:
            err = validate(spec.name, given.value)
            if err:
                raise StartupError(err)
        try:
            _declare_one(node, spec)
        except Exception as exc:  # e.g. a type mismatch rclpy found first
            raise StartupError(f'{spec.name}: {_exception_reason(exc)}') from None
    warn_unknown(node, overrides)


def _declare_one(node: Node, spec) -> None:
    desc = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type],
                               description=spec.description, read_only=spec.read_only)
    if spec.type != 'string_array':
        node.declare_parameter(spec.name, spec.default, desc)
        return
    # rclpy infers an empty list as a byte array, so declare the type, give the empty list
    # (when nothing overrides it) while still writable, then apply the real descriptor.
    writable = ParameterDescriptor(name=spec.name, type=desc.type,
                                   description=spec.description, read_only=False)
    node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, writable)
    if node.get_parameter_or(spec.name).type_ == Parameter.Type.NOT_SET:
        node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY,
                                       list(spec.default))])
    if spec.read_only:
        node.set_descriptor(spec.name, desc)


def _overrides(node: Node) -> dict[str, Parameter]:
    """The parameter values given to this node at start-up (command line, params files)."""
    return dict(getattr(node, '_parameter_overrides', {}) or {})


def _exception_reason(exc: Exception) -> str:
    """The reason in an rclpy exception, without its boilerplate and repeated name."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.split('Reason: ', 1)[-1]


def warn_unknown(node: Node, overrides: dict[str, Parameter] | None = None) -> list[str]:
    """Warn once for every start-up override that names no declared parameter, with the
    closest declared name (``-p devcie:=cpu`` -> "did you mean device?"). Returns them.
    """
    overrides = _overrides(node) if overrides is None else overrides
    declared = [spec.name for spec in PARAMS]
    unknown = []
    for name in sorted(overrides):
        if node.has_parameter(name) or name.startswith('qos_overrides.'):
            continue
        unknown.append(name)
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
        hint = f'; did you mean {close[0]}?' if close else \
            ' (see ros2 param list, or config/segment.yaml)'
        node.get_logger().warning(f'unknown parameter {name!r} ignored: this node declares no '
                                  f'such parameter{hint}')
    return unknown


class Camera:
    """One camera of the node: its input, outputs, mailbox, tracker and counters.

    The single-camera node has one camera named ``''`` (topics ``image``,
    ``~/semantic/labels``, ...); with ``cameras: [front, ...]`` each has its own
    (``front/image``, ``~/front/semantic/labels``, ...).
    """

    def __init__(self, name: str = '') -> None:
        self.name = name
        self.prefix = f'{name}/' if name else ''
        self.stats = FrameStats()
        self.tracker: Tracker | None = None
        #: the newest valid frame waiting for the model: (msg, frame, t_queued, convert_s)
        self.slot: tuple | None = None
        self.sub = None
        self.sub_reliability: ReliabilityPolicy | None = None
        self.input_topic = ''
        self.pubs: dict[str, Any] = {}  # 'semantic/labels' -> its publisher
        self.depth_subs: list = []
        self.depth_cache = self.info_cache = None
        self.depth_topics = ('depth', 'camera_info')
        self.last_warn: dict[str, float] = {}
        self.oneshot = None
        self.batched = 0  # frames that shared their forward pass with other cameras' frames

    def wants(self, topic: str) -> bool:
        """Whether output ``topic`` (relative, e.g. 'semantic/color') has a subscriber."""
        pub = self.pubs.get(topic)
        return pub is not None and pub.get_subscription_count() > 0


class Engine:
    """Models, pub/sub, worker thread and diagnostics of one segmentation node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.log = node.get_logger()
        self.pipeline: Pipeline | None = None
        self.cameras: list[Camera] = [Camera()]
        self.max_batch = 1
        self._cv = threading.Condition()
        self._running = False
        self._worker: threading.Thread | None = None
        self._timers: list = []
        self._pubs: list = []
        self._shared: dict[str, Any] = {}  # label_info, diagnostics
        self._large_data_hinted = False
        self.depth_on = False
        node.add_on_set_parameters_callback(self._on_set_parameters)

    # The first (in a single-camera node the only) camera: what segment_bag drives.
    @property
    def stats(self) -> FrameStats:
        return self.cameras[0].stats

    @property
    def tracker(self) -> Tracker | None:
        return self.cameras[0].tracker

    @property
    def depth_topics(self) -> tuple[str, str]:
        return self.cameras[0].depth_topics

    # -- parameters -----------------------------------------------------------------------
    def param(self, name: str) -> Any:
        """A parameter's value (None when a string array was never set)."""
        try:
            return self.node.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate every parameter first (unknown ones pass), then apply the dynamic ones."""
        for prm in params:
            err = validate(prm.name, prm.value)
            if err:
                return SetParametersResult(successful=False, reason=err)
        merged = {n: self.param(n) for n in ('depth.min', 'depth.max')
                  if self.node.has_parameter(n)}
        merged.update({prm.name: prm.value for prm in params if prm.name in merged})
        err = validate_together(merged)
        if err:
            return SetParametersResult(successful=False, reason=err)
        inst = self.pipeline.instance if self.pipeline is not None else None
        for prm in params:
            if prm.name == 'instance.classes' and inst is not None:
                try:
                    inst.set_classes(names(prm.value))
                except ValueError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
        for prm in params:
            if inst is not None and prm.name == 'instance.score_threshold':
                inst.score_threshold = float(prm.value)
                inst.model.roi_heads.score_thresh = float(prm.value)
            elif inst is not None and prm.name == 'instance.mask_threshold':
                inst.mask_threshold = float(prm.value)
            for tracker in (c.tracker for c in self.cameras if c.tracker is not None):
                if prm.name == 'instance.track_iou':
                    tracker.iou_threshold = float(prm.value)
                elif prm.name == 'instance.track_timeout':
                    tracker.timeout_s = float(prm.value)
        return SetParametersResult(successful=True)

    # -- models ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load the enabled models on the chosen device and warm them up.

        Raises:
            StartupError: bad device, model or weights (one clear line).
        """
        p = self.param
        try:
            device = resolve_device(p('device'))
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        err = validate_together({'depth.min': p('depth.min'), 'depth.max': p('depth.max')})
        if err:
            raise StartupError(err)
        if p('depth.enabled'):
            _require_depth_tools()
        precision = p('precision')
        try:
            sem_backend = backends.resolve(p('semantic.backend'), device, precision)
        except BackendError as exc:
            raise StartupError(f'semantic.backend: {exc}') from None

        def torch_precision(what: str) -> str:
            if device.type != 'cuda' and precision != 'fp32':
                self.log.warning(f'precision={precision}: {what} on torch needs CUDA; running '
                                 f'fp32 on {device}')
                return 'fp32'
            return precision
        semantic = instance = None
        try:
            if p('semantic.enabled'):
                loaded = load_semantic_model(
                    p('semantic.model'), p('semantic.weights'), p('semantic.num_classes'),
                    names(p('semantic.class_names')), device)
                semantic = SemanticSegmenter(
                    loaded, device, p('semantic.input_size'),
                    torch_precision('semantic') if sem_backend == 'torch' else precision,
                    p('semantic.channels_last'), p('semantic.compile'), backend=sem_backend,
                    cache_dir=p('backend.cache_dir'), report=self.log.info)
                self._report_model('semantic', loaded)
                self.log.info(f'semantic backend: {semantic.backend}'
                              + (f' ({p("semantic.backend")})'
                                 if p('semantic.backend') == 'auto' else ''))
            if p('instance.enabled'):
                loaded = load_instance_model(
                    p('instance.model'), p('instance.weights'), p('instance.num_classes'),
                    names(p('instance.class_names')), device,
                    min_size=p('instance.min_size'), max_size=p('instance.max_size'),
                    score_threshold=p('instance.score_threshold'),
                    max_detections=p('instance.max_detections'))
                instance = InstanceSegmenter(
                    loaded, device, p('instance.score_threshold'),
                    p('instance.mask_threshold'), p('instance.max_detections'),
                    names(p('instance.classes')), torch_precision('instance'))
                self._report_model('instance', loaded)
            self.pipeline = Pipeline(device, semantic, instance)
            self.cameras = [Camera(n) for n in names(p('cameras'))] or [Camera()]
            self.max_batch = p('max_batch') or len(self.cameras)
            for cam in self.cameras:
                cam.tracker = (Tracker(p('instance.track_iou'), p('instance.track_timeout'))
                               if instance is not None and p('instance.tracking') else None)
        except (ModelLoadError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        except BackendError as exc:
            raise StartupError(f'semantic.backend: {exc}') from None
        if p('warmup'):
            t0 = time.perf_counter()
            try:
                self.pipeline.warm_up(keep_image=bool(p('depth.enabled')))
            except BackendError as exc:
                raise StartupError(f'semantic.backend: {exc}') from None
            self.log.info(f'warm-up done in {time.perf_counter() - t0:.2f}s')

    def release(self) -> None:
        """Drop the models (and tracks) and free cached GPU memory."""
        self.pipeline = None
        for cam in self.cameras:
            cam.tracker = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _report_model(self, what: str, loaded) -> None:
        msg = f'{what}: {loaded.name}, {loaded.num_classes} classes, {loaded.source}'
        if loaded.random_init:
            self.log.warning(msg + ' -- RANDOM WEIGHTS: outputs are meaningless')
        else:
            self.log.info(msg)

    # -- ROS interfaces -------------------------------------------------------------------
    def start(self, worker_thread: bool = True) -> None:
        """Create publishers, the subscription, timers and the inference worker.

        Args:
            worker_thread: run inference in a new thread; with False the caller runs
                :meth:`work` itself (segment_node does, from the process's main thread,
                where PyTorch's CPU kernels ran ~12% faster than in a secondary thread
                here).
        """
        assert self.pipeline is not None, 'load() first'
        node, p = self.node, self.param
        out_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=_RELIABILITY[p('output_reliability')])
        events = PublisherEventCallbacks(
            incompatible_qos=functools.partial(self._warn_incompatible_qos, 'output'))
        header = Header()
        header.stamp = node.get_clock().now().to_msg()

        def make(msg_type, topic, qos=out_qos):
            made = node.create_publisher(msg_type, topic, qos, event_callbacks=events)
            self._pubs.append(made)
            return made
        sem, inst = self.pipeline.semantic, self.pipeline.instance
        # Shared by every camera: the latched class maps and /diagnostics.
        if sem is not None:
            make(LabelInfo, '~/semantic/label_info', LATCHED).publish(
                messages.label_info(header, sem.loaded.class_names, 0.0))
        if inst is not None:
            make(LabelInfo, '~/instances/label_info', LATCHED).publish(
                messages.label_info(header, inst.loaded.class_names, inst.score_threshold))
        self.pub_diag = make(DiagnosticArray, '/diagnostics', 10)
        self.depth_on = bool(p('depth.enabled'))
        outputs: list[tuple[type, str]] = []
        if sem is not None:
            outputs += [(Image, 'semantic/labels'), (Image, 'semantic/color')]
        if inst is not None:
            outputs += [(Detection2DArray, 'instances/detections'),
                        (Image, 'instances/masks'), (Image, 'instances/overlay')]
        if self.depth_on and inst is not None:
            outputs += [(Detection3DArray, 'instances/detections_3d'),
                        (PointCloud2, 'instances/points'), (MarkerArray, 'instances/markers')]
        if self.depth_on and sem is not None:
            outputs += [(PointCloud2, 'semantic/points')]
        outputs += [(Float64MultiArray, 'latency'), (Float64MultiArray, 'timing')]

        self.compressed = p('input_transport') == 'compressed'
        self.max_pixels = p('max_image_pixels')
        self._mode = p('reliability')
        for cam in self.cameras:
            cam.pubs = {topic: make(msg_type, f'~/{cam.prefix}{topic}')
                        for msg_type, topic in outputs}
            base = node.resolve_topic_name(cam.prefix + 'image')
            cam.input_topic = base + '/compressed' if self.compressed else base
            self._update_subscription(cam)
            if self.depth_on:
                self._start_depth(cam)
        if self._mode == 'auto':
            self._timers.append(node.create_timer(1.0, self._update_subscriptions))
        if p('diagnostics_period') > 0:
            self._timers.append(node.create_timer(p('diagnostics_period'),
                                                  self._publish_diagnostics))
        self._running = True
        if worker_thread:
            self._worker = threading.Thread(target=self.work, name='seg_ros_inference',
                                            daemon=True)
            self._worker.start()
        batching = (f', {len(self.cameras)} cameras, batches of up to {self.max_batch}'
                    if self.cameras[0].name else '')
        self.log.info(f'listening on {", ".join(c.input_topic for c in self.cameras)} (device '
                      f'{self.pipeline.device}, reliability {self._mode}{batching})')

    def stop(self) -> None:
        """Stop the worker; destroy the subscriptions, publishers and timers."""
        with self._cv:
            self._running = False
            for cam in self.cameras:
                cam.slot = None
            self._cv.notify_all()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=10.0)
        self._worker = None
        oneshots = [c.oneshot for c in self.cameras if c.oneshot is not None]
        for t in self._timers + oneshots:
            self.node.destroy_timer(t)
        for cam in self.cameras:
            cam.oneshot = None
            if cam.sub is not None:
                self.node.destroy_subscription(cam.sub)
            for sub in cam.depth_subs:
                self.node.destroy_subscription(sub.sub)
            cam.depth_subs, cam.depth_cache, cam.info_cache = [], None, None
            cam.sub, cam.sub_reliability, cam.pubs = None, None, {}
        for pub in self._pubs:
            self.node.destroy_publisher(pub)
        self._timers, self._pubs = [], []

    def _wanted_reliability(self, cam: Camera) -> ReliabilityPolicy:
        if self._mode in _RELIABILITY:
            return _RELIABILITY[self._mode]
        infos = self.node.get_publishers_info_by_topic(cam.input_topic)
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                         for i in infos):
            return ReliabilityPolicy.RELIABLE
        return ReliabilityPolicy.BEST_EFFORT  # none seen yet, or a best-effort publisher

    def _update_subscriptions(self) -> None:
        for cam in self.cameras:
            self._update_subscription(cam)

    def _update_subscription(self, cam: Camera) -> None:
        want = self._wanted_reliability(cam)
        if cam.sub is not None and want == cam.sub_reliability:
            return
        if cam.sub is not None:
            self.node.destroy_subscription(cam.sub)
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=want)
        kwargs = {'incompatible_qos': functools.partial(self._on_input_incompatible, cam)}
        if self._mode == 'auto' and _HAS_MATCHED_EVENT:
            kwargs['matched'] = lambda _info: self._reevaluate_soon(cam)
        events = SubscriptionEventCallbacks(**kwargs)
        msg_type = CompressedImage if self.compressed else Image
        cam.sub = self.node.create_subscription(
            msg_type, cam.input_topic, functools.partial(self._on_image, cam), qos,
            event_callbacks=events)
        cam.sub_reliability = want
        self.log.info(f'subscribed to {cam.input_topic} with reliability '
                      f'{want.name.lower()}')

    def _on_input_incompatible(self, cam: Camera, event) -> None:
        self._warn_incompatible_qos('input', event, cam)
        if self._mode == 'auto':
            self._reevaluate_soon(cam)

    def _reevaluate_soon(self, cam: Camera) -> None:
        """Re-check the publishers' QoS right away (a publisher matched or was refused),
        from a one-shot timer: the subscription is not replaced inside its own callback.
        """
        if cam.oneshot is not None:
            return

        def fire() -> None:
            timer, cam.oneshot = cam.oneshot, None
            if timer is not None:
                self.node.destroy_timer(timer)
            if self._running:
                self._update_subscription(cam)
        cam.oneshot = self.node.create_timer(0.0, fire)

    def _warn_incompatible_qos(self, side: str, event, cam: Camera | None = None) -> None:
        """Log an incompatible-QoS event with a hint naming the mismatched policy."""
        policy = _policy_name(event.last_policy_kind)
        topic = cam.input_topic if cam is not None else ''
        what, reliability_hint = {
            'input': (f'a publisher on {topic} offers a QoS incompatible with this '
                      'subscription', 'set reliability:=auto or best_effort, or make the '
                      'publisher reliable'),
            'output': ('a subscriber of an output requests an incompatible QoS',
                       'the subscriber asks for reliable: set output_reliability:=reliable'),
        }[side]
        hint = reliability_hint if policy == 'RELIABILITY' else \
            'align the QoS of publisher and subscriber'
        self.log.warning(f'{what} ({policy}; {event.total_count} so far): {hint}')

    # -- input ------------------------------------------------------------------------------
    def _on_image(self, cam: Camera, msg) -> None:
        t_arrival = time.perf_counter()
        cam.stats.on_received()
        try:
            if self.compressed:
                frame = decode_compressed(msg.format, msg.data, self.max_pixels)
            else:
                frame = messages.image_to_frame(msg, self.max_pixels)
        except ImageConversionError as exc:
            self.drop(exc.reason, f'dropped frame at {_stamp(msg.header)}: {exc}', cam)
            return
        max_age = self.param('max_age')
        if max_age > 0:
            age = _age_s(self.node, msg.header)
            if age > max_age:
                self.drop('too_old', f'dropped frame at {_stamp(msg.header)}: {age:.3f}s old '
                          f'> max_age {max_age}s', cam)
                return
        t_queued = time.perf_counter()
        with self._cv:
            if cam.slot is not None:
                cam.stats.on_dropped('superseded')
            cam.slot = (msg, frame, t_queued, t_queued - t_arrival)
            self._cv.notify()

    def drop(self, reason: str, text: str, cam: Camera | None = None) -> None:
        """Count a dropped frame (on ``cam``, default the first camera) and warn, at most
        once per camera and reason every 5 s.
        """
        cam = cam or self.cameras[0]
        count = cam.stats.on_dropped(reason)
        now = time.monotonic()
        if now - cam.last_warn.get(reason, -1e9) >= WARN_PERIOD_S:
            cam.last_warn[reason] = now
            where = f'camera {cam.name}: ' if cam.name else ''
            self.log.warning(f'{where}{text} ({reason}: {count} so far)')

    # -- inference thread -------------------------------------------------------------------
    def _take(self) -> list[tuple[Camera, tuple]]:
        """The frames to run next (caller holds the lock): every camera's waiting frame,
        longest-waiting first, at most ``max_batch`` (the rest wait one more round, so
        with fewer slots than cameras every camera still comes in turn).
        """
        waiting = sorted((c for c in self.cameras if c.slot is not None),
                         key=lambda c: c.slot[2])
        jobs = []
        for cam in waiting[:self.max_batch]:
            jobs.append((cam, cam.slot))
            cam.slot = None
        return jobs

    def work(self, keep_going=lambda: True) -> None:
        """The inference loop: take the newest frame of every camera that has one, run
        them (batched by size), publish; returns after :meth:`stop` or when
        ``keep_going()`` turns false (checked every 0.5 s).
        """
        while True:
            with self._cv:
                while (not any(c.slot is not None for c in self.cameras) and self._running
                       and keep_going()):
                    self._cv.wait(timeout=0.5)
                if not self._running or not keep_going():
                    return
                jobs = self._take()
            t_taken = time.perf_counter()
            try:
                self._process(jobs, t_taken)
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                for cam, (msg, *_rest) in jobs:
                    self.drop('out_of_memory', f'frame at {_stamp(msg.header)}: CUDA out of '
                              f'memory, cache released: {str(exc)[:200]}', cam)
            except Exception as exc:  # one bad batch never kills the worker
                if len(jobs) > 1:  # find the culprit: the others still get their answers
                    for job in jobs:
                        self._process_alone(job, t_taken)
                    continue
                cam, (msg, *_rest) = jobs[0]
                self.drop('processing_error', f'frame at {_stamp(msg.header)} failed: '
                          f'{type(exc).__name__}: {str(exc)[:300]}', cam)

    def _process_alone(self, job, t_taken: float) -> None:
        cam, (msg, *_rest) = job
        try:
            self._process([job], t_taken)
        except Exception as exc:
            self.drop('processing_error', f'frame at {_stamp(msg.header)} failed: '
                      f'{type(exc).__name__}: {str(exc)[:300]}', cam)

    def _process(self, jobs: list[tuple[Camera, tuple]], t_taken: float) -> None:
        """Run the frames of ``jobs`` (one per camera) through the models, batched by
        size, and publish every camera's outputs.
        """
        t0 = time.perf_counter()
        cams = [cam for cam, _ in jobs]
        msgs = [job[0] for _, job in jobs]
        # Pair depth now, while the frames are fresh (again after inference if none).
        depths = [self._find_depth(m.header, c) if self.depth_on else None
                  for c, m in zip(cams, msgs, strict=True)]
        results = self.pipeline.run_many(
            [job[1] for _, job in jobs], [c.wants('semantic/color') for c in cams],
            [c.wants('instances/overlay') for c in cams], [c.tracker for c in cams],
            [messages.stamp_ns(m.header) for m in msgs], keep_image=self.depth_on,
            max_batch=self.max_batch)
        t_inferred = time.perf_counter()
        for job, res, depth in zip(jobs, results, depths, strict=True):
            try:
                self._publish(job, res, depth, t_taken, t_inferred - t0)
            except Exception as exc:  # this camera's frame only: the others still publish
                self.drop('processing_error', f'frame at {_stamp(job[1][0].header)} failed: '
                          f'{type(exc).__name__}: {str(exc)[:300]}', job[0])

    def _publish(self, job, res, depth, t_taken: float, inference_s: float) -> None:
        """One camera's outputs of one frame, its latency, counters and stages."""
        cam, (msg, _frame, t_queued, convert_s) = job
        t1 = time.perf_counter()
        header = msg.header
        if res.instances is not None and res.instances.tracks_reset:
            where = f'camera {cam.name}: ' if cam.name else ''
            self.log.info(f'{where}stamp went backwards to {_stamp(header)}: tracks reset '
                          '(ids continue; a bag loop or simulation reset?)')
        out = self.outputs_2d(header, res)
        for topic, out_msg in out:
            cam.pubs[topic].publish(out_msg)
        if not self._large_data_hinted:
            self._hint_large_data(max((len(m.data) for _, m in out
                                       if isinstance(m, Image)), default=0))
        if self.depth_on:
            t3 = time.perf_counter()
            info = cam.info_cache.last() if cam.info_cache is not None else None
            for topic, out_msg in self.outputs_3d(
                    header, res, depth or self._find_depth(header, cam), info,
                    cam.wants('instances/markers'), cam):
                cam.pubs[topic].publish(out_msg)
            res.timings['depth3d'] = time.perf_counter() - t3
        t_end = time.perf_counter()
        # this frame's processing: the shared batch, then its own publishing
        processing = inference_s + (t_end - t1)
        age = _age_s(self.node, header)
        cam.stats.on_processed(processing, age)
        if res.batch_size > 1:
            cam.batched += 1
        cam.stats.on_stage({'convert_in': convert_s, 'wait': t_taken - t_queued,
                            **res.timings, 'publish': t_end - t1
                            - res.timings.get('depth3d', 0.0)})
        lat = Float64MultiArray()
        lat.layout.dim = [MultiArrayDimension(label=LATENCY_LABELS, size=2, stride=2)]
        lat.data = [processing, age]
        cam.pubs['latency'].publish(lat)
        if cam.wants('timing'):
            timing = Float64MultiArray()
            timing.layout.dim = [MultiArrayDimension(label=TIMING_LABELS, size=3,
                                                     stride=3)]
            timing.data = [messages.stamp_ns(header) / 1e9,
                           res.timings.get('semantic_forward', 0.0)
                           + res.timings.get('instance_forward', 0.0), processing]
            cam.pubs['timing'].publish(timing)

    def outputs_2d(self, header: Header, res) -> list[tuple[str, Any]]:
        """The 2D messages of one frame's result, as (topic relative to the node, message),
        in publishing order; colour and overlay only when the result has them.
        """
        pipeline = self.pipeline
        out: list[tuple[str, Any]] = []
        if res.semantic is not None:
            out.append(('semantic/labels', messages.array_to_image(
                res.semantic.labels, pipeline.semantic.label_encoding, header)))
            if res.semantic.color is not None:
                out.append(('semantic/color', messages.array_to_image(
                    res.semantic.color, 'rgb8', header)))
        if res.instances is not None:
            out.append(('instances/detections', messages.detections(
                header, res.instances, pipeline.instance.loaded.class_names)))
            out.append(('instances/masks', messages.array_to_image(
                res.instances.id_map, 'mono16', header)))
            if res.instances.overlay is not None:
                out.append(('instances/overlay', messages.array_to_image(
                    res.instances.overlay, 'rgb8', header)))
        return out

    def _hint_large_data(self, nbytes: int) -> None:
        """Once: outputs over Fast DDS's shared-memory segment travel as UDP fragments that
        default socket buffers drop, unless every process uses the LARGE_DATA transports.
        """
        if nbytes <= FASTDDS_SHM_SEGMENT or os.environ.get('FASTDDS_BUILTIN_TRANSPORTS'):
            return
        self._large_data_hinted = True
        self.log.info(
            f'hint: an output image is {nbytes / 1024:.0f} KB, above Fast DDS\'s 512 KB '
            'shared-memory segment; with the default transports such messages travel as UDP '
            'fragments that default socket buffers drop (late or lost frames). Set '
            'FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in every process (camera driver, this node, '
            'every consumer), or raise net.core.rmem_max / rmem_default (README: Large images '
            'and DDS)')

    # -- depth and 3D -------------------------------------------------------------------------
    def _start_depth(self, cam: Camera) -> None:
        """Subscribe to the camera's ``depth`` and ``camera_info`` through message_filters:
        each message is validated first (bad ones dropped with a reason), then kept in a
        Cache that colour frames are paired from by stamp (nearest within ``depth.slop``).
        """
        import message_filters

        rel = ReliabilityPolicy.RELIABLE if self._mode == 'reliable' else \
            ReliabilityPolicy.BEST_EFFORT  # best effort matches every publisher
        qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=rel)
        node = self.node
        depth_sub = message_filters.Subscriber(node, Image, cam.prefix + 'depth',
                                               qos_profile=qos)
        info_sub = message_filters.Subscriber(node, CameraInfo, cam.prefix + 'camera_info',
                                              qos_profile=qos)
        cam.depth_subs = [depth_sub, info_sub]
        cam.depth_cache = _LockedCache(
            _Checked(depth_sub, functools.partial(self._check_depth, cam=cam)),
            cache_size=DEPTH_CACHE)
        cam.info_cache = _LockedCache(
            _Checked(info_sub, functools.partial(self._check_info, cam=cam)), cache_size=1)
        cam.depth_topics = (node.resolve_topic_name(cam.prefix + 'depth'),
                            node.resolve_topic_name(cam.prefix + 'camera_info'))
        self.log.info(f'3D on: depth from {cam.depth_topics[0]}, intrinsics from '
                      f'{cam.depth_topics[1]}')

    def _check_depth(self, msg, cam: Camera | None = None) -> bool:
        try:
            _check_stamp(msg.header, 'depth')
            geometry.depth_array(msg.encoding, msg.height, msg.width, msg.step,
                                 msg.is_bigendian, msg.data, self.param('max_image_pixels'))
        except GeometryError as exc:
            self.drop(exc.reason, f'dropped depth image at {_stamp(msg.header)}: {exc}', cam)
            return False
        return True

    def _check_info(self, msg, cam: Camera | None = None) -> bool:
        try:
            _check_stamp(msg.header, 'camera_info')
            geometry.intrinsics_from(msg.k, msg.p)
        except GeometryError as exc:
            self.drop(exc.reason, f'dropped camera_info at {_stamp(msg.header)}: {exc}', cam)
            return False
        return True

    def _find_depth(self, header: Header, cam: Camera | None = None):
        """The camera's cached depth image nearest in stamp to ``header`` within
        ``depth.slop``.
        """
        cache = (cam or self.cameras[0]).depth_cache
        if cache is None:
            return None
        t = messages.stamp_ns(header)
        slop = int(round(self.param('depth.slop') * 1e9))
        found = cache.interval_ns(max(0, t - slop), t + slop)
        if not found:
            return None
        return min(found, key=lambda m: abs(messages.stamp_ns(m.header) - t))

    def outputs_3d(self, header: Header, res, depth_msg, info, want_markers: bool = False,
                   cam: Camera | None = None) -> list[tuple[str, Any]]:
        """The 3D messages of one frame from its paired depth and camera_info, as (topic
        relative to the node, message); none, counted and warned about, when they cannot be
        made (no_camera_info, no_depth, depth_not_registered, bad_camera_info).
        """
        where = f'frame at {_stamp(header)}'
        cam = cam or self.cameras[0]
        topics = cam.depth_topics
        if info is None:
            self.drop('no_camera_info', f'{where}: no 3D outputs, no camera_info received yet '
                      f'on {topics[1]} (2D outputs continue)', cam)
            return []
        if depth_msg is None:
            self.drop('no_depth', f'{where}: no 3D outputs, no depth image on {topics[0]} '
                      f'within depth.slop={self.param("depth.slop")}s of its stamp (2D '
                      'outputs continue)', cam)
            return []
        p = self.param
        try:
            hw = tuple(int(v) for v in res.image.shape[-2:])
            intr = geometry.intrinsics_from(info.k, info.p, info.width, info.height, hw)
            depth, scale = geometry.depth_array(
                depth_msg.encoding, depth_msg.height, depth_msg.width, depth_msg.step,
                depth_msg.is_bigendian, depth_msg.data, p('max_image_pixels'))
            geo = geometry.frame_3d(res, depth, scale, intr, p('depth.min'), p('depth.max'),
                                    p('depth.stride'))
        except GeometryError as exc:
            self.drop(exc.reason, f'{where}: no 3D outputs: {exc}', cam)
            return []
        out: list[tuple[str, Any]] = []
        if geo.instances is not None:
            dets = messages.detections_3d(header, res.instances, geo.instances,
                                          self.pipeline.instance.loaded.class_names,
                                          p('depth.min_points'))
            out.append(('instances/detections_3d', dets))
            out.append(('instances/points', messages.instance_cloud(header, geo.instances)))
            if want_markers:
                out.append(('instances/markers', messages.markers(header, dets)))
        if geo.semantic is not None:
            out.append(('semantic/points', messages.semantic_cloud(header, geo.semantic)))
        return out

    # -- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        """One status per camera (rates, latency, stage medians, drops by reason)."""
        pipeline = self.pipeline
        models = []
        if pipeline is not None and pipeline.semantic is not None:
            models.append(f'semantic={pipeline.semantic.loaded.name}')
        if pipeline is not None and pipeline.instance is not None:
            models.append(f'instance={pipeline.instance.loaded.name}')
        arr = DiagnosticArray()
        arr.header.stamp = self.node.get_clock().now().to_msg()
        for cam in self.cameras:
            snap = cam.stats.snapshot()
            drops = snap.pop('drops')
            status = DiagnosticStatus()
            status.name = f'{self.node.get_fully_qualified_name()}: segmentation' + (
                f' {cam.name}' if cam.name else '')
            status.hardware_id = str(pipeline.device) if pipeline is not None else 'none'
            errors = sum(v for k, v in drops.items() if k != 'superseded')
            status.level = DiagnosticStatus.OK if not errors else DiagnosticStatus.WARN
            status.message = (f'{snap["processed_rate_hz"]:.1f} Hz processed, '
                              f'{snap["input_rate_hz"]:.1f} Hz in')
            values = {'device': status.hardware_id, 'model': ' '.join(models),
                      'input_topic': cam.input_topic}
            if cam.name:
                values['camera'] = cam.name
                values['frames_batched'] = str(cam.batched)
            values.update({k: f'{v:.6g}' if isinstance(v, float) else str(v)
                           for k, v in snap.items()})
            values.update({f'drops.{k}': str(v) for k, v in sorted(drops.items())})
            status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
            arr.status.append(status)
        self.pub_diag.publish(arr)


def _policy_name(kind) -> str:
    return getattr(kind, 'name', str(kind)).replace('_QOS_POLICY', '').upper()


def _stamp(header: Header) -> str:
    return f'{header.stamp.sec}.{header.stamp.nanosec:09d}'


def _age_s(node: Node, header: Header) -> float:
    """Seconds from the header's stamp to now on the node's clock (negative if ahead)."""
    now = node.get_clock().now().nanoseconds
    return (now - messages.stamp_ns(header)) / 1e9


def _require_depth_tools() -> None:
    """depth.enabled needs message_filters and sensor_msgs_py (in every ROS distribution;
    here from ../shared via scripts/setup).
    """
    missing = []
    for module in ('message_filters', 'sensor_msgs_py'):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise StartupError(
            f'depth.enabled needs {" and ".join(missing)} (ROS packages message_filters, '
            'sensor_msgs_py): install them from your distribution (ros-$ROS_DISTRO-message-'
            'filters, ros-$ROS_DISTRO-sensor-msgs-py), or run scripts/setup beside ../shared')


def _check_stamp(header: Header, what: str) -> None:
    if header.stamp.sec < 0:
        raise GeometryError(f'bad_{what}', f'{what} stamp is negative')


class _Checked:
    """A message_filters stage that passes on only messages ``check`` accepts; anything it
    raises is caught (one hostile message never reaches the executor).
    """

    def __init__(self, source, check) -> None:
        import message_filters

        self._out = message_filters.SimpleFilter()
        self._check = check
        source.registerCallback(self._on)

    def registerCallback(self, cb, *args):  # noqa: N802 (message_filters' API)
        return self._out.registerCallback(cb, *args)

    def _on(self, msg) -> None:
        try:
            ok = self._check(msg)
        except Exception:  # a malformed message of an unexpected kind: drop it
            ok = False
        if ok:
            self._out.signalMessage(msg)


@functools.cache
def _locked_cache_class():
    import message_filters

    class LockedCache(message_filters.Cache):
        """message_filters.Cache, safe between the executor (adds) and the inference
        thread (lookups), with lookups in integer nanoseconds.
        """

        def __init__(self, f, cache_size=1) -> None:
            self._lock = threading.Lock()
            super().__init__(f, cache_size=cache_size)

        def add(self, msg) -> None:
            with self._lock:
                super().add(msg)

        def interval_ns(self, lo: int, hi: int) -> list:
            with self._lock:
                if not self.cache_msgs:
                    return []
                clock = self.cache_times[0].clock_type
                return self.getInterval(Time(nanoseconds=lo, clock_type=clock),
                                        Time(nanoseconds=hi, clock_type=clock))

        def last(self):
            with self._lock:
                return self.cache_msgs[-1] if self.cache_msgs else None
    return LockedCache


def _LockedCache(f, cache_size=1):  # noqa: N802 (a class, made when message_filters exists)
    return _locked_cache_class()(f, cache_size=cache_size)
