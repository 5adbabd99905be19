"""segment_bag: label a recorded rosbag2 with the node's own pipeline, every frame.

    segment_bag INPUT_BAG OUTPUT_BAG --image-topic TOPIC [--params-file FILE]
        [-p NAME:=VALUE ...] [--depth-topic T --camera-info-topic T] [--copy-input]
        [--overwrite] [--json FILE] [--ray [ADDRESS]] [--workers N]
    segment_bag IN OUT --image-topic front=/car/front/image_raw --image-topic left=...

With ``--image-topic CAM=TOPIC`` (repeated; ``--depth-topic`` / ``--camera-info-topic``
then also ``CAM=TOPIC``) the node has ``cameras`` [CAM, ...], as the live node with that
parameter: each camera's outputs go to ``/segmentation/CAM/...``, its own tracker and
depth pairing, one shared label_info.

Reading and writing is the ``rosbags`` library (sqlite3 and mcap; the output keeps the
input's storage). Parameters are the node's: a node named ``segmentation`` is created (not
spun) with the params file and ``-p`` overrides, declared and validated exactly as
``segment_node`` does, and its :class:`~seg_ros.ros.engine.Engine` loads the models and
builds the messages. Outputs are the topics of a node ``/segmentation`` (labels,
detections, masks, label_info, 3D when ``depth.enabled``; not the on-demand colour,
overlay and markers), each message stamped with its input's header and written at its
input's receive time. Nothing is dropped for lack of time; frames that fail validation are
counted by the node's reasons. ``--ray`` spreads chunks of frames over a Ray cluster (local
when no address): each actor loads the model once; a chunk whose worker dies is redone
(actor restart + task retry) and the output still holds every frame once, in input order.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 8  # frames per Ray task
MAX_RESTARTS = 3  # per actor, and retries per chunk: a worker that keeps dying ends the run
EXIT_USAGE = 2


class BagError(RuntimeError):
    """A clear one-line refusal (exit code 2)."""


@dataclass
class Item:
    """One colour frame to process, with what the node would have paired it with."""

    index: int
    recv_ns: int
    image: bytes
    compressed: bool
    depth: bytes | None = None
    info: bytes | None = None
    camera: str = ''  # '' = the single-camera node


@dataclass
class Result:
    index: int
    outputs: list[tuple[str, str, bytes]] = field(default_factory=list)  # topic, type, CDR
    drops: dict[str, int] = field(default_factory=dict)


def _type_name(msg: Any) -> str:
    cls = type(msg)
    return f'{cls.__module__.split(".")[0]}/msg/{cls.__name__}'


class FrameProcessor:
    """A not-spun ``segmentation`` node with the node's parameters, engine and pipeline.

    Raises:
        BagError: a parameter or model the node would refuse (its one-line reason).
    """

    def __init__(self, ros_args: list[str], node_name: str = 'segmentation') -> None:
        import rclpy
        from rclpy.node import Node

        from seg_ros.ros.engine import Engine, StartupError, declare

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=['segment_bag', '--ros-args', *ros_args], context=self.context)
        self.node = Node(node_name, context=self.context, start_parameter_services=False,
                         enable_rosout=False)
        self.engine = Engine(self.node)
        try:
            declare(self.node)
            self.engine.load()
        except StartupError as exc:
            self.close()
            raise BagError(f'segment_bag: cannot start: {exc}') from None
        self.max_pixels = self.engine.param('max_image_pixels')
        self.depth_on = bool(self.engine.param('depth.enabled'))
        self.cameras = {c.name: c for c in self.engine.cameras}
        for cam in self.engine.cameras:
            cam.depth_topics = ('--depth-topic', '--camera-info-topic')

    def param(self, name: str) -> Any:
        return self.engine.param(name)

    def label_infos(self, header) -> list[tuple[str, str, bytes]]:
        """The latched LabelInfo messages the node publishes at start."""
        from rclpy.serialization import serialize_message

        from seg_ros.ros import messages
        out = []
        pipe = self.engine.pipeline
        if pipe.semantic is not None:
            out.append(('semantic/label_info',
                        messages.label_info(header, pipe.semantic.loaded.class_names, 0.0)))
        if pipe.instance is not None:
            out.append(('instances/label_info', messages.label_info(
                header, pipe.instance.loaded.class_names, pipe.instance.score_threshold)))
        return [(t, _type_name(m), bytes(serialize_message(m))) for t, m in out]

    def process(self, item: Item) -> Result:
        """What the node publishes for this frame (or the reason it was dropped)."""
        from rclpy.serialization import deserialize_message, serialize_message
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from seg_ros.core.imaging import ImageConversionError, decode_compressed
        from seg_ros.ros import messages

        engine = self.engine
        cam = self.cameras[item.camera]
        before = dict(cam.stats.drops)
        res_out = Result(item.index)
        try:
            msg = deserialize_message(item.image, CompressedImage if item.compressed else Image)
        except Exception as exc:  # noqa: BLE001 - a corrupt record is a dropped frame
            engine.drop('bad_record', f'frame {item.index}: cannot deserialise: {exc}', cam)
            res_out.drops = _diff(before, cam.stats.drops)
            return res_out
        try:
            frame = (decode_compressed(msg.format, msg.data, self.max_pixels) if item.compressed
                     else messages.image_to_frame(msg, self.max_pixels))
        except ImageConversionError as exc:
            engine.drop(exc.reason, f'dropped frame at {msg.header.stamp.sec}.'
                                    f'{msg.header.stamp.nanosec:09d}: {exc}', cam)
            res_out.drops = _diff(before, cam.stats.drops)
            return res_out
        header = msg.header
        res = engine.pipeline(frame, tracker=cam.tracker, stamp_ns=messages.stamp_ns(header),
                              keep_image=self.depth_on)
        out = engine.outputs_2d(header, res)
        if self.depth_on:
            depth = info = None
            if item.depth is not None and engine._check_depth(
                    d := deserialize_message(item.depth, Image), cam):
                depth = d
            if item.info is not None and engine._check_info(
                    c := deserialize_message(item.info, CameraInfo), cam):
                info = c
            out += engine.outputs_3d(header, res, depth, info, cam=cam)
        res_out.outputs = [(cam.prefix + t, _type_name(m), bytes(serialize_message(m)))
                           for t, m in out]
        res_out.drops = _diff(before, cam.stats.drops)
        return res_out

    def close(self) -> None:
        try:
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self._rclpy.shutdown(context=self.context)


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# -- bags -------------------------------------------------------------------------------------
def _typestore():
    """Rosbags' type store with the installed vision_msgs definitions added (rosbags does
    not ship them), from the ament index of whatever distribution is sourced.
    """
    from ament_index_python.packages import get_package_share_directory
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    share = Path(get_package_share_directory('vision_msgs')) / 'msg'
    types = {}
    for f in sorted(share.glob('*.msg')):
        types.update(get_types_from_msg(f.read_text(), f'vision_msgs/msg/{f.stem}'))
    store.register(types)
    return store


def read_items(reader, image_topic: str | dict[str, str],
               depth_topic: str | dict[str, str] | None,
               info_topic: str | dict[str, str] | None,
               slop_ns: int) -> tuple[list[Item], int]:
    """Every colour frame in receive order, paired as the node pairs: the depth of its
    camera whose header stamp is nearest within the slop, the last camera_info of its camera
    received before it. Topics are one string (single camera) or camera -> topic.
    """
    images = image_topic if isinstance(image_topic, dict) else {'': image_topic}
    depths = (depth_topic if isinstance(depth_topic, dict) else
              {'': depth_topic} if depth_topic else {})
    infos = (info_topic if isinstance(info_topic, dict) else
             {'': info_topic} if info_topic else {})
    conns = {c.topic: c for c in reader.connections}
    depth_by_stamp: dict[str, dict[int, bytes]] = {}
    for cam, topic in depths.items():
        found = depth_by_stamp.setdefault(cam, {})
        for _, _, raw in reader.messages(connections=[conns[topic]]):
            stamp = _header_stamp(raw)
            if stamp is not None:  # a corrupt record pairs with nothing
                found[stamp] = bytes(raw)
    stamps = {cam: sorted(d) for cam, d in depth_by_stamp.items()}
    camera_of_image = {images[cam]: cam for cam in images}
    camera_of_info = {infos[cam]: cam for cam in infos}
    wanted = [conns[t] for t in images.values()] + [conns[t] for t in infos.values()
                                                    if t not in camera_of_image]
    items: list[Item] = []
    info: dict[str, bytes] = {}
    for conn, t, raw in reader.messages(connections=wanted):
        if conn.topic in camera_of_info and conn.topic not in camera_of_image:
            info[camera_of_info[conn.topic]] = raw
            continue
        cam = camera_of_image[conn.topic]
        depth = None
        if stamps.get(cam):
            stamp = _header_stamp(raw)
            if stamp is not None:
                cam_stamps = stamps[cam]
                i = bisect.bisect_left(cam_stamps, stamp)
                near = [s for s in cam_stamps[max(0, i - 1):i + 1] if abs(s - stamp) <= slop_ns]
                if near:
                    depth = depth_by_stamp[cam][min(near, key=lambda s: abs(s - stamp))]
        items.append(Item(len(items), t, bytes(raw), conn.msgtype.endswith('CompressedImage'),
                          depth, info.get(cam), cam))
    return items, len(items)


def _storage_of(bag: Path) -> str:
    """'mcap' or 'sqlite3': the bag's metadata.yaml says, else its files' suffix."""
    import yaml
    try:
        meta = yaml.safe_load((bag / 'metadata.yaml').read_text())
        ident = meta['rosbag2_bagfile_information']['storage_identifier']
        return 'mcap' if 'mcap' in str(ident).lower() else 'sqlite3'
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return 'mcap' if any(bag.glob('*.mcap')) else 'sqlite3'


def _header_stamp(raw: bytes) -> int | None:
    """The header stamp (ns) of a CDR-serialised message whose first field is a
    std_msgs/Header (Image, CompressedImage): read from the encapsulation header and the
    two 4-byte stamp fields after it, without deserialising the image data.
    """
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in (0, 1):
        return None
    sec, nanosec = struct.unpack_from('<iI' if raw[1] == 1 else '>iI', raw, 4)
    return sec * 10**9 + nanosec


# -- runners ----------------------------------------------------------------------------------
def run_local(proc: FrameProcessor, items: list[Item], progress):
    for item in items:
        yield proc.process(item)
        progress(1)


def run_ray(ros_args: list[str], items: list[Item], address: str | None, workers: int,
            progress, chunk: int = CHUNK):
    import ray
    from ray.util import ActorPool

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)

    @ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
    class Worker:
        def __init__(self, args: list[str]) -> None:
            self.proc = FrameProcessor(args)

        def process_chunk(self, chunk_index: int, chunk: list[Item]) -> list[Result]:
            # test hooks: the worker handling chunk 1 dies once / every time
            fail = os.environ.get('SEG_ROS_BAG_FAIL_ONCE')
            if fail and chunk_index == 1 and not os.path.exists(fail):
                Path(fail).write_text(str(os.getpid()))
                os._exit(1)
            if os.environ.get('SEG_ROS_BAG_FAIL_ALWAYS') and chunk_index == 1:
                os._exit(1)
            return [self.proc.process(item) for item in chunk]

    try:
        pool = ActorPool([Worker.remote(ros_args) for _ in range(workers)])
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        try:
            for results in pool.map(lambda a, ic: a.process_chunk.remote(*ic),
                                    list(enumerate(chunks))):
                yield from results
                progress(len(results))
        except ray.exceptions.RayError as exc:  # e.g. a worker that died MAX_RESTARTS times
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BagError(f'segment_bag: Ray failed, output removed: {first}') from None
    finally:
        ray.shutdown()


class Progress:
    """frames, frames/s and ETA on a terminal (stderr); silent otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.tty:
            return
        dt = max(time.monotonic() - self.t0, 1e-9)
        fps = self.done / dt
        eta = (self.total - self.done) / fps if fps > 0 else float('inf')
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        sys.stderr.write(f'\r[{"#" * filled}{"." * (width - filled)}] {self.done}/{self.total}'
                         f' frames  {fps:.2f} frames/s  ETA {eta:.0f} s ')
        sys.stderr.flush()
        if self.done >= self.total:
            sys.stderr.write('\n')


