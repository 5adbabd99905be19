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


class Engine:
    """Models, pub/sub, worker thread and diagnostics of one segmentation node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.log = node.get_logger()
        self.stats = FrameStats()
        self.pipeline: Pipeline | None = None
        self.tracker: Tracker | None = None
        self._last_warn: dict[str, float] = {}
        self._slot: tuple[Any, Any] | None = None
        self._cv = threading.Condition()
        self._running = False
        self._worker: threading.Thread | None = None
        self._sub = None
        self._sub_reliability: ReliabilityPolicy | None = None
        self._timers: list = []
        self._oneshot = None
        self._pubs: list = []
        self._large_data_hinted = False
        self._depth_subs: list = []
        self._by_topic: dict[str, Any] = {}  # 'semantic/labels' -> its publisher
        self._depth_cache = self._info_cache = None
        self.depth_on = False
        node.add_on_set_parameters_callback(self._on_set_parameters)

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
            elif self.tracker is not None and prm.name == 'instance.track_iou':
                self.tracker.iou_threshold = float(prm.value)
            elif self.tracker is not None and prm.name == 'instance.track_timeout':
                self.tracker.timeout_s = float(prm.value)
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
            self.tracker = (Tracker(p('instance.track_iou'), p('instance.track_timeout'))
                            if instance is not None and p('instance.tracking') else None)
        except (ModelLoadError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        except BackendError as exc:
            raise StartupError(f'semantic.backend: {exc}') from None
        if p('warmup'):
            t0 = time.perf_counter()
            try:
                self.pipeline.warm_up()
            except BackendError as exc:
                raise StartupError(f'semantic.backend: {exc}') from None
            self.log.info(f'warm-up done in {time.perf_counter() - t0:.2f}s')

    def release(self) -> None:
        """Drop the models (and tracks) and free cached GPU memory."""
        self.pipeline = None
        self.tracker = None
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

        def pub(msg_type, topic, qos=out_qos):
            made = node.create_publisher(msg_type, topic, qos, event_callbacks=events)
            self._pubs.append(made)
            self._by_topic[topic[2:] if topic.startswith('~/') else topic] = made
            return made
        sem, inst = self.pipeline.semantic, self.pipeline.instance
        self.pub_labels = self.pub_color = self.pub_dets = None
        self.pub_masks = self.pub_overlay = None
        if sem is not None:
            self.pub_labels = pub(Image, '~/semantic/labels')
            self.pub_color = pub(Image, '~/semantic/color')
            pub(LabelInfo, '~/semantic/label_info', LATCHED).publish(
                messages.label_info(header, sem.loaded.class_names, 0.0))
        if inst is not None:
            self.pub_dets = pub(Detection2DArray, '~/instances/detections')
            self.pub_masks = pub(Image, '~/instances/masks')
            self.pub_overlay = pub(Image, '~/instances/overlay')
            pub(LabelInfo, '~/instances/label_info', LATCHED).publish(
                messages.label_info(header, inst.loaded.class_names, inst.score_threshold))
        self.depth_on = bool(p('depth.enabled'))
        self.pub_det3d = self.pub_inst_points = self.pub_markers = self.pub_sem_points = None
        if self.depth_on:
            if inst is not None:
                self.pub_det3d = pub(Detection3DArray, '~/instances/detections_3d')
                self.pub_inst_points = pub(PointCloud2, '~/instances/points')
                self.pub_markers = pub(MarkerArray, '~/instances/markers')
            if sem is not None:
                self.pub_sem_points = pub(PointCloud2, '~/semantic/points')
        self.pub_latency = pub(Float64MultiArray, '~/latency')
        self.pub_timing = pub(Float64MultiArray, '~/timing')
        self.pub_diag = pub(DiagnosticArray, '/diagnostics', 10)

        self.compressed = p('input_transport') == 'compressed'
        base = node.resolve_topic_name('image')
        self.input_topic = base + '/compressed' if self.compressed else base
        self.max_pixels = p('max_image_pixels')
        self._mode = p('reliability')
        self._update_subscription()
        if self.depth_on:
            self._start_depth()
        if self._mode == 'auto':
            self._timers.append(node.create_timer(1.0, self._update_subscription))
        if p('diagnostics_period') > 0:
            self._timers.append(node.create_timer(p('diagnostics_period'),
                                                  self._publish_diagnostics))
        self._running = True
        if worker_thread:
            self._worker = threading.Thread(target=self.work, name='seg_ros_inference',
                                            daemon=True)
            self._worker.start()
        self.log.info(f'listening on {self.input_topic} (device {self.pipeline.device}, '
                      f'reliability {self._mode})')

    def stop(self) -> None:
        """Stop the worker; destroy the subscription, publishers and timers."""
        with self._cv:
            self._running = False
            self._slot = None
            self._cv.notify_all()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=10.0)
        self._worker = None
        for t in self._timers + ([self._oneshot] if self._oneshot is not None else []):
            self.node.destroy_timer(t)
        self._oneshot = None
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
        for sub in self._depth_subs:
            self.node.destroy_subscription(sub.sub)
        self._depth_subs, self._depth_cache, self._info_cache = [], None, None
        for pub in self._pubs:
            self.node.destroy_publisher(pub)
        self._timers, self._pubs, self._sub, self._sub_reliability = [], [], None, None
        self._by_topic = {}

    def _wanted_reliability(self) -> ReliabilityPolicy:
        if self._mode in _RELIABILITY:
            return _RELIABILITY[self._mode]
        infos = self.node.get_publishers_info_by_topic(self.input_topic)
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                         for i in infos):
            return ReliabilityPolicy.RELIABLE
        return ReliabilityPolicy.BEST_EFFORT  # none seen yet, or a best-effort publisher

    def _update_subscription(self) -> None:
        want = self._wanted_reliability()
        if self._sub is not None and want == self._sub_reliability:
            return
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=want)
        kwargs = {'incompatible_qos': self._on_input_incompatible}
        if self._mode == 'auto' and _HAS_MATCHED_EVENT:
            kwargs['matched'] = lambda _info: self._reevaluate_soon()
        events = SubscriptionEventCallbacks(**kwargs)
        msg_type = CompressedImage if self.compressed else Image
        self._sub = self.node.create_subscription(msg_type, self.input_topic, self._on_image,
                                                  qos, event_callbacks=events)
        self._sub_reliability = want
        self.log.info(f'subscribed to {self.input_topic} with reliability '
                      f'{want.name.lower()}')

    def _on_input_incompatible(self, event) -> None:
        self._warn_incompatible_qos('input', event)
        if self._mode == 'auto':
            self._reevaluate_soon()

    def _reevaluate_soon(self) -> None:
        """Re-check the publishers' QoS right away (a publisher matched or was refused),
        from a one-shot timer: the subscription is not replaced inside its own callback.
        """
        if self._oneshot is not None:
            return

        def fire() -> None:
            timer, self._oneshot = self._oneshot, None
            if timer is not None:
                self.node.destroy_timer(timer)
            if self._running:
                self._update_subscription()
        self._oneshot = self.node.create_timer(0.0, fire)

    def _warn_incompatible_qos(self, side: str, event) -> None:
        """Log an incompatible-QoS event with a hint naming the mismatched policy."""
        policy = _policy_name(event.last_policy_kind)
        what, reliability_hint = {
            'input': (f'a publisher on {self.input_topic} offers a QoS incompatible with this '
                      'subscription', 'set reliability:=auto or best_effort, or make the '
                      'publisher reliable'),
            'output': ('a subscriber of an output requests an incompatible QoS',
                       'the subscriber asks for reliable: set output_reliability:=reliable'),
        }[side]
        hint = reliability_hint if policy == 'RELIABILITY' else \
            'align the QoS of publisher and subscriber'
        self.log.warning(f'{what} ({policy}; {event.total_count} so far): {hint}')

    # -- input ------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        t_arrival = time.perf_counter()
        self.stats.on_received()
        try:
            if self.compressed:
                frame = decode_compressed(msg.format, msg.data, self.max_pixels)
            else:
                frame = messages.image_to_frame(msg, self.max_pixels)
        except ImageConversionError as exc:
            self.drop(exc.reason, f'dropped frame at {_stamp(msg.header)}: {exc}')
            return
        max_age = self.param('max_age')
        if max_age > 0:
            age = _age_s(self.node, msg.header)
            if age > max_age:
                self.drop('too_old', f'dropped frame at {_stamp(msg.header)}: {age:.3f}s old '
                          f'> max_age {max_age}s')
                return
        t_queued = time.perf_counter()
        with self._cv:
            if self._slot is not None:
                self.stats.on_dropped('superseded')
            self._slot = (msg, frame, t_queued, t_queued - t_arrival)
            self._cv.notify()

    def drop(self, reason: str, text: str) -> None:
        """Count a dropped frame and warn, at most once per reason every 5 s."""
        count = self.stats.on_dropped(reason)
        now = time.monotonic()
        if now - self._last_warn.get(reason, -1e9) >= WARN_PERIOD_S:
            self._last_warn[reason] = now
            self.log.warning(f'{text} ({reason}: {count} so far)')

    # -- inference thread -------------------------------------------------------------------
    def work(self, keep_going=lambda: True) -> None:
        """The inference loop: take the newest frame, process, publish; returns after
        :meth:`stop` or when ``keep_going()`` turns false (checked every 0.5 s).
        """
        while True:
            with self._cv:
                while self._slot is None and self._running and keep_going():
                    self._cv.wait(timeout=0.5)
                if not self._running or not keep_going():
                    return
                msg, frame, t_queued, convert_s = self._slot
                self._slot = None
            try:
                stages = {'convert_in': convert_s, 'wait': time.perf_counter() - t_queued}
                # Pair depth now, while the frame is fresh (again after inference if none).
                depth = self._find_depth(msg.header) if self.depth_on else None
                self._process(msg, frame, stages, depth)
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                self.drop('out_of_memory', f'frame at {_stamp(msg.header)}: CUDA out of '
                          f'memory, cache released: {str(exc)[:200]}')
            except Exception as exc:  # one bad frame never kills the worker
                self.drop('processing_error', f'frame at {_stamp(msg.header)} failed: '
                          f'{type(exc).__name__}: {str(exc)[:300]}')

    def _process(self, msg, frame, stages: dict[str, float], depth=None) -> None:
        t0 = time.perf_counter()
        pipeline = self.pipeline
        want_color = self.pub_color is not None and self.pub_color.get_subscription_count() > 0
        want_overlay = (self.pub_overlay is not None
                        and self.pub_overlay.get_subscription_count() > 0)
        header = msg.header
        res = pipeline(frame, want_color=want_color, want_overlay=want_overlay,
                       tracker=self.tracker, stamp_ns=messages.stamp_ns(header),
                       keep_image=self.depth_on)
        t_inferred = time.perf_counter()
        if res.instances is not None and res.instances.tracks_reset:
            self.log.info(f'stamp went backwards to {_stamp(header)}: tracks reset (ids '
                          'continue; a bag loop or simulation reset?)')
        out = self.outputs_2d(header, res)
        for topic, out_msg in out:
            self._by_topic[topic].publish(out_msg)
        if not self._large_data_hinted:
            self._hint_large_data(max((len(m.data) for _, m in out if isinstance(m, Image)),
                                      default=0))
        if self.depth_on:
            t3 = time.perf_counter()
            want_markers = self.pub_markers is not None and \
                self.pub_markers.get_subscription_count() > 0
            info = self._info_cache.last() if self._info_cache is not None else None
            for topic, out_msg in self.outputs_3d(header, res, depth or self._find_depth(header),
                                                  info, want_markers):
                self._by_topic[topic].publish(out_msg)
            res.timings['depth3d'] = time.perf_counter() - t3
        t_end = time.perf_counter()
        processing = t_end - t0
        age = _age_s(self.node, header)
        self.stats.on_processed(processing, age)
        self.stats.on_stage({**stages, **res.timings,
                             'publish': t_end - t_inferred - res.timings.get('depth3d', 0.0)})
        lat = Float64MultiArray()
        lat.layout.dim = [MultiArrayDimension(label=LATENCY_LABELS, size=2, stride=2)]
        lat.data = [processing, age]
        self.pub_latency.publish(lat)
        if self.pub_timing.get_subscription_count() > 0:
            timing = Float64MultiArray()
            timing.layout.dim = [MultiArrayDimension(label=TIMING_LABELS, size=3, stride=3)]
            timing.data = [messages.stamp_ns(header) / 1e9,
                           res.timings.get('semantic_forward', 0.0)
                           + res.timings.get('instance_forward', 0.0), processing]
            self.pub_timing.publish(timing)

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
    def _start_depth(self) -> None:
        """Subscribe to ``depth`` and ``camera_info`` through message_filters: each message is
        validated first (bad ones dropped with a reason), then kept in a Cache that colour
        frames are paired from by stamp (nearest within ``depth.slop``).
        """
        import message_filters

        rel = ReliabilityPolicy.RELIABLE if self._mode == 'reliable' else \
            ReliabilityPolicy.BEST_EFFORT  # best effort matches every publisher
        qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=rel)
        node = self.node
        depth_sub = message_filters.Subscriber(node, Image, 'depth', qos_profile=qos)
        info_sub = message_filters.Subscriber(node, CameraInfo, 'camera_info', qos_profile=qos)
        self._depth_subs = [depth_sub, info_sub]
        self._depth_cache = _LockedCache(_Checked(depth_sub, self._check_depth),
                                         cache_size=DEPTH_CACHE)
        self._info_cache = _LockedCache(_Checked(info_sub, self._check_info), cache_size=1)
        self.depth_topics = (node.resolve_topic_name('depth'),
                             node.resolve_topic_name('camera_info'))
        self.log.info(f'3D on: depth from {self.depth_topics[0]}, intrinsics from '
                      f'{self.depth_topics[1]}')

    def _check_depth(self, msg) -> bool:
        try:
            _check_stamp(msg.header, 'depth')
            geometry.depth_array(msg.encoding, msg.height, msg.width, msg.step,
                                 msg.is_bigendian, msg.data, self.param('max_image_pixels'))
        except GeometryError as exc:
            self.drop(exc.reason, f'dropped depth image at {_stamp(msg.header)}: {exc}')
            return False
        return True

    def _check_info(self, msg) -> bool:
        try:
            _check_stamp(msg.header, 'camera_info')
            geometry.intrinsics_from(msg.k, msg.p)
        except GeometryError as exc:
            self.drop(exc.reason, f'dropped camera_info at {_stamp(msg.header)}: {exc}')
            return False
        return True

    def _find_depth(self, header: Header):
        """The cached depth image nearest in stamp to ``header`` within ``depth.slop``."""
        cache = self._depth_cache
        if cache is None:
            return None
        t = messages.stamp_ns(header)
        slop = int(round(self.param('depth.slop') * 1e9))
        found = cache.interval_ns(max(0, t - slop), t + slop)
        if not found:
            return None
        return min(found, key=lambda m: abs(messages.stamp_ns(m.header) - t))

    def outputs_3d(self, header: Header, res, depth_msg, info,
                   want_markers: bool = False) -> list[tuple[str, Any]]:
        """The 3D messages of one frame from its paired depth and camera_info, as (topic
        relative to the node, message); none, counted and warned about, when they cannot be
        made (no_camera_info, no_depth, depth_not_registered, bad_camera_info).
        """
        where = f'frame at {_stamp(header)}'
        topics = getattr(self, 'depth_topics', ('depth', 'camera_info'))
        if info is None:
            self.drop('no_camera_info', f'{where}: no 3D outputs, no camera_info received yet '
                      f'on {topics[1]} (2D outputs continue)')
            return []
        if depth_msg is None:
            self.drop('no_depth', f'{where}: no 3D outputs, no depth image on {topics[0]} '
                      f'within depth.slop={self.param("depth.slop")}s of its stamp (2D '
                      'outputs continue)')
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
            self.drop(exc.reason, f'{where}: no 3D outputs: {exc}')
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
        snap = self.stats.snapshot()
        pipeline = self.pipeline
        models = []
        if pipeline is not None and pipeline.semantic is not None:
            models.append(f'semantic={pipeline.semantic.loaded.name}')
        if pipeline is not None and pipeline.instance is not None:
            models.append(f'instance={pipeline.instance.loaded.name}')
        drops = snap.pop('drops')
        status = DiagnosticStatus()
        status.name = f'{self.node.get_fully_qualified_name()}: segmentation'
        status.hardware_id = str(pipeline.device) if pipeline is not None else 'none'
        errors = sum(v for k, v in drops.items() if k != 'superseded')
        status.level = DiagnosticStatus.OK if not errors else DiagnosticStatus.WARN
        status.message = (f'{snap["processed_rate_hz"]:.1f} Hz processed, '
                          f'{snap["input_rate_hz"]:.1f} Hz in')
        values = {'device': status.hardware_id, 'model': ' '.join(models),
                  'input_topic': getattr(self, 'input_topic', '')}
        values.update({k: f'{v:.6g}' if isinstance(v, float) else str(v)
                       for k, v in snap.items()})
        values.update({f'drops.{k}': str(v) for k, v in sorted(drops.items())})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.node.get_clock().now().to_msg()
        arr.status = [status]
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
