"""The offline worker: the live node's processor and message builder, without a node.

:class:`BagWorker` turns parameter values into the same :class:`Settings`, models
(:func:`~seg_ros.core.inference.loading.load_pipeline`), :class:`~seg_ros.core.inference.processor.
FrameProcessor` and :class:`~seg_ros.ros.outputs.Outputs` the live node uses, and answers an
:class:`Item` (a serialised frame with the depth and camera model the driver paired it with)
with the serialised messages the node would publish. One per process, or one per Ray actor.
No rclpy node: messages are (de)serialised with ``rclpy.serialization``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from seg_ros.core.spatial.pairing import Paired
from seg_ros.core.throttle import ThrottledWarner
from seg_ros.offline.bagfile import type_name


class BagError(RuntimeError):
    """A clear one-line refusal (exit code 2)."""


@dataclass
class Item:
    """One colour frame to process, with what it was paired with (validated)."""

    index: int
    recv_ns: int
    image: bytes
    compressed: bool
    camera: str = ''  # '' = the single-camera node
    stamp_ns: int | None = None  # read from the CDR header; None for a corrupt record
    #: depth, camera model and transform, as the driver paired them (the live rule)
    paired: Paired = field(default_factory=Paired)


@dataclass
class Result:
    index: int
    outputs: list[tuple[str, str, bytes]] = field(default_factory=list)  # topic, type, CDR
    drops: dict[str, int] = field(default_factory=dict)
    processed: bool = False  # the frame's 2D outputs were made


class Warner:
    """Drop warnings on stderr with the count so far, throttled as the node's are (one
    :class:`~seg_ros.core.throttle.ThrottledWarner`).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._warn = ThrottledWarner(lambda text: say('WARN', text))

    def __call__(self, reason: str, text: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._warn(reason, f'{text} ({reason}: {self.counts[reason]} so far)')


def say(level: str, text: str) -> None:
    print(f'[{level}] [segment_bag]: {text}', file=sys.stderr, flush=True)


class BagWorker:
    """Models, processor and message builder of one ``segmentation`` node's parameters.

    Raises:
        BagError: a parameter or model the node would refuse (its one-line reason).
    """

    def __init__(self, values: dict[str, Any], quiet: bool = False) -> None:
        from seg_ros.core.config.settings import Settings, SettingsError
        from seg_ros.core.inference.loading import LoadError, load_pipeline
        from seg_ros.core.inference.processor import FrameProcessor
        from seg_ros.ros.outputs import Outputs

        def info(text: str) -> None:
            if not quiet:
                say('INFO', text)
        try:
            self.settings = Settings.from_values(values)
            self.pipeline = load_pipeline(self.settings, info, lambda t: say('WARN', t))
            self.processor = FrameProcessor(self.pipeline, self.settings,
                                            self.settings.cameras or ('',))
        except (SettingsError, LoadError, ValueError) as exc:
            raise BagError(f'segment_bag: cannot start: {exc}') from None
        self.outputs = Outputs(self.pipeline)
        self.warn = Warner()

    @property
    def cameras(self) -> tuple[str, ...]:
        return self.processor.cameras

    def label_infos(self, header) -> list[tuple[str, str, bytes]]:
        """The latched LabelInfo messages the node publishes at start."""
        from rclpy.serialization import serialize_message
        return [(t, type_name(m), bytes(serialize_message(m)))
                for t, m in self.outputs.label_infos(header, self.settings)]

    def process_chunk(self, chunk_index: int, chunk: list[Item]) -> list[Result]:
        """:meth:`process` for each item of a Ray chunk (``chunk_index``: its place in the
        run).
        """
        return [self.process(item) for item in chunk]

    def process(self, item: Item) -> Result:
        """What the node publishes for this frame (or the reasons it was dropped)."""
        from rclpy.serialization import deserialize_message, serialize_message
        from sensor_msgs.msg import CompressedImage, Image

        from seg_ros.core.inference.processor import FrameInput, drop_text
        from seg_ros.core.spatial.pairing import stamp_text
        from seg_ros.ros import messages

        out = Result(item.index)
        prefix = f'{item.camera}/' if item.camera else ''
        where = f'camera {item.camera}: ' if item.camera else ''

        def drop(reason: str, text: str) -> None:
            out.drops[reason] = out.drops.get(reason, 0) + 1
            self.warn(reason, where + text)
        try:
            msg = deserialize_message(item.image, CompressedImage if item.compressed else Image)
        except Exception as exc:  # noqa: BLE001 - a corrupt record is a dropped frame
            drop('bad_record', f'frame {item.index}: cannot deserialise: {exc}')
            return out
        frame, dropped = messages.ingest(msg, item.compressed, self.settings.max_image_pixels)
        if dropped is not None:
            drop(*dropped)
            return out
        header = msg.header
        (res,) = self.processor.process([FrameInput.paired_with(
            item.camera, frame, messages.stamp_ns(header), item.paired)], self.settings)
        for reason, detail in res.drops:
            drop(reason, drop_text(f'frame at {stamp_text(header)}', reason, detail, res.error))
        out.processed = res.result is not None
        out.outputs = [(prefix + t, type_name(m), bytes(serialize_message(m)))
                       for t, m in self.outputs.frame(header, res, self.settings)]
        return out
