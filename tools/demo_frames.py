"""Frame sources of tools/demo.py: generated street frames, a generated RGB-D tabletop, a
folder of images, a video; and the check that refuses a bad source before anything starts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from seg_ros.synthetic.rgbd_scene import Box, Cylinder, default_objects, render

ROOT = Path(__file__).resolve().parent.parent
CAMVID_VAL = ROOT.parent / 'shared' / 'data' / 'camvid' / 'val'

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


IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


def rgbd_frames(n: int, h: int = 360, w: int = 480):
    """A tabletop seen from 0.8 m above (seg_ros.synthetic.rgbd_scene), objects sliding a little
    from frame to frame: (name, rgb, depth in mm as 16UC1, k, p)."""
    for i in range(n):
        objs = [Box(o.x + 0.01 * i, o.y, o.sx, o.sy, o.height, o.color) if isinstance(o, Box)
                else Cylinder(o.x, o.y + 0.005 * i, o.radius, o.height, o.color)
                for o in default_objects()]
        sc = render(w, h, objs, seed=i)
        yield f'rgbd_{i:04d}', sc.rgb, sc.depth_16uc1(), sc.k, sc.p


def image_files(folder: Path) -> list[Path]:
    """The images of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def spread(files: list[Path], n: int) -> list[Path]:
    """``n`` files spread evenly over the whole list (first and last included)."""
    if n >= len(files):
        return files
    idx = np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))
    return [files[i] for i in idx]


def image_frames(files: list[Path]):
    for p in files:
        yield p.stem, np.asarray(PILImage.open(p).convert('RGB'))


def video_frames(path: Path, n: int):
    import cv2  # only the video option needs OpenCV
    cap = cv2.VideoCapture(str(path))
    i = 0
    while i < n:
        ok, bgr = cap.read()
        if not ok:
            break
        yield f'{path.stem}_{i:05d}', np.ascontiguousarray(bgr[:, :, ::-1])
        i += 1
    cap.release()


def check_source(args) -> tuple[list[Path] | None, str]:
    """Refuse a bad source or device before anything starts (one line, SystemExit 2)."""
    if args.frames < 1:
        raise SystemExit('demo: --frames must be at least 1')
    if args.device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f'demo: --device {args.device}: CUDA is not available on this '
                             'machine (use --device cpu or auto)')
    if args.video:
        if not args.video.is_file():
            raise SystemExit(f'demo: --video {args.video}: no such file')
        import cv2
        cap = cv2.VideoCapture(str(args.video))
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
        if not ok:
            raise SystemExit(f'demo: --video {args.video}: cannot read a frame (not a video '
                             'OpenCV can decode?)')
        return None, str(args.video)
    folder = args.images if args.images else (CAMVID_VAL if CAMVID_VAL.is_dir() else None)
    if folder is None:
        return None, 'generated frames'
    if not folder.is_dir():
        raise SystemExit(f'demo: --images {folder}: no such folder')
    files = image_files(folder)
    if not files:
        raise SystemExit(f'demo: --images {folder}: no images in it (looked for '
                         f'{", ".join(IMAGE_SUFFIXES)})')
    return spread(files, args.frames), str(folder)


def rgbd_folder_frames(folder: Path, n: int):
    """Frames of an RGB-D folder: ``images/`` (colour), ``depth/`` (16-bit millimetres, same
    names and pixel grid) and ``camera_params.json`` (``fx``, ``fy``, ``x_offset``,
    ``y_offset``, as the UOIS example images and ../shared/data/rgbd_real have them):
    (name, rgb, depth_mm, k, p), ``n`` spread over the folder (0 = all).
    """
    import json
    params = json.loads((folder / 'camera_params.json').read_text())
    fx, fy = float(params['fx']), float(params['fy'])
    cx, cy = float(params['x_offset']), float(params['y_offset'])
    k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    files = image_files(folder / 'images')
    for f in (spread(files, n) if n else files):
        rgb = np.asarray(PILImage.open(f).convert('RGB'))
        d = folder / 'depth' / f.name
        if not d.is_file():
            raise SystemExit(f'demo: {d} missing (depth/ must hold one PNG per colour image)')
        depth = np.asarray(PILImage.open(d))
        if depth.dtype != np.uint16 and depth.dtype != np.int32:
            raise SystemExit(f'demo: {d} is not 16-bit depth in millimetres')
        yield f.stem, rgb, depth.astype(np.uint16), k, p