# -- command line -----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog='segment_bag', description='Label a recorded rosbag2 with the node\'s pipeline.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('input', type=Path, help='input rosbag2 directory (sqlite3 or mcap)')
    ap.add_argument('output', type=Path, help='output rosbag2 directory (same storage)')
    ap.add_argument('--image-topic', required=True, action='append',
                    help='sensor_msgs/Image or CompressedImage topic to process; CAM=TOPIC '
                    '(repeated) for several cameras: outputs under /segmentation/CAM/')
    ap.add_argument('--depth-topic', action='append',
                    help='registered depth topic (with depth.enabled); CAM=TOPIC per camera')
    ap.add_argument('--camera-info-topic', action='append',
                    help='camera_info of the colour image (depth); CAM=TOPIC per camera')
    ap.add_argument('--params-file', type=Path, help="the node's parameters YAML")
    ap.add_argument('-p', dest='params', action='append', default=[], metavar='NAME:=VALUE',
                    help='a parameter, as ros2 run ... -p takes it (repeatable)')
    ap.add_argument('--copy-input', action='store_true',
                    help='also copy the processed input topics into the output')
    ap.add_argument('--overwrite', action='store_true', help='replace an existing output')
    ap.add_argument('--json', type=Path, help='write the summary here')
    ap.add_argument('--ray', nargs='?', const='', default=None, metavar='ADDRESS',
                    help='distribute over a Ray cluster (local one when no address)')
    ap.add_argument('--workers', type=int, default=2, help='Ray actors (with --ray)')
    ap.add_argument('--chunk', type=int, default=CHUNK,
                    help='frames per Ray task (with --ray; a dead worker redoes one chunk)')
    return ap.parse_args(argv)


