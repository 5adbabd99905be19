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
input's storage), in one pass in time order with bounded memory (a bag of any length).
Parameters are the node's: the params file and ``-p`` overrides are read as rcl reads them
for a node named ``segmentation`` and validated by the same table; the same processor,
pairing and message builders as the live node run them (:mod:`seg_ros.offline.worker`,
:mod:`seg_ros.offline.stream`), with no ROS node. Outputs are the topics of a node
``/segmentation`` (labels, detections, masks, label_info, 3D when ``depth.enabled``; not
the on-demand colour, overlay and markers), each message stamped with its input's header
and written at its input's receive time. Nothing is dropped for lack of time; frames that
fail validation are counted by the node's reasons. ``--ray`` spreads chunks of frames over
a Ray cluster (local when no address): each actor loads the model once; a chunk whose
worker dies is redone (actor restart + task retry) and the output still holds every frame
once, in input order.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seg_ros.offline.runners import CHUNK, Progress, run_local, run_ray
from seg_ros.offline.worker import BagError, BagWorker, Item, Warner, say

EXIT_USAGE = 2


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


def _storage_of(bag: Path) -> str:
    """'mcap' or 'sqlite3': the bag's metadata.yaml says, else its files' suffix."""
    import yaml
    try:
        meta = yaml.safe_load((bag / 'metadata.yaml').read_text())
        ident = meta['rosbag2_bagfile_information']['storage_identifier']
        return 'mcap' if 'mcap' in str(ident).lower() else 'sqlite3'
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return 'mcap' if any(bag.glob('*.mcap')) else 'sqlite3'


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
    from seg_ros.core.config.params import validate

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


def values_of(args: argparse.Namespace) -> dict[str, Any]:
    """The node's parameter values: the params file, then ``-p`` (as ``ros2 run`` reads
    them), then the cameras of ``--image-topic CAM=TOPIC``. Unknown names are warned about.

    Raises:
        BagError: a missing or malformed params file, a malformed ``-p``.
    """
    from seg_ros.core.config.settings import SettingsError, resolve_values, unknown_names

    if args.params_file is not None and not args.params_file.is_file():
        raise BagError(f'segment_bag: --params-file {args.params_file}: no such file')
    try:
        values = resolve_values([args.params_file] if args.params_file else [], args.params)
    except SettingsError as exc:
        raise BagError(f'segment_bag: {exc}') from None
    for text in unknown_names(values):
        say('WARN', text)
    if getattr(args, 'cameras', None):  # after the user's: the bag's topics name the cameras
        values['cameras'] = list(args.cameras)
    return values


def main(argv: list[str] | None = None, worker_class: type[BagWorker] = BagWorker) -> int:
    """The command; ``worker_class`` is what each Ray actor runs (tests pass one that fails)."""
    try:
        return _main(parse_args(sys.argv[1:] if argv is None else argv), worker_class)
    except BagError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE


def _check_topics(args: argparse.Namespace, topics: dict[str, str]) -> None:
    for flag, given in (('--image-topic', args.images), ('--depth-topic', args.depths),
                        ('--camera-info-topic', args.infos)):
        for topic in given.values():
            if topic not in topics:
                has = ', '.join(f'{t} ({m})' for t, m in sorted(topics.items()))
                raise BagError(f'segment_bag: {flag} {topic} is not in {args.input}; it '
                               f'has: {has}')
    for topic in args.images.values():
        if topics[topic] not in ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'):
            raise BagError(f'segment_bag: {topic} is {topics[topic]}, not '
                           'sensor_msgs/msg/Image or CompressedImage')


def _check_worker(args: argparse.Namespace, worker: BagWorker) -> None:
    s = worker.settings
    if set(worker.cameras) != set(args.images):
        raise BagError('segment_bag: the cameras parameter does not match --image-topic: name '
                       'the cameras there (CAM=TOPIC), not with -p cameras')
    if s.depth_enabled and not (set(args.depths) == set(args.infos) == set(args.images)):
        raise BagError('segment_bag: depth.enabled needs --depth-topic and --camera-info-topic'
                       + (' for every camera' if args.cameras else ''))
    if s.depth_enabled and s.target_frame:
        from seg_ros.ros.transforms import require_tf2
        try:
            require_tf2()
        except ImportError as exc:
            raise BagError(f'segment_bag: {exc}') from None
    if args.ray is not None and s['instance.enabled'] and s.tracking:
        raise BagError('segment_bag: instance.tracking needs every frame in order in one '
                       'process: run without --ray')


