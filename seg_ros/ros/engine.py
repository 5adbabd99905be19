"""The ROS side of segmentation, shared by the plain and the lifecycle node: load, start/stop
and the worker loop.

The rooms around it, each with one job: :mod:`~seg_ros.ros.declare` (parameters and the
on-set gate that builds :class:`~seg_ros.core.config.settings.Settings` snapshots),
:mod:`~seg_ros.ros.camera` (per camera: subscriptions, QoS following, mailbox, counters),
:mod:`~seg_ros.core.spatial.pairing` (depth + camera_info),
:mod:`~seg_ros.core.inference.processor` (the frames' computation, ROS-free),
:mod:`~seg_ros.ros.outputs` (results -> messages) and
:mod:`~seg_ros.ros.diagnostics`.

One frame's way: ``Camera.on_image`` (executor thread: ``messages.ingest`` validates and
converts, slot) -> the worker takes every camera's waiting frame and one settings snapshot
-> ``FrameProcessor.process`` (models, ids, 3D: it pairs each frame through the camera's
``Pairing`` before and after inference, and looks the transform up in ``LiveTransforms``)
-> ``Outputs.frame`` builds the messages -> the camera's publishers. Inference never runs on the
executor's thread. Each start begins a new worker *generation*: a worker of an earlier one
that is still inside a forward pass when the node restarts publishes nothing and ends.
"""
from __future__ import annotations

import functools
import threading
import time

import torch
from diagnostic_msgs.msg import DiagnosticArray

try:  # Iron and later
    from rclpy.event_handler import PublisherEventCallbacks
except ImportError:  # Humble: the same classes under their old module name (rclpy#1058)
    from rclpy.qos_event import PublisherEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import LabelInfo

from seg_ros.core.config.settings import Settings
from seg_ros.core.inference.loading import LoadError, load_pipeline
from seg_ros.core.inference.pipeline import Pipeline
from seg_ros.core.inference.processor import FrameInput, FrameOutput, FrameProcessor, drop_text
from seg_ros.core.spatial.pairing import stamp_text
from seg_ros.ros import messages
from seg_ros.ros.camera import RELIABILITY, Camera, Job, age_s, warn_incompatible_qos
from seg_ros.ros.declare import (
    ParameterGate,
    StartupError,
    declare,
    require_depth_tools,
    settings_of,
)
from seg_ros.ros.diagnostics import diagnostics
from seg_ros.ros.outputs import (
    LATENCY,
    MARKERS,
    OVERLAY,
    SEMANTIC_COLOR,
    TIMING,
    Outputs,
    large_data_hint,
    latency_msg,
    output_topics,
    timing_msg,
)
from seg_ros.ros.transforms import LiveTransforms

__all__ = ['Engine', 'StartupError', 'declare']

LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Engine:
    """Models, cameras, worker thread and diagnostics of one segmentation node."""

    #: how long :meth:`stop` waits for a batch in progress before leaving it behind
    STOP_GRACE_S = 10.0

    def __init__(self, node: Node) -> None:
        self.node = node
        self.log = node.get_logger()
        self.pipeline: Pipeline | None = None
        self.processor: FrameProcessor | None = None
        self.outputs: Outputs | None = None
        self.settings: Settings | None = None
        self.cameras: list[Camera] = []
        self._cv = threading.Condition()
        self._running = False
        self._generation = 0
        self._worker: threading.Thread | None = None
        self._publish_lock = threading.Lock()  # publishing vs destroying the publishers
        self._busy = threading.Lock()  # one batch at a time, whatever the generation
        self._timers: list = []
        self._pubs: list = []
        self._large_data_hinted = False
        self.pub_diag = None
        self.tf = None  # LiveTransforms with depth.target_frame
        self.gate = ParameterGate(node, lambda: self.settings, self._check, self._accept)

    # -- parameters -----------------------------------------------------------------------
    def _check(self, settings: Settings) -> str | None:
        return self.processor.check(settings) if self.processor is not None else None

    def _accept(self, settings: Settings) -> None:
        """A change passed the gate: the worker takes it before its next batch."""
        self.settings = settings
        if self.processor is not None:
            self.processor.update(settings)
        for cam in self.cameras:
            cam.max_age = settings.max_age

    # -- models ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load the enabled models on the chosen device and warm them up.

        Raises:
            StartupError: bad device, model or weights (one clear line).
        """
        self.settings = settings_of(self.node)
        if self.settings.depth_enabled:
            require_depth_tools(self.settings.target_frame)
        try:
            self.pipeline = load_pipeline(self.settings, self.log.info, self.log.warning)
            self.processor = FrameProcessor(self.pipeline, self.settings,
                                            self.settings.cameras or ('',))
        except (LoadError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        self.outputs = Outputs(self.pipeline)
        self.cameras = [Camera(self.node, n, self._cv, self._warn_incompatible_qos)
                        for n in self.processor.cameras]

    def release(self) -> None:
        """Drop the models (and tracks) and free cached GPU memory."""
        self.pipeline = self.processor = self.outputs = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- start / stop ---------------------------------------------------------------------
    def start(self) -> None:
        """Create publishers, subscriptions, timers and a new inference worker."""
        assert self.processor is not None, 'load() first'
        node, s = self.node, self.settings
        out_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=RELIABILITY[s['output_reliability']])
        events = PublisherEventCallbacks(
            incompatible_qos=functools.partial(self._warn_incompatible_qos, 'output'))

        def make(msg_type, topic, qos=out_qos):
            made = node.create_publisher(msg_type, topic, qos, event_callbacks=events)
            self._pubs.append(made)
            return made
        header = Header()
        header.stamp = node.get_clock().now().to_msg()
        for topic, msg in self.outputs.label_infos(header, s):
            make(LabelInfo, f'~/{topic}', LATCHED).publish(msg)
        self.pub_diag = make(DiagnosticArray, '/diagnostics', 10)
        outputs = output_topics(self.pipeline.semantic is not None,
                                self.pipeline.instance is not None, s.depth_enabled)
        depth_qos = None
        if s.depth_enabled:  # best effort matches every publisher
            rel = ReliabilityPolicy.RELIABLE if s['reliability'] == 'reliable' else \
                ReliabilityPolicy.BEST_EFFORT
            depth_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=rel)
        if s.depth_enabled and s.target_frame:
            self.tf = LiveTransforms(node)
            self.log.info(f'3D outputs in {s.target_frame} (tf2 at each image\'s stamp)')
        for cam in self.cameras:
            cam.max_age = s.max_age
            cam.start(s, outputs, lambda t, n: node.create_publisher(
                t, n, out_qos, event_callbacks=events), depth_qos)
        if s['reliability'] == 'auto':
            self._timers.append(node.create_timer(1.0, self._update_subscriptions))
        self._timers.append(node.create_timer(1.0, self._watch_inputs))
        if s['diagnostics_period'] > 0:
            self._timers.append(node.create_timer(s['diagnostics_period'],
                                                  self._publish_diagnostics))
        with self._cv:
            self._running = True
            self._generation += 1
            gen = self._generation
        self._worker = threading.Thread(target=self._work, args=(gen,),
                                        name='seg_ros_inference', daemon=True)
        self._worker.start()
        batching = (f', {len(self.cameras)} cameras, batches of up to {s.max_batch}'
                    if self.cameras[0].name else '')
        self.log.info(f'listening on {", ".join(c.input_topic for c in self.cameras)} (device '
                      f'{self.pipeline.device}, reliability {s["reliability"]}{batching})')

    def halt(self, grace_s: float | None = None) -> bool:
        """Stop taking frames and end the worker's generation; wait up to ``grace_s`` for a
        batch in progress. Returns whether the worker has ended (one still inside a forward
        pass publishes nothing and ends after it).
        """
        with self._cv:
            self._running = False
            self._generation += 1
            for cam in self.cameras:
                cam.slot = None
            self._cv.notify_all()
        worker, self._worker = self._worker, None
        if worker is not None and worker.is_alive():
            worker.join(timeout=self.STOP_GRACE_S if grace_s is None else grace_s)
            if worker.is_alive():
                self.log.warning('a batch is still running; it will publish nothing')
                return False
        return True

    def close(self) -> None:
        """Destroy the subscriptions, publishers and timers (call with the executor stopped,
        or from its own thread).
        """
        with self._publish_lock:
            for t in self._timers:
                self.node.destroy_timer(t)
            for cam in self.cameras:
                cam.stop()
            for pub in self._pubs:
                self.node.destroy_publisher(pub)
            if self.tf is not None:
                self.tf.close()
                self.tf = None
            self._timers, self._pubs, self.pub_diag = [], [], None

    def stop(self, grace_s: float | None = None) -> None:
        """:meth:`halt`, then :meth:`close`."""
        self.halt(grace_s)
        self.close()

    def _watch_inputs(self) -> None:
        for cam in self.cameras:
            cam.watch(self.settings.input_timeout)

    def _update_subscriptions(self) -> None:
        for cam in self.cameras:
            cam.update_subscription()

    def _warn_incompatible_qos(self, side: str, event, cam: Camera | None = None) -> None:
        warn_incompatible_qos(self.log, side, event, cam.input_topic if cam else '')

    # -- the worker -----------------------------------------------------------------------
    def _current(self, gen: int) -> bool:
        return self._running and gen == self._generation

    def _take(self) -> list[tuple[Camera, Job]]:
        """Every camera's waiting frame, longest-waiting first, at most ``max_batch`` (the
        rest wait one more round, so every camera comes in turn). Caller holds the lock.
        """
        waiting = sorted((c for c in self.cameras if c.slot is not None),
                         key=lambda c: c.slot.t_queued)
        jobs = []
        for cam in waiting[:self.settings.max_batch]:
            jobs.append((cam, cam.slot))
            cam.slot = None
        return jobs

    def _work(self, gen: int) -> None:
        """The inference loop of generation ``gen``; ends when a stop or restart ends it."""
        while True:
            with self._cv:
                while self._current(gen) and not any(c.slot is not None for c in self.cameras):
                    self._cv.wait(timeout=0.5)
                if not self._current(gen):
                    return
                jobs = self._take()
            try:
                self._process(jobs, gen)
            except Exception as exc:  # never lose the worker; say what and where
                for cam, job in jobs:
                    cam.drop('processing_error', drop_text(
                        f'frame at {stamp_text(job.msg.header)}', 'processing_error', '', exc))

    def _process(self, jobs: list[tuple[Camera, Job]], gen: int) -> None:
        """Run one batch (one frame per camera) and publish every camera's outputs."""
        t_taken = time.perf_counter()
        frames = [FrameInput(cam.name, job.frame, messages.stamp_ns(job.msg.header),
                             cam.wants(SEMANTIC_COLOR), cam.wants(OVERLAY),
                             frame_id=job.msg.header.frame_id, pairing=cam.pairing)
                  for cam, job in jobs]  # the pairings as they are now (a restart replaces them)
        with self._busy:  # a worker left behind by a restart finishes its batch first
            if gen != self._generation:
                return
            s = self.processor.take_settings()  # the one snapshot of this batch
            results = self.processor.process(frames, s, self.tf)
        inference_s = time.perf_counter() - t_taken
        with self._publish_lock:
            if gen != self._generation:
                return  # stopped or restarted meanwhile: this batch publishes nothing
            for (cam, job), out in zip(jobs, results, strict=True):
                try:
                    self._publish(cam, job, out, t_taken, inference_s, s)
                except Exception as exc:  # this camera's frame only
                    cam.drop('processing_error', drop_text(
                        f'frame at {stamp_text(job.msg.header)}', 'processing_error', '', exc))

    def _publish(self, cam: Camera, job: Job, out: FrameOutput, t_taken: float,
                 inference_s: float, s: Settings) -> None:
        """One camera's outputs of one frame, its latency, counters and stages."""
        t1 = time.perf_counter()
        header = job.msg.header
        where = f'frame at {stamp_text(header)}'
        for reason, detail in out.drops:
            cam.drop(reason, drop_text(where, reason, detail, out.error))
        res = out.result
        if res is None:
            return
        if res.instances is not None and res.instances.tracks_reset:
            self.log.info(f'{f"camera {cam.name}: " if cam.name else ""}stamp went backwards '
                          f'to {stamp_text(header)}: tracks reset (ids continue; a bag loop '
                          'or simulation reset?)')
        msgs = self.outputs.frame(header, out, s, cam.wants(MARKERS))
        for topic, msg in msgs:
            cam.pubs[topic].publish(msg)
        if not self._large_data_hinted:
            self._hint_large_data(max((len(m.data) for _, m in msgs if isinstance(m, Image)),
                                      default=0))
        t_end = time.perf_counter()
        processing = inference_s + (t_end - t1)
        age = age_s(self.node, header)
        cam.stats.on_processed(processing, age)
        if res.batch_size > 1:
            cam.batched += 1
        cam.stats.on_stage({'convert_in': job.convert_s, 'wait': t_taken - job.t_queued,
                            **res.timings, 'publish': t_end - t1})
        cam.pubs[LATENCY].publish(latency_msg(processing, age))
        if cam.wants(TIMING):
            forward = (res.timings.get('semantic_forward', 0.0)
                       + res.timings.get('instance_forward', 0.0))
            cam.pubs[TIMING].publish(timing_msg(messages.stamp_ns(header) / 1e9, forward,
                                                  processing))

    def _hint_large_data(self, nbytes: int) -> None:
        hint = large_data_hint(nbytes)
        if hint:
            self._large_data_hinted = True
            self.log.info(hint)

    def _publish_diagnostics(self) -> None:
        pub = self.pub_diag
        if pub is not None:
            pub.publish(diagnostics(self.node.get_fully_qualified_name(), self.cameras,
                                    self.pipeline, self.node.get_clock().now().to_msg()))

    @property
    def stats(self):
        """The first camera's counters (the single-camera node's)."""
        return self.cameras[0].stats
