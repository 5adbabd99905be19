"""segment_node: camera images in, semantic labels / instance masks / detections out.

Thin ROS layer: parameters, QoS, pub/sub and one inference thread. The image callback
only validates the message and puts the frame into a one-slot mailbox (the newest frame
wins; superseded frames are counted); the worker thread runs the pure pipeline
(:mod:`seg_ros.core`) and publishes.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, LabelInfo

from seg_ros.core.imaging import ImageConversionError
from seg_ros.core.instances import InstanceSegmenter
from seg_ros.core.models import ModelLoadError, load_instance_model, load_semantic_model
from seg_ros.core.pipeline import Pipeline, resolve_device
from seg_ros.core.semantic import SemanticSegmenter
from seg_ros.ros import messages
from seg_ros.ros.params import PARAMS, names, validate

_ROS_TYPES = {
    'bool': ParameterType.PARAMETER_BOOL,
    'int': ParameterType.PARAMETER_INTEGER,
    'double': ParameterType.PARAMETER_DOUBLE,
    'string': ParameterType.PARAMETER_STRING,
    'string_array': ParameterType.PARAMETER_STRING_ARRAY,
}
_UNSET = {'string_array': Parameter.Type.STRING_ARRAY}

LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
OUTPUT_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                        reliability=ReliabilityPolicy.RELIABLE)
WARN_PERIOD_S = 5.0


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, model cannot load): one clear line."""