def _first_header(item: Item):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header
    try:
        return deserialize_message(item.image, CompressedImage if item.compressed
                                   else Image).header
    except Exception:  # noqa: BLE001 - a corrupt first record: an empty header
        return Header()


def _main(args: argparse.Namespace, worker_class: type[BagWorker] = BagWorker) -> int:
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
        _check_topics(args, topics)
        if args.output.exists():
            if not args.overwrite:
                raise BagError(f'segment_bag: {args.output} exists (use --overwrite)')
            shutil.rmtree(args.output)
        values = values_of(args)
        t_start = time.monotonic()
        worker = BagWorker(values)  # validates parameters, loads the models
        _check_worker(args, worker)
        summary = _run(args, reader, topics, values, worker, StoragePlugin, Writer,
                       worker_class)
        summary['seconds'] = round(time.monotonic() - t_start, 3)
        summary['frames_per_s'] = (round(summary['frames_in'] / summary['seconds'], 3)
                                   if summary['seconds'] > 0 else None)
        text = json.dumps(summary, indent=2)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
        print(text)
        return 0
    finally:
        reader.close()


def _run(args, reader, topics, values, worker: BagWorker, StoragePlugin, Writer,  # noqa: N803
         worker_class: type[BagWorker] = BagWorker) -> dict:
    """Stream the bag through the worker(s) into the output bag; the summary."""
    from seg_ros.offline.stream import stream_items
    from seg_ros.ros.outputs import NODE_NAME

    s = worker.settings
    storage = StoragePlugin.MCAP if _storage_of(args.input) == 'mcap' else StoragePlugin.SQLITE3
    store = _typestore()
    writer = Writer(args.output, version=9, storage_plugin=storage)
    writer.open()
    conns: dict[str, Any] = {}

    def write(topic: str, msgtype: str, t: int, raw: bytes) -> None:
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
        writer.write(conns[topic], t, raw)
    total = sum(c.msgcount for c in reader.connections if c.topic in args.images.values())
    progress = Progress(total)
    drops: dict[str, int] = {}
    dropped: list[dict] = []  # the frames not processed, and why
    processed = n = 0
    warn = Warner()

    def input_drop(reason: str, text: str) -> None:
        drops[reason] = drops.get(reason, 0) + 1
        warn(reason, text)
    items = stream_items(reader, args.images, args.depths if s.depth_enabled else {},
                         args.infos if s.depth_enabled else {}, s.depth_slop,
                         s.max_image_pixels, input_drop, write if args.copy_input else None,
                         s.target_frame if s.depth_enabled else '')
    try:
        first = next(items, None)
        if first is not None:
            items = _prepend(first, items)
            for topic, mtype, raw in worker.label_infos(_first_header(first)):
                write(f'/{NODE_NAME}/{topic}', mtype, first.recv_ns, raw)
        if args.ray is not None:
            worker = None
            results = run_ray(values, items, args.ray or None, args.workers, progress,
                              args.chunk, worker_class)
        else:
            results = run_local(worker, items, progress)
        for item, res in results:
            assert res.index == item.index
            n += 1
            if args.copy_input:
                topic = args.images[item.camera]
                write(topic, topics[topic], item.recv_ns, item.image)
            for topic, mtype, raw in res.outputs:
                write(f'/{NODE_NAME}/{topic}', mtype, item.recv_ns, raw)
            if res.processed:
                processed += 1
            elif res.drops:
                dropped.append({'index': item.index, 'receive_time_ns': item.recv_ns,
                                'reasons': sorted(res.drops)})
            for k, v in res.drops.items():
                drops[k] = drops.get(k, 0) + v
    except BagError:
        writer.close()
        writer = None
        shutil.rmtree(args.output, ignore_errors=True)  # no half-written output
        raise
    finally:
        if writer is not None:
            writer.close()
    return {'input': str(args.input), 'output': str(args.output),
            'storage': storage.name.lower(),
            'image_topic': args.images[''] if '' in args.images else args.images,
            'frames_in': n, 'frames_processed': processed, 'frames_dropped': n - processed,
            'drops': dict(sorted(drops.items())), 'dropped_frames': dropped,
            'output_topics': sorted(conns), 'ray': args.ray is not None,
            'workers': args.workers if args.ray is not None else 1}


def _prepend(first: Item, rest: Iterator[Item]) -> Iterator[Item]:
    yield first
    yield from rest


if __name__ == '__main__':
    sys.exit(main())
