"""Write generated RGB-D tabletop scenes as a COCO instance dataset.

    scripts/with_env make_tabletop --out DIR --scenes 400 [--seed 0] [--size 640x480]
        [--renderer random|simple]

DIR/images/NNNNNN.png (RGB), DIR/depth/NNNNNN.png (16-bit millimetres, 0 = no return),
DIR/annotations.json (COCO: categories ``box`` and ``cylinder``, masks as compressed RLE,
camera intrinsics under each image's ``k``). Scene ``i`` is rendered from seed
``(seed, i)``, so a set is reproducible and two seeds give disjoint sets. Scenes are
rendered by ``--workers`` processes (default: the CPU count).

``--renderer random`` (default) is :mod:`seg_ros.synthetic.tabletop` (randomised camera, light,
textures, shapes); ``--renderer simple`` is the other renderer of the package,
:mod:`seg_ros.synthetic.rgbd_scene` (the demo's: straight down, flat colours, axis-aligned
boxes and upright cylinders at random places), a look the models were never trained on.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from seg_ros.synthetic import rgbd_scene, tabletop
from seg_ros.training.coco import annotation, write_coco


def simple_scene(rng: np.random.Generator, width: int, height: int) -> tabletop.Scene:
    """A scene of :mod:`seg_ros.synthetic.rgbd_scene`: 2-8 boxes and upright cylinders of random
    sizes and colours, not overlapping, on its striped table 0.6-1.0 m below.
    """
    table_z = float(rng.uniform(0.6, 1.0))
    half_w = table_z * np.tan(np.radians(30)) * 0.8
    objects: list = []
    for _ in range(60):
        if len(objects) >= rng.integers(2, 9):
            break
        x, y = rng.uniform(-half_w, half_w), rng.uniform(-half_w * 0.7, half_w * 0.7)
        color = tuple(int(c) for c in rng.integers(20, 235, 3))
        if rng.random() < 0.5:
            obj = rgbd_scene.Box(x, y, rng.uniform(0.03, 0.14), rng.uniform(0.03, 0.14),
                                 rng.uniform(0.02, 0.2), color)
            r = float(np.hypot(obj.sx, obj.sy)) / 2
        else:
            obj = rgbd_scene.Cylinder(x, y, rng.uniform(0.02, 0.06), rng.uniform(0.03, 0.2),
                                      color)
            r = obj.radius
        if all(np.hypot(x - o.x, y - o.y) > r + rr + 0.01 for o, rr in objects):
            objects.append((obj, r))
    sc = rgbd_scene.render(width, height, [o for o, _ in objects], table_z,
                           seed=int(rng.integers(1 << 30)))
    solids = [tabletop.Solid('box' if isinstance(o, rgbd_scene.Box) else 'cylinder',
                             (o.x, o.y, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
                             (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 'solid', 0.0)
              for o, _ in objects]
    return tabletop.Scene(sc.rgb, sc.depth, sc.object_map.astype(np.int32), sc.k, solids)


def _render_one(job: tuple[int, int, int, int, str, str]
                ) -> tuple[dict, list[tuple[int, np.ndarray]]]:
    seed, index, width, height, out, renderer = job
    rng = np.random.default_rng([seed, index])
    scene = (simple_scene(rng, width, height) if renderer == 'simple' else
             tabletop.render(rng, width, height))
    name = f'{index:06d}.png'
    Image.fromarray(scene.rgb).save(Path(out) / 'images' / name)
    mm = np.clip(np.round(scene.depth * 1000.0), 0, 65535).astype(np.uint16)
    Image.fromarray(mm).save(Path(out) / 'depth' / name)
    image = {'id': index + 1, 'file_name': name, 'width': width, 'height': height,
             'k': scene.k}
    objects = [(tabletop.CLASSES.index(cls) + 1, mask) for cls, mask in scene.instances()]
    return image, objects


def make(out: Path, scenes: int, seed: int = 0, width: int = 640, height: int = 480,
         workers: int = 0, renderer: str = 'random') -> Path:
    """Render ``scenes`` scenes into ``out``; returns the annotation file's path."""
    (out / 'images').mkdir(parents=True, exist_ok=True)
    (out / 'depth').mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, width, height, str(out), renderer) for i in range(scenes)]
    images, anns = [], []
    workers = workers or os.cpu_count() or 1
    with contextlib.ExitStack() as stack:  # one worker: no process pool (no fork)
        pool = stack.enter_context(ProcessPoolExecutor(workers)) if workers > 1 else None
        results = pool.map(_render_one, jobs, chunksize=4) if pool else map(_render_one, jobs)
        for image, objects in results:
            images.append(image)
            for cat, mask in objects:
                anns.append(annotation(len(anns) + 1, image['id'], cat, mask))
            print(f'\rscenes {len(images)}/{scenes}', end='', file=sys.stderr, flush=True)
    print(file=sys.stderr)
    path = out / 'annotations.json'
    write_coco(path, images, anns, tabletop.CLASSES)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, required=True, help='dataset folder to write')
    ap.add_argument('--scenes', type=int, default=400)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--size', default='640x480', help='WIDTHxHEIGHT')
    ap.add_argument('--workers', type=int, default=0)
    ap.add_argument('--renderer', choices=('random', 'simple'), default='random')
    args = ap.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split('x'))
    except ValueError:
        ap.error(f'--size must be WIDTHxHEIGHT, got {args.size!r}')
    if args.scenes < 1 or width < 32 or height < 32:
        ap.error('--scenes must be >= 1 and the size at least 32x32')
    path = make(args.out, args.scenes, args.seed, width, height, args.workers, args.renderer)
    print(f'wrote {args.scenes} scenes: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
