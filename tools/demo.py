#!/usr/bin/env python3
"""The main job: replay a camera stream into segment_node and save what it publishes.

    scripts/demo                        # CamVid val frames if ../shared is there, else
                                        # generated street-like frames
    scripts/demo --images DIR           # a folder of images (png/jpg, sorted by name)
    scripts/demo --video FILE.mp4       # a video (OpenCV)
    scripts/demo --instance             # also Mask R-CNN (RANDOM weights unless
                                        # --instance-weights names a file or tabletop)
    scripts/demo --frames 4             # 4 frames spread over the folder (default 12)
    scripts/demo --depth                # a synthetic RGB-D tabletop: unseen objects from
                                        # depth (instance.model depth_objects) in 3D
                                        # (Detection3DArray, point clouds, track ids),
                                        # overlay and top/side views; --instance-weights
                                        # tabletop runs the learned model instead;
                                        # --semantic adds the semantic model
    scripts/demo --depth --rgbd DIR     # replay an RGB-D folder (images/, depth/ 16-bit mm,
                                        # camera_params.json), e.g. ../shared/data/rgbd_real
    scripts/demo -- -p semantic.input_size:=240   # extra node arguments after --

segment_node runs as a separate process (as `ros2 run seg_ros segment_node` would) in its
own ROS domain; this script publishes each frame as sensor_msgs/Image on /camera/image,
waits for the answers, and writes labels (mono PNG), colour images, instance masks and
overlays to OUT/ (default out/demo, out/demo_instance with --instance, out/demo_depth with
--depth), plus OUT/summary.json with frame count and the publish-to-receipt latency of each
frame's last output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from demo_frames import (
    CAMVID_VAL,
    check_source,
    generated_frames,
    image_frames,
    rgbd_folder_frames,
    rgbd_frames,
    video_frames,
)
from PIL import Image as PILImage
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo

from seg_ros.core.models.registry import SHIPPED_SEMANTIC, WEIGHTS_DIR
from seg_ros.core.spatial.colors import voc_palette
from seg_ros.testing.remote import (
    LATCHED,
    Client,
    camera_info_msg,
    decode,
    frame_msg,
    large_data_transport,
    own_domain,
    served,
)

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_FRAMES = 12
NODE = '/segmentation'


def cloud_array(msg: PointCloud2, names: tuple[str, ...]) -> np.ndarray:
    from sensor_msgs_py import point_cloud2
    return point_cloud2.read_points(msg, field_names=names)


def views_3d(inst_pts: np.ndarray, sem_pts: np.ndarray | None, dets3d,
             size: int = 420, max_boxes: int = 12) -> np.ndarray:
    """A picture of the 3D outputs: left, seen from above the table (x right, y down, as
    the camera sees it); right, from the side (x right, depth z down): semantic points in
    their colour, instance points coloured by id, the box and id of the ``max_boxes``
    highest-scored Detection3Ds."""
    from PIL import ImageDraw
    width, top = 2 * size + 10, 24
    pixels = np.full((size + top, width, 3), 255, np.uint8)
    pts = [p for p in (inst_pts, sem_pts) if p is not None and len(p)]
    if not pts:
        return pixels
    axes = ('x', 'y', 'z')
    allp = np.stack([np.concatenate([p[a] for p in pts]) for a in axes], 1)
    lo = allp.min(0) - 0.02
    span = float(np.ptp(allp, 0).max()) + 0.04
    palette = voc_palette(256)
    shown = sorted(dets3d.detections, key=lambda d: -d.results[0].hypothesis.score)[:max_boxes]
    panels = ((0, 0, 1, 'from above (x, y)'), (size + 10, 0, 2, 'from the side (x, depth z)'))

    def to_px(a, b, ia, ib, ox):  # metres -> pixels of one panel
        return (ox + (a - lo[ia]) / span * (size - 1), top + (b - lo[ib]) / span * (size - 1))
    layers = []
    if sem_pts is not None and len(sem_pts):
        packed = np.ascontiguousarray(sem_pts['rgb']).view(np.uint32)
        layers.append((sem_pts, np.stack([(packed >> 16) & 255, (packed >> 8) & 255,
                                           packed & 255], 1).astype(np.uint8)))
    if len(inst_pts):
        layers.append((inst_pts, palette[inst_pts['id'].astype(int) % 255 + 1]))
    for ox, ia, ib, _ in panels:
        for layer, colours in layers:
            u, v = to_px(layer[axes[ia]], layer[axes[ib]], ia, ib, ox)
            pixels[v.astype(int), u.astype(int)] = colours
    canvas = PILImage.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    for ox, ia, ib, title in panels:
        draw.text((ox + 4, 4), title, fill=(0, 0, 0))
        for d in shown:
            c, s = d.bbox.center.position, d.bbox.size
            centre, half = (c.x, c.y, c.z), (s.x / 2, s.y / 2, s.z / 2)
            a0, b0 = to_px(centre[ia] - half[ia], centre[ib] - half[ib], ia, ib, ox)
            a1, b1 = to_px(centre[ia] + half[ia], centre[ib] + half[ib], ia, ib, ox)
            colour = tuple(int(x) for x in palette[int(d.id) % 255 + 1])
            draw.rectangle((a0, b0, a1, b1), outline=colour, width=2)
            draw.text((a0 + 2, b0 + 2), d.id, fill=(0, 0, 0))
    return np.asarray(canvas)


def instance_colors(ids: np.ndarray) -> np.ndarray:
    """A viewable RGB picture of a mono16 instance-id image (0 = black background)."""
    palette = np.array(voc_palette(256), np.uint8)
    palette[0] = 0
    out = palette[1 + (ids.astype(np.int64) - 1) % 255]
    out[ids == 0] = 0
    return out


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if '--' in argv:
        extra = argv[argv.index('--') + 1:]
        argv = argv[:argv.index('--')]
    ap = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='Node arguments after --, e.g. scripts/demo -- -p semantic.input_size:=240',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument('--images', type=Path,
                     help='folder of images (png/jpg/bmp); default: the CamVid val frames in '
                          f'{CAMVID_VAL} when present, else generated street-like frames')
    src.add_argument('--video', type=Path, help='video file (read with OpenCV)')
    ap.add_argument('--frames', type=int, default=DEFAULT_FRAMES,
                    help='number of frames to replay; from a folder they are spread evenly '
                         'over all its images (first and last included)')
    ap.add_argument('--out', type=Path, default=None,
                    help='output folder (default: out/demo, out/demo_instance with '
                         '--instance, out/demo_depth with --depth)')
    ap.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    ap.add_argument('--domain', type=int, default=None,
                    help='ROS domain of the demo and its node (default: $SEG_ROS_DOMAIN_ID, else '
                         '50 + pid %% 50, away from a robot on the usual 0)')
    ap.add_argument('--weights', default=None,
                    help='semantic.weights: camvid (the shipped model, default), DEFAULT, a '
                         'state-dict file, or none (random weights)')
    ap.add_argument('--instance', action='store_true',
                    help='also run instance segmentation (Mask R-CNN); the shipped instance '
                         'model knows tabletop boxes and cylinders only, so on street frames '
                         'it runs RANDOM weights unless --instance-weights says otherwise')
    ap.add_argument('--rgbd', type=Path, default=None,
                    help='with --depth: replay this RGB-D folder (images/, depth/ with 16-bit '
                         'millimetre PNGs of the same names, camera_params.json with fx, fy, '
                         'x_offset, y_offset) instead of the generated tabletop')
    ap.add_argument('--instance-weights', default=None,
                    help='with --depth: unset runs depth_objects (class-agnostic objects from '
                         'depth, no weights); tabletop runs the shipped learned model. '
                         'Otherwise instance.weights: tabletop (shipped), a '
                         'weights file, DEFAULT (downloads torchvision COCO weights) or none '
                         '(default with --instance)')
    src.add_argument('--depth', action='store_true',
                     help='a synthetic RGB-D tabletop (colour, 16UC1 depth, camera_info) with '
                          'instances and 3D from depth on: writes the 3D outputs and a '
                          'top/side view picture per frame (implies --instance)')
    ap.add_argument('--semantic', action='store_true',
                    help='with --depth: also run the semantic model (CamVid street classes: '
                         'meaningless on a tabletop; off by default there)')
    ap.add_argument('--timeout', type=float, default=120.0, help='seconds to wait per frame')
    args = ap.parse_args(argv)
    if args.rgbd is not None and not args.depth:
        ap.error('--rgbd needs --depth')
    if args.rgbd is not None and not (args.rgbd / 'camera_params.json').is_file():
        ap.error(f'--rgbd {args.rgbd}: no camera_params.json there (images/, depth/, '
                 'camera_params.json expected)')
    if args.depth:
        args.instance = True
    # with --depth and no instance weights: unseen objects from depth, no model
    args.depth_objects = args.depth and args.instance_weights is None
    if args.instance_weights is None:
        args.instance_weights = 'DEFAULT' if args.depth_objects else 'none'
    args.use_semantic = args.semantic or not args.depth
    if args.out is None:
        args.out = ROOT / 'out' / ('demo_depth' if args.depth else
                                   'demo_instance' if args.instance else 'demo')
    files, source = check_source(args)
    transports = large_data_transport()

    if args.depth and args.rgbd is not None:
        frames = rgbd_folder_frames(args.rgbd, args.frames)
        source = f'RGB-D folder {args.rgbd}'
    elif args.depth:
        frames = rgbd_frames(args.frames)
        source = 'synthetic RGB-D tabletop (seg_ros.synthetic.rgbd_scene)'
    elif args.video:
        frames = video_frames(args.video, args.frames)
    elif files is not None:
        frames = image_frames(files)
    else:
        frames = generated_frames(args.frames)

    weights = args.weights
    if weights is None:
        shipped = WEIGHTS_DIR / SHIPPED_SEMANTIC['camvid']['file']
        weights = 'camvid' if shipped.is_file() else 'none'
    random_models = []
    if weights.lower() == 'none' and args.use_semantic:
        random_models.append('semantic')
        why = ('requested with --weights none' if args.weights is not None else
               'the shipped model is missing')
        print(f'demo: NOTE: semantic model has RANDOM WEIGHTS ({why}) -- the labels show the '
              'pipeline working, not a meaningful segmentation', flush=True)
    if args.instance and args.instance_weights.lower() == 'none':
        random_models.append('instance')
        print('demo: NOTE: instance model (Mask R-CNN) has RANDOM WEIGHTS (the shipped '
              'tabletop model knows boxes and cylinders on a table, not street scenes; '
              '--instance-weights FILE uses yours) -- detections and masks show the '
              'pipeline working, not real objects', flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    # the node's rcl log files inside the repository too (not ~/.ros/log), and what ONNX
    # Runtime writes when it loads (a device id and a telemetry database under
    # $XDG_CACHE_HOME/Microsoft/DeveloperTools, ~/.cache by default)
    os.environ.setdefault('ROS_LOG_DIR', str(ROOT / 'out' / 'ros_log'))
    os.environ.setdefault('XDG_CACHE_HOME', str(ROOT / '.cache'))
    domain = args.domain if args.domain is not None else own_domain()
    # the backend's export cache inside the repository (out/ is ignored by git): the demo
    # writes nothing outside it; `-- -p backend.cache_dir:=...` overrides
    # warm up at the size(s) the frames have: the first frame then pays no export
    frames = list(frames)
    sizes = list(dict.fromkeys(f'{f[1].shape[1]}x{f[1].shape[0]}' for f in frames))[:3]
    node_args = ['-p', f'device:={args.device}', '-p', f'semantic.weights:={weights}',
                 '-p', f'backend.cache_dir:={ROOT / "out" / "backend_cache"}',
                 '-p', f'warmup_size:={",".join(sizes) or "320x240"}',
                 '-r', 'image:=/camera/image']
    if args.depth_objects:
        node_args += ['-p', 'instance.enabled:=true', '-p', 'instance.model:=depth_objects']
    elif args.instance:
        node_args += ['-p', 'instance.enabled:=true',
                      '-p', f'instance.weights:={args.instance_weights}']
    if not args.use_semantic:
        node_args += ['-p', 'semantic.enabled:=false']
    if args.depth:  # objects keep their ids from frame to frame (they slide a little)
        node_args += ['-p', 'depth.enabled:=true', '-p', 'instance.tracking:=true',
                      '-r', 'depth:=/camera/depth', '-r', 'camera_info:=/camera/camera_info']
    log = args.out / 'node.log'
    shown = ([f'semantic.weights={weights}'] if args.use_semantic else []) + (
        ['instance.model=depth_objects'] if args.depth_objects else
        [f'instance.weights={args.instance_weights}'] if args.instance else [])
    print(f'demo: starting segment_node ({", ".join(shown)}, log {log})', flush=True)
    try:
        with served([node_args + extra], domain, [log], 'seg_ros_demo',
                    ready_timeout=300) as (_, client):
            return run(args, client, frames, source, weights, random_models, transports)
    except RuntimeError as exc:
        if 'exited' not in str(exc):
            raise
        lines = [ln for ln in log.read_text().splitlines() if 'cannot start' in ln]
        raise SystemExit('demo: ' + (lines[-1] if lines else
                                     f'segment_node exited; see {log}')) from None


def run(args, client: Client, frames, source, weights, random_models, transports) -> int:
    got = {'labels': client.collect(Image, f'{NODE}/semantic/labels'),
           'color': client.collect(Image, f'{NODE}/semantic/color')} if args.use_semantic else {}
    if args.instance:
        got['masks'] = client.collect(Image, f'{NODE}/instances/masks')
        got['dets'] = client.collect(Detection2DArray, f'{NODE}/instances/detections')
        got['overlay'] = client.collect(Image, f'{NODE}/instances/overlay')
    if args.depth:
        got['dets3d'] = client.collect(Detection3DArray, f'{NODE}/instances/detections_3d')
        got['ipts'] = client.collect(PointCloud2, f'{NODE}/instances/points')
        if args.use_semantic:
            got['spts'] = client.collect(PointCloud2, f'{NODE}/semantic/points')
        pub_depth = client.node.create_publisher(Image, '/camera/depth', 5)
        pub_info = client.node.create_publisher(CameraInfo, '/camera/camera_info', 5)
    info = client.collect(LabelInfo, f'{NODE}/semantic/label_info' if args.use_semantic
                          else f'{NODE}/instances/label_info', LATCHED)
    pub = client.node.create_publisher(Image, '/camera/image', 1)
    client.spin_until(lambda: pub.get_subscription_count() > 0 and info, 30)
    class_names = [c.class_name for c in next(iter(info.values()))[0].class_map] \
        if info else []
    # Wait for every output the demo writes (the overlay arrives after masks/detections).
    waits = [got[k] for k in ('labels', 'color', 'masks', 'dets', 'overlay', 'dets3d',
                              'ipts', 'spts') if k in got]

    latencies, n_sent = [], 0
    for i, (name, rgb, *rgbd) in enumerate(frames):
        stamp = 10**9 * (i + 1)
        n_sent += 1
        before = None
        if args.depth:  # depth and camera_info first, with the colour image's stamp
            depth_mm, k, p = rgbd
            client.spin_until(lambda: pub_depth.get_subscription_count() > 0
                              and pub_info.get_subscription_count() > 0, 30)
            info_msg = camera_info_msg(k, p, rgb.shape[1], rgb.shape[0], stamp)
            depth_msg = frame_msg(depth_mm, stamp, encoding='16UC1')

            def before(info_msg=info_msg, depth_msg=depth_msg) -> None:
                # again with every (re)send: the node's best-effort readers may not have
                # matched our writers yet when the first ones went out
                pub_info.publish(info_msg)
                pub_depth.publish(depth_msg)
                client.spin_until(lambda: False, 0.1)
        lat = client.exchange(pub, frame_msg(rgb, stamp), waits, timeout=args.timeout,
                              resend=5.0 if args.depth else 20.0, before=before)
        if lat is None:
            print(f'demo: frame {name}: no answer within {args.timeout}s', flush=True)
            continue
        latencies.append(lat)
        line = f'demo: {name}: {rgb.shape[1]}x{rgb.shape[0]}, {lat * 1000:.0f} ms'
        if args.use_semantic:
            labels = decode(got['labels'][stamp][0])[:, :, 0]
            PILImage.fromarray(labels).save(args.out / f'{name}_labels.png')
            PILImage.fromarray(decode(got['color'][stamp][0])).save(
                args.out / f'{name}_color.png')
        if args.instance:
            masks = decode(got['masks'][stamp][0])[:, :, 0]
            PILImage.fromarray(masks).save(args.out / f'{name}_instances.png')  # raw ids
            PILImage.fromarray(instance_colors(masks)).save(
                args.out / f'{name}_instances_color.png')
            PILImage.fromarray(decode(got['overlay'][stamp][0])).save(
                args.out / f'{name}_overlay.png')
            line += f', {len(got["dets"][stamp][0].detections)} instances'
        if args.depth:
            d3 = got['dets3d'][stamp][0]
            ipts = cloud_array(got['ipts'][stamp][0], ('x', 'y', 'z', 'id'))
            spts = (cloud_array(got['spts'][stamp][0], ('x', 'y', 'z', 'label', 'rgb'))
                    if 'spts' in got else None)
            PILImage.fromarray(views_3d(ipts, spts, d3)).save(args.out / f'{name}_3d.png')
            (args.out / f'{name}_detections_3d.json').write_text(json.dumps([
                {'id': d.id, 'class': d.results[0].hypothesis.class_id,
                 'score': d.results[0].hypothesis.score,
                 'position_m': [d.results[0].pose.pose.position.x,
                                d.results[0].pose.pose.position.y,
                                d.results[0].pose.pose.position.z],
                 'size_m': [d.bbox.size.x, d.bbox.size.y, d.bbox.size.z]}
                for d in d3.detections], indent=1))
            line += f', {len(d3.detections)} in 3D, {len(ipts)} instance points' + (
                f', {len(spts)} semantic points' if spts is not None else '')
            line += ''.join(  # track id, class and position (m, camera frame) of each
                f'\n    id {d.id} {d.results[0].hypothesis.class_id} '
                f'{d.results[0].hypothesis.score:.2f} at ('
                + ', '.join(f'{v:+.3f}' for v in (d.results[0].pose.pose.position.x,
                                                 d.results[0].pose.pose.position.y,
                                                 d.results[0].pose.pose.position.z)) + ') m'
                for d in sorted(d3.detections, key=lambda d: int(d.id))[:8])
        print(line, flush=True)
    lat_ms = np.array(latencies) * 1000
    summary = {
        'source': source, 'weights': weights,
        'instance_weights': args.instance_weights if args.instance and not
        args.depth_objects else None,
        'instance_model': 'depth_objects' if args.depth_objects else None,
        'random_weights': bool(random_models), 'random_models': random_models,
        'dds_transports': transports, 'frames_sent': n_sent,
        'frames_answered': len(latencies), 'class_names': class_names,
        'latency_ms': ({'p50': float(np.percentile(lat_ms, 50)),
                        'p95': float(np.percentile(lat_ms, 95)),
                        'max': float(lat_ms.max()), 'first': float(lat_ms[0])}
                       if len(lat_ms) else None),
        'semantic': args.use_semantic,
        'note': 'latency = publish to receipt of the frame\'s last output over DDS (every '
                'output the demo writes), one frame at a time (no queueing); both processes '
                f'use FASTDDS_BUILTIN_TRANSPORTS={transports}',
    }
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != 'class_names'}, indent=2))
    print(f'demo: wrote {len(latencies)} of {n_sent} frames to {args.out}', flush=True)
    if n_sent == 0:
        print(f'demo: no frame could be read from {source}', flush=True)
    return 0 if latencies and len(latencies) == n_sent else 1


if __name__ == '__main__':
    sys.exit(main())
