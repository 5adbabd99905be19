#!/usr/bin/env python3
"""The main job: replay a camera stream into segment_node and save what it publishes.

    scripts/demo                        # CamVid val frames if ../shared is there, else
                                        # generated street-like frames
    scripts/demo --images DIR           # a folder of images (png/jpg, sorted by name)
    scripts/demo --video FILE.mp4       # a video (OpenCV)
    scripts/demo --instance             # also Mask R-CNN (random weights offline)
    scripts/demo -- -p semantic.input_size:=240   # extra node arguments after --

segment_node runs as a separate process (as `ros2 run seg_ros segment_node` would) in its
own ROS domain; this script publishes each frame as sensor_msgs/Image on /camera/image,
waits for the answers, and writes labels (mono PNG), colour images, instance masks and
overlays to OUT/, plus OUT/summary.json with frame count and publish-to-receipt latency.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from seg_ros.core.models import SHIPPED_SEMANTIC, WEIGHTS_DIR  # noqa: E402
from seg_ros.ros.remote import (  # noqa: E402
    LATCHED,
    Client,
    NodeProcess,
    decode,
    frame_msg,
    large_data_transport,
)

CAMVID_VAL = ROOT.parent / 'shared' / 'data' / 'camvid' / 'val'
NODE = '/segmentation'


def generated_frames(n: int, h: int = 360, w: int = 480):
    """Street-like synthetic frames: sky, buildings, road, a moving car-like box."""
    y, x = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[: h // 3] = (135, 170, 215)                           # sky
        img[h // 3: h // 2] = (120, 90, 80)                       # buildings
        img[h // 2:] = (90, 90, 95)                               # road
        img[(x > w // 2 - 3) & (x < w // 2 + 3) & (y > h // 2)] = (240, 240, 240)
        cx = (60 + 25 * i) % w
        img[int(h * 0.55): int(h * 0.75), max(cx - 50, 0): cx + 50] = (200, 30, 30)
        yield f'generated_{i:04d}', img


def image_frames(folder: Path, n: int):
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in ('.png', '.jpg', '.jpeg', '.bmp'))
    for p in files[:n]:
        yield p.stem, np.asarray(PILImage.open(p).convert('RGB'))


def video_frames(path: Path, n: int):
    import cv2  # only the video option needs OpenCV
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f'cannot open video {path}')
    i = 0
    while i < n:
        ok, bgr = cap.read()
        if not ok:
            break
        yield f'{path.stem}_{i:05d}', np.ascontiguousarray(bgr[:, :, ::-1])
        i += 1
    cap.release()


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if '--' in argv:
        extra = argv[argv.index('--') + 1:]
        argv = argv[:argv.index('--')]
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument('--images', type=Path, help='folder of images')
    src.add_argument('--video', type=Path, help='video file')
    ap.add_argument('--frames', type=int, default=12, help='number of frames to replay')
    ap.add_argument('--out', type=Path, default=ROOT / 'out' / 'demo')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--weights', default=None,
                    help='semantic.weights (default: camvid when shipped, else none)')
    ap.add_argument('--instance', action='store_true', help='enable instance segmentation')
    ap.add_argument('--timeout', type=float, default=120.0, help='seconds to wait per frame')
    args = ap.parse_args(argv)
    transports = large_data_transport()

    if args.images:
        frames, source = image_frames(args.images, args.frames), str(args.images)
    elif args.video:
        frames, source = video_frames(args.video, args.frames), str(args.video)
    elif CAMVID_VAL.is_dir():
        frames, source = image_frames(CAMVID_VAL, args.frames), str(CAMVID_VAL)
    else:
        frames, source = generated_frames(args.frames), 'generated frames'

    weights = args.weights
    if weights is None:
        shipped = WEIGHTS_DIR / SHIPPED_SEMANTIC['camvid']['file']
        weights = 'camvid' if shipped.is_file() else 'none'
    random_weights = weights.lower() == 'none'
    if random_weights:
        print('demo: NOTE: RANDOM WEIGHTS (no trained model available here) -- the labels '
              'show the pipeline working, not a meaningful segmentation', flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    domain = 50 + os.getpid() % 50
    node_args = ['-p', f'device:={args.device}', '-p', f'semantic.weights:={weights}',
                 '-r', 'image:=/camera/image']
    if args.instance:
        node_args += ['-p', 'instance.enabled:=true', '-p', 'instance.weights:=none',
                      '-p', 'instance.min_size:=480']
    node = NodeProcess(node_args + extra, domain, args.out / 'node.log')
    client = None
    try:
        print(f'demo: starting segment_node (weights={weights}, log {node.log_path})',
              flush=True)
        node.wait_ready(300)
        client = Client(domain, 'seg_ros_demo')
        return run(args, client, frames, source, weights, random_weights, transports)
    finally:
        if client is not None:
            client.close()
        node.stop()


def run(args, client: Client, frames, source, weights, random_weights, transports) -> int:
    got = {'labels': client.collect(Image, f'{NODE}/semantic/labels'),
           'color': client.collect(Image, f'{NODE}/semantic/color')}
    if args.instance:
        got['masks'] = client.collect(Image, f'{NODE}/instances/masks')
        got['dets'] = client.collect(Detection2DArray, f'{NODE}/instances/detections')
        got['overlay'] = client.collect(Image, f'{NODE}/instances/overlay')
    info = client.collect(LabelInfo, f'{NODE}/semantic/label_info', LATCHED)
    pub = client.node.create_publisher(Image, '/camera/image', 1)
    client.spin_until(lambda: pub.get_subscription_count() > 0 and info, 30)
    class_names = [c.class_name for c in next(iter(info.values()))[0].class_map] \
        if info else []
    waits = [got[k] for k in ('labels', 'color', 'masks', 'dets') if k in got]

    latencies, n_sent = [], 0
    for i, (name, rgb) in enumerate(frames):
        stamp = 10**9 * (i + 1)
        n_sent += 1
        lat = client.exchange(pub, frame_msg(rgb, stamp), waits, timeout=args.timeout,
                              resend=20.0)
        if lat is None:
            print(f'demo: frame {name}: no answer within {args.timeout}s', flush=True)
            continue
        latencies.append(lat)
        labels = decode(got['labels'][stamp][0])[:, :, 0]
        PILImage.fromarray(labels).save(args.out / f'{name}_labels.png')
        PILImage.fromarray(decode(got['color'][stamp][0])).save(args.out / f'{name}_color.png')
        line = f'demo: {name}: {labels.shape[1]}x{labels.shape[0]}, {lat * 1000:.0f} ms'
        if args.instance:
            masks = decode(got['masks'][stamp][0])[:, :, 0]
            PILImage.fromarray(masks).save(args.out / f'{name}_instances.png')
            if stamp in got['overlay']:
                PILImage.fromarray(decode(got['overlay'][stamp][0])).save(
                    args.out / f'{name}_overlay.png')
            line += f', {len(got["dets"][stamp][0].detections)} instances'
        print(line, flush=True)
    lat_ms = np.array(latencies) * 1000
    summary = {
        'source': source, 'weights': weights, 'random_weights': random_weights,
        'dds_transports': transports, 'frames_sent': n_sent,
        'frames_answered': len(latencies), 'class_names': class_names,
        'latency_ms': ({'p50': float(np.percentile(lat_ms, 50)),
                        'p95': float(np.percentile(lat_ms, 95)),
                        'max': float(lat_ms.max()), 'first': float(lat_ms[0])}
                       if len(lat_ms) else None),
        'note': 'latency = publish to receipt of the label image over DDS, one frame at a '
                'time (no queueing); both processes use FASTDDS_BUILTIN_TRANSPORTS='
                f'{transports}',
    }
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != 'class_names'}, indent=2))
    print(f'demo: wrote {len(latencies)} frames to {args.out}', flush=True)
    return 0 if latencies and len(latencies) == n_sent else 1


if __name__ == '__main__':
    sys.exit(main())