class SegmentNode(Node):
    """Semantic and instance segmentation of one camera stream."""

    def __init__(self, node_name: str = 'segmentation', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._slot: tuple[Image, Any] | None = None
        self._cv = threading.Condition()
        self._running = True
        self._worker: threading.Thread | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._declare_parameters()
        p = self._param
        self.drops: Counter[str] = Counter()
        self.processed = 0
        self._last_warn: dict[str, float] = {}
        self._precision_warned = False
        try:
            self.device = resolve_device(p('device'))
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        precision = p('precision')
        if self.device.type != 'cuda' and precision != 'fp32':
            self.get_logger().warning(
                f'precision={precision} needs CUDA; running fp32 on {self.device}')
            precision = 'fp32'
        semantic = instance = None
        try:
            if p('semantic.enabled'):
                loaded = load_semantic_model(
                    p('semantic.model'), p('semantic.weights'), p('semantic.num_classes'),
                    names(p('semantic.class_names')), self.device)
                semantic = SemanticSegmenter(loaded, self.device, p('semantic.input_size'),
                                             precision)
                self._report_model('semantic', loaded)
            if p('instance.enabled'):
                loaded = load_instance_model(
                    p('instance.model'), p('instance.weights'), p('instance.num_classes'),
                    names(p('instance.class_names')), self.device,
                    min_size=p('instance.min_size'), max_size=p('instance.max_size'),
                    score_threshold=p('instance.score_threshold'),
                    max_detections=p('instance.max_detections'))
                instance = InstanceSegmenter(
                    loaded, self.device, p('instance.score_threshold'),
                    p('instance.mask_threshold'), p('instance.max_detections'),
                    names(p('instance.classes')), precision)
                self._report_model('instance', loaded)
            self.pipeline = Pipeline(self.device, semantic, instance)
        except (ModelLoadError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        if p('warmup'):
            t0 = time.perf_counter()
            self.pipeline.warm_up()
            self.get_logger().info(f'warm-up done in {time.perf_counter() - t0:.2f}s')

        self.max_pixels = p('max_image_pixels')
        self._make_publishers()
        self._input_topic = self.resolve_topic_name('image')
        self._reliability_mode = p('reliability')
        self._sub = None
        self._sub_reliability: ReliabilityPolicy | None = None
        self._update_subscription()
        if self._reliability_mode == 'auto':
            self._qos_timer = self.create_timer(1.0, self._update_subscription)

        self._worker = threading.Thread(target=self._work, name='seg_ros_inference',
                                        daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'listening on {self._input_topic} (device {self.device}, reliability '
            f'{self._reliability_mode})')

    # -- parameters ---------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        for spec in PARAMS:
            desc = ParameterDescriptor(name=spec.name, type=_ROS_TYPES[spec.type],
                                       description=spec.description,
                                       read_only=spec.read_only)
            default = spec.default if spec.default is not None else _UNSET[spec.type]
            try:
                self.declare_parameter(spec.name, default, desc)
            except Exception as exc:  # InvalidParameterValueException, type mismatch
                raise StartupError(f'parameter {spec.name}: {exc}') from None

    def _param(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for prm in params:
            err = validate(prm.name, prm.value)
            if err:
                return SetParametersResult(successful=False, reason=err)
        pipeline = getattr(self, 'pipeline', None)
        if pipeline is not None and pipeline.instance is not None:
            for prm in params:
                if prm.name == 'instance.classes':
                    try:
                        pipeline.instance.set_classes(names(prm.value))
                    except ValueError as exc:
                        return SetParametersResult(successful=False, reason=str(exc))
            for prm in params:
                if prm.name == 'instance.score_threshold':
                    pipeline.instance.score_threshold = float(prm.value)
                    pipeline.instance.model.roi_heads.score_thresh = float(prm.value)
                elif prm.name == 'instance.mask_threshold':
                    pipeline.instance.mask_threshold = float(prm.value)
        return SetParametersResult(successful=True)

    def _report_model(self, what: str, loaded) -> None:
        msg = (f'{what}: {loaded.name}, {loaded.num_classes} classes, {loaded.source}')
        if loaded.random_init:
            self.get_logger().warning(msg + ' -- RANDOM WEIGHTS: outputs are meaningless')
        else:
            self.get_logger().info(msg)

    # -- pub/sub ------------------------------------------------------------------------
    def _make_publishers(self) -> None:
        header = Header()
        header.stamp = self.get_clock().now().to_msg()
        self.pub_labels = self.pub_color = self.pub_dets = self.pub_masks = None
        self.pub_overlay = None
        self._info_pubs = []
        sem, inst = self.pipeline.semantic, self.pipeline.instance
        if sem is not None:
            self.pub_labels = self.create_publisher(Image, '~/semantic/labels', OUTPUT_QOS)
            self.pub_color = self.create_publisher(Image, '~/semantic/color', OUTPUT_QOS)
            pub = self.create_publisher(LabelInfo, '~/semantic/label_info', LATCHED)
            pub.publish(messages.label_info(header, sem.loaded.class_names, 0.0))
            self._info_pubs.append(pub)
        if inst is not None:
            self.pub_dets = self.create_publisher(Detection2DArray, '~/instances/detections',
                                                  OUTPUT_QOS)
            self.pub_masks = self.create_publisher(Image, '~/instances/masks', OUTPUT_QOS)
            self.pub_overlay = self.create_publisher(Image, '~/instances/overlay', OUTPUT_QOS)
            pub = self.create_publisher(LabelInfo, '~/instances/label_info', LATCHED)
            pub.publish(messages.label_info(header, inst.loaded.class_names,
                                            inst.score_threshold))
            self._info_pubs.append(pub)

    def _wanted_reliability(self) -> ReliabilityPolicy:
        mode = self._reliability_mode
        if mode == 'reliable':
            return ReliabilityPolicy.RELIABLE
        if mode == 'best_effort':
            return ReliabilityPolicy.BEST_EFFORT
        infos = self.get_publishers_info_by_topic(self._input_topic)
        if infos and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                         for i in infos):
            return ReliabilityPolicy.RELIABLE
        return ReliabilityPolicy.BEST_EFFORT  # nothing seen yet, or a best-effort publisher

    def _update_subscription(self) -> None:
        want = self._wanted_reliability()
        if self._sub is not None and want == self._sub_reliability:
            return
        if self._sub is not None:
            self.destroy_subscription(self._sub)
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=want,
                         durability=qos_profile_sensor_data.durability)
        self._sub = self.create_subscription(Image, 'image', self._on_image, qos)
        self._sub_reliability = want
        self.get_logger().info(f'subscribed to {self._input_topic} with reliability '
                               f'{want.name.lower()}')

    def _on_image(self, msg: Image) -> None:
        try:
            frame = messages.image_to_frame(msg, self.max_pixels)
        except ImageConversionError as exc:
            self._drop(exc.reason, f'dropped frame at {_stamp(msg.header)}: {exc}')
            return
        with self._cv:
            if self._slot is not None:
                self.drops['superseded'] += 1
            self._slot = (msg, frame)
            self._cv.notify()

    def _drop(self, reason: str, text: str) -> None:
        self.drops[reason] += 1
        now = time.monotonic()
        if now - self._last_warn.get(reason, -1e9) >= WARN_PERIOD_S:
            self._last_warn[reason] = now
            self.get_logger().warning(f'{text} ({reason}: {self.drops[reason]} so far)')

    # -- inference thread ---------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while self._slot is None and self._running:
                    self._cv.wait(timeout=0.5)
                if not self._running:
                    return
                msg, frame = self._slot
                self._slot = None
            try:
                self._process(msg, frame)
            except Exception as exc:  # never let one frame kill the worker
                reason = 'processing_error'
                try:
                    import torch
                    if isinstance(exc, torch.cuda.OutOfMemoryError):
                        reason = 'out_of_memory'
                        torch.cuda.empty_cache()
                except Exception:
                    pass
                self._drop(reason, f'frame at {_stamp(msg.header)} failed: '
                           f'{type(exc).__name__}: {exc}')

    def _process(self, msg: Image, frame) -> None:
        want_color = self.pub_color is not None and self.pub_color.get_subscription_count() > 0
        want_overlay = (self.pub_overlay is not None
                        and self.pub_overlay.get_subscription_count() > 0)
        res = self.pipeline(frame, want_color=want_color, want_overlay=want_overlay)
        header = msg.header
        if res.semantic is not None:
            sem = self.pipeline.semantic
            self.pub_labels.publish(messages.array_to_image(res.semantic.labels,
                                                            sem.label_encoding, header))
            if res.semantic.color is not None:
                self.pub_color.publish(messages.array_to_image(res.semantic.color, 'rgb8',
                                                               header))
        if res.instances is not None:
            inst = self.pipeline.instance
            self.pub_dets.publish(messages.detections(header, res.instances,
                                                      inst.loaded.class_names))
            self.pub_masks.publish(messages.array_to_image(res.instances.id_map, 'mono16',
                                                           header))
            if res.instances.overlay is not None:
                self.pub_overlay.publish(messages.array_to_image(res.instances.overlay,
                                                                 'rgb8', header))
        self.processed += 1

    def destroy_node(self) -> None:
        """Stop the inference thread, then destroy the node."""
        with self._cv:
            self._running = False
            self._cv.notify_all()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def _stamp(header: Header) -> str:
    return f'{header.stamp.sec}.{header.stamp.nanosec:09d}'


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run seg_ros segment_node``."""
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentNode()
        rclpy.spin(node)
    except StartupError as exc:
        print(f'[segment_node] cannot start: {exc}', file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