def camera_topics(args: argparse.Namespace) -> None:
    """``--image-topic`` etc. as given (lists) -> ``args.cameras`` (names, [] for one
    camera) and ``args.images`` / ``args.depths`` / ``args.infos`` (camera -> topic).

    Raises:
        BagError: mixed forms, a repeated camera or topic, a camera without its image.
    """
    from seg_ros.ros.params import validate

    def parse(flag: str, values: list[str] | None) -> dict[str, str]:
        values = values or []
        named = [v for v in values if '=' in v]
        if named and len(named) != len(values):
            raise BagError(f'segment_bag: {flag}: give every value as CAM=TOPIC or a single '
                           'TOPIC, not both')
        if not named:
            if len(values) > 1:
                raise BagError(f'segment_bag: {flag} given {len(values)} times: name the '
                               'cameras (CAM=TOPIC) to process several')
            return {'': values[0]} if values else {}
        out: dict[str, str] = {}
        for v in values:
            cam, topic = (x.strip() for x in v.split('=', 1))
            if cam in out:
                raise BagError(f'segment_bag: {flag}: camera {cam!r} given twice')
            out[cam] = topic
        return out
    args.images = parse('--image-topic', args.image_topic)
    args.depths = parse('--depth-topic', args.depth_topic)
    args.infos = parse('--camera-info-topic', args.camera_info_topic)
    args.cameras = [c for c in args.images if c]
    err = validate('cameras', args.cameras)
    if err:
        raise BagError(f'segment_bag: --image-topic: {err}')
    if len(set(args.images.values())) != len(args.images):
        raise BagError('segment_bag: --image-topic: a topic is given for two cameras')
    for flag, given in (('--depth-topic', args.depths), ('--camera-info-topic', args.infos)):
        extra = sorted(set(given) - set(args.images))
        if extra:
            raise BagError(f'segment_bag: {flag}: {extra} is no camera of --image-topic')


def ros_args_of(args: argparse.Namespace) -> list[str]:
    out = []
    if args.params_file is not None:
        if not args.params_file.is_file():
            raise BagError(f'segment_bag: --params-file {args.params_file}: no such file')
        out += ['--params-file', str(args.params_file)]
    for p in args.params:
        if ':=' not in p:
            raise BagError(f'segment_bag: -p {p}: expected NAME:=VALUE')
        out += ['-p', p]
    if getattr(args, 'cameras', None):  # after the user's: the bag's topics name the cameras
        out += ['-p', f'cameras:=[{", ".join(args.cameras)}]']
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(parse_args(sys.argv[1:] if argv is None else argv))
    except BagError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE


def _main(args: argparse.Namespace) -> int:
    try:
        from rosbags.rosbag2 import Reader, StoragePlugin, Writer
    except ImportError:
        raise BagError('segment_bag: needs the rosbags library: pip install rosbags') from None
    if args.ray is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise BagError('segment_bag: --ray needs Ray: pip install ray') from None

    if args.workers < 1 or args.chunk < 1:
        raise BagError('segment_bag: --workers and --chunk must be at least 1')
    camera_topics(args)
    try:
        reader = Reader(args.input)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - any failure to open is one line
        raise BagError(f'segment_bag: cannot read {args.input} as a rosbag2: '
                       f'{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}'
                       ) from None
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        for flag, given in (('--image-topic', args.images), ('--depth-topic', args.depths),
                            ('--camera-info-topic', args.infos)):
            for topic in given.values():
                if topic not in topics:
                    raise BagError(f'segment_bag: {flag} {topic} is not in {args.input}; it '
                                   'has: ' + ', '.join(f'{t} ({m})'
                                                       for t, m in sorted(topics.items())))
        for topic in args.images.values():
            if topics[topic] not in ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'):
                raise BagError(f'segment_bag: {topic} is {topics[topic]}, not '
                               'sensor_msgs/msg/Image or CompressedImage')
        if args.output.exists():
            if not args.overwrite:
                raise BagError(f'segment_bag: {args.output} exists (use --overwrite)')
            shutil.rmtree(args.output)
        ros_args = ros_args_of(args)
        t_start = time.monotonic()
        proc = FrameProcessor(ros_args)  # validates parameters, loads the models
        try:
            if set(proc.cameras) != set(args.images):
                raise BagError('segment_bag: the cameras parameter does not match '
                               '--image-topic: name the cameras there (CAM=TOPIC), not with -p '
                               'cameras')
            if proc.depth_on and not (set(args.depths) == set(args.infos) == set(args.images)):
                raise BagError('segment_bag: depth.enabled needs --depth-topic and '
                               '--camera-info-topic' + (' for every camera' if args.cameras
                                                        else ''))
            if args.ray is not None and proc.param('instance.enabled') and \
                    proc.param('instance.tracking'):
                raise BagError('segment_bag: instance.tracking needs every frame in order in '
                               'one process: run without --ray')
            slop = int(round(proc.param('depth.slop') * 1e9))
            items, n = read_items(reader, args.images, args.depths if proc.depth_on else None,
                                  args.infos if proc.depth_on else None, slop)
            storage = StoragePlugin.MCAP if _storage_of(args.input) == 'mcap' \
                else StoragePlugin.SQLITE3
            store = _typestore()
            writer = Writer(args.output, version=9, storage_plugin=storage)
            writer.open()
            conns: dict[str, Any] = {}

            def write(topic: str, msgtype: str, t: int, raw: bytes) -> None:
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
                writer.write(conns[topic], t, raw)
            progress = Progress(n)
            drops: dict[str, int] = {}
            dropped: list[dict] = []  # the frames not processed, and why
            processed = 0
            try:
                if items:
                    from rclpy.serialization import deserialize_message
                    from sensor_msgs.msg import CompressedImage, Image
                    first = items[0]
                    try:
                        hdr = deserialize_message(
                            first.image, CompressedImage if first.compressed else Image).header
                    except Exception:  # noqa: BLE001
                        from std_msgs.msg import Header
                        hdr = Header()
                    for topic, mtype, raw in proc.label_infos(hdr):
                        write(f'/segmentation/{topic}', mtype, first.recv_ns, raw)
                if args.ray is not None:
                    proc.close()
                    proc = None
                    results = run_ray(ros_args, items, args.ray or None, args.workers, progress,
                                      args.chunk)
                else:
                    results = run_local(proc, items, progress)
                for item, res in zip(items, results, strict=True):
                    assert res.index == item.index
                    if args.copy_input:
                        topic = args.images[item.camera]
                        write(topic, topics[topic], item.recv_ns, item.image)
                    for topic, mtype, raw in res.outputs:
                        write(f'/segmentation/{topic}', mtype, item.recv_ns, raw)
                    if any(t.endswith(('semantic/labels', 'instances/detections'))
                           for t, _, _ in res.outputs):
                        processed += 1
                    elif res.drops:
                        dropped.append({'index': item.index, 'receive_time_ns': item.recv_ns,
                                        'reasons': sorted(res.drops)})
                    for k, v in res.drops.items():
                        drops[k] = drops.get(k, 0) + v
                if args.copy_input:  # the paired inputs too, so the output plays alone
                    for topic in [*args.depths.values(), *args.infos.values()]:
                        if topic:
                            for _, t, raw in reader.messages(
                                    connections=[c for c in reader.connections
                                                 if c.topic == topic]):
                                write(topic, topics[topic], t, bytes(raw))
            except BagError:
                writer.close()
                writer = None
                shutil.rmtree(args.output, ignore_errors=True)  # no half-written output
                raise
            finally:
                if writer is not None:
                    writer.close()
        finally:
            if proc is not None:
                proc.close()
        seconds = time.monotonic() - t_start
        summary = {'input': str(args.input), 'output': str(args.output),
                   'storage': storage.name.lower(),
                   'image_topic': args.images[''] if '' in args.images else args.images,
                   'frames_in': n, 'frames_processed': processed,
                   'frames_dropped': n - processed, 'drops': dict(sorted(drops.items())),
                   'dropped_frames': dropped,
                   'output_topics': sorted(conns), 'seconds': round(seconds, 3),
                   'frames_per_s': round(n / seconds, 3) if seconds > 0 else None,
                   'ray': args.ray is not None, 'workers': args.workers if args.ray is not None
                   else 1}
        text = json.dumps(summary, indent=2)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
        print(text)
        return 0
    finally:
        reader.close()


if __name__ == '__main__':
    sys.exit(main())
