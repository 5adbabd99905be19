#!/usr/bin/env python3
"""Benchmark: where each frame's time goes in the node, against the bare model, in one run.

    scripts/with_env python tools/benchmark.py --quick           # lraspp 640x480, every backend
    scripts/with_env python tools/benchmark.py --configs lraspp --sizes 640x480 1920x1080 \\
        --backends torch onnxruntime openvino openvino:bf16 --json out/bench.json

``segment_node`` runs as a separate process (LARGE_DATA transports on both ends); this
process publishes ``sensor_msgs/Image`` frames one at a time and measures publish -> receipt
of every output. For each configuration, image size and backend:

* **decomposition, per frame (the headline)**: the node times its model call alone (the
  torch forward, or the backend's compiled graph) and publishes it per frame on
  ``~/timing``; everything else -- conversion, normalisation, class maximum, host copy,
  message building, publishing, DDS both ways -- is the rest of that frame's end-to-end
  time. The ratio end-to-end / forward is taken per frame (both numbers come from the same
  moment, so the VM's drift cancels) and its median is the headline;
* **check across processes**: before or after every node frame (the order flips every
  pair), the bare eager PyTorch forward (fp32, channels-last, on a prepared normalised
  tensor, the same architecture and size) runs in this otherwise idle process; per pair
  the ratio node end-to-end / bare forward; its median is reported beside the headline.
  For a non-torch backend this is the "node vs eager PyTorch" figure;
* a **quiet gap** (``--gap``, 0.3 s) precedes every sample: an idle thread pool keeps
  spinning on the two cores for a while after its work;
* the node's stage medians (``/diagnostics`` ``stage.*``) say where the rest goes.

Model weights are random (no hub here), one seeded file per model shared by the node and
this process (``out/bench_<model>.pt``), except ``camvid`` (the shipped CamVid model at its
own input size, on a CamVid val frame: the node's defaults; the bare forward runs at that
input size too): timing should not depend on the weights' values, except for the int8
graphs' class maximum (fewer class boundaries, less work) and Mask R-CNN, whose detection
count drives the mask head; ``--instance-threshold`` fixes it (default 0.0: up to
max_detections = 100 instances, the worst case).
Instance configs (``maskrcnn_v1``, ``maskrcnn_v2``, ``maskrcnn_light``, ``tabletop``) run
on every ``--backends`` entry as ``instance.backend`` (the compiled trunk and heads);
``--instances 10`` fixes 10 instances a frame (threshold 0, ``max_detections`` 10); the bare
model has the node's default resize (none) and proposal cap (``instance.max_proposals``);
``--bare-torchvision-defaults`` makes it what a torchvision user runs (resize to 800/1333,
1000 proposals) while the node keeps its defaults; ``--node-param`` sets a node parameter
(e.g. ``instance.max_proposals:=0`` for torchvision's proposal count in the node too):

    scripts/with_env python tools/benchmark.py --configs maskrcnn_v2 --sizes 640x480 \
        --instances 10 --backends torch auto --bare-torchvision-defaults

``--stream-seconds`` adds a 30 Hz stream (output rate, latency trend, RSS) for the
``--stream-configs``.

Many cameras: ``tools/bench_cameras.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import (
    ROOT,
    SIZES,
    machine_facts,
    pct,
    print_table,
    random_weights,
    rss_mb,
    scene,
    tabletop_scene,
)

from seg_ros.core.config.params import BY_NAME
from seg_ros.core.inference.pipeline import resolve_device
from seg_ros.core.inference.semantic import SemanticSegmenter, resize_shorter
from seg_ros.core.models import backends
from seg_ros.core.models.registry import load_instance_model, load_semantic_model

CONFIGS = {
    'lraspp': {'semantic': 'lraspp_mobilenet_v3_large'},
    # the shipped CamVid model as the node runs it by default (its own input size, shorter
    # side 360, then back to the image's) on a CamVid val frame (../shared/data/camvid)
    'camvid': {'semantic': 'lraspp_mobilenet_v3_large', 'semantic_weights': 'camvid',
               'scene': 'camvid'},
    'deeplabv3_resnet50': {'semantic': 'deeplabv3_resnet50'},
    'maskrcnn_v1': {'instance': 'maskrcnn_resnet50_fpn'},
    'maskrcnn_v2': {'instance': 'maskrcnn_resnet50_fpn_v2'},
    'maskrcnn_light': {'instance': 'maskrcnn_mobilenet_v3_large_fpn'},
    # the shipped tabletop model on a generated tabletop scene, at the node's default
    # thresholds: as many instances as it finds (the scene's objects)
    'tabletop': {'instance': 'maskrcnn_mobilenet_v3_large_fpn', 'weights': 'tabletop',
                 'scene': 'tabletop', 'threshold': 0.5},
    'lraspp+maskrcnn_v2': {'semantic': 'lraspp_mobilenet_v3_large',
                           'instance': 'maskrcnn_resnet50_fpn_v2'},
}


def bare_forward(cfg: dict, device, rgb: np.ndarray, threshold: float,
                 weights: dict[str, str] | None = None, max_detections: int = 100,
                 torchvision_defaults: bool = False):
    """The floor: the eager torchvision model's call alone, fp32, channels-last, on a
    prepared (normalised) tensor on the device; returns a function timing one call.

    ``torchvision_defaults``: the instance model as a torchvision user runs it (its own
    resize, shorter side 800 / longer at most 1333), not at the image's own size.
    """
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(device)
    calls = []
    weights = weights or {}
    if 'semantic' in cfg:
        shipped = 'semantic_weights' in cfg  # at the weights' own input size
        sem = SemanticSegmenter(load_semantic_model(cfg['semantic'], weights.get(
            'semantic', 'none'), 0 if shipped else 21, device=device), device,
            input_size=-1 if shipped else 0)
        xs = sem.normalise(resize_shorter(x, sem.input_size))
        calls.append(lambda: sem.model(xs))
    if 'instance' in cfg:
        w = weights.get('instance', 'none')
        m = load_instance_model(cfg['instance'], w, 91 if w == 'none' else 0, device=device,
                                score_threshold=threshold, max_detections=max_detections,
                                min_size=800 if torchvision_defaults else 0,
                                max_size=1333 if torchvision_defaults else 0,
                                max_proposals=0 if torchvision_defaults else
                                BY_NAME['instance.max_proposals'].default).model
        calls.append(lambda: m([x[0]]))

    @torch.inference_mode()
    def once() -> float:
        t0 = time.perf_counter()
        for c in calls:
            c()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return once


def camvid_scene(h: int, w: int) -> np.ndarray:
    """The first CamVid val frame (../shared/data/camvid/val) at (h, w); the generated
    scene when the data is not there.
    """
    from PIL import Image
    files = sorted((ROOT.parent / 'shared' / 'data' / 'camvid' / 'val').glob('*.png'))
    if not files:
        return scene(h, w)
    return np.asarray(Image.open(files[0]).convert('RGB').resize((w, h), Image.BILINEAR))


def parse_backend(spec: str) -> tuple[str, str]:
    """``openvino:bf16`` -> ('openvino', 'bf16'); ``torch`` -> ('torch', 'fp32')."""
    name, _, precision = spec.partition(':')
    return name, precision or 'fp32'


def node_args(cfg: dict, threshold: float, backend: str = 'torch',
              precision: str = 'fp32', cache_dir: str = '',
              weights: dict[str, str] | None = None, max_detections: int = 100) -> list[str]:
    weights = weights or {}
    args = ['-p', 'device:=' + ('cuda' if torch.cuda.is_available() else 'cpu'),
            '-r', 'image:=/bench/image', '-p', 'diagnostics_period:=1.0',
            '-p', f'precision:={precision}']
    if cache_dir:
        args += ['-p', f'backend.cache_dir:={cache_dir}']
    if 'semantic' in cfg:
        args += ['-p', f'semantic.model:={cfg["semantic"]}',
                 '-p', f'semantic.weights:={weights.get("semantic", "none")}',
                 '-p', f'semantic.backend:={backend}']
        if 'semantic_weights' not in cfg:  # shipped weights: their classes and input size
            args += ['-p', 'semantic.num_classes:=21', '-p', 'semantic.input_size:=0']
    else:
        args += ['-p', 'semantic.enabled:=false']
    if 'instance' in cfg:
        args += ['-p', 'instance.enabled:=true', '-p', f'instance.model:={cfg["instance"]}',
                 '-p', f'instance.weights:={weights.get("instance", "none")}',
                 '-p', f'instance.score_threshold:={threshold}',
                 '-p', f'instance.max_detections:={max_detections}',
                 '-p', f'instance.backend:={backend}']
    return args


def node_bench(cfg: dict, rgb: np.ndarray, n: int, stream_s: float, threshold: float,
               log_dir: Path, bare, backend: str = 'torch', precision: str = 'fp32',
               gap: float = 0.3, weights: dict[str, str] | None = None,
               max_detections: int = 100, extra: list[str] | None = None) -> dict:
    """One node: per frame its end-to-end time and its own forward (``~/timing``); the
    bare forward ``bare()`` alternates with the node frames (order flipped every pair),
    a quiet gap before each sample.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray
    from vision_msgs.msg import Detection2DArray

    from seg_ros.testing.remote import frame_msg, own_domain, served
    domain = own_domain(60, 40)
    out: dict = {}
    h, w = rgb.shape[:2]
    args = node_args(cfg, threshold, backend, precision, str(log_dir / 'backend_cache'),
                     weights, max_detections) + ['-p', f'warmup_size:={w}x{h}']
    for kv in extra or ():
        args += ['-p', kv]
    with served([args], domain, [log_dir / 'bench_node.log'],
                'seg_ros_bench') as (nodes, client):
        node = nodes[0]
        boxes = []
        if 'semantic' in cfg:
            boxes.append(client.collect(Image, '/segmentation/semantic/labels'))
        if 'instance' in cfg:
            boxes.append(client.collect(Detection2DArray, '/segmentation/instances/detections'))
            boxes.append(client.collect(Image, '/segmentation/instances/masks'))
        diags: list = []
        client.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
        timing: dict[int, tuple[float, float]] = {}  # stamp ns -> (forward, processing)

        def on_timing(m) -> None:
            timing[int(round(m.data[0] * 1e9))] = (m.data[1], m.data[2])
        client.node.create_subscription(Float64MultiArray, '/segmentation/timing', on_timing,
                                        100)
        pub = client.node.create_publisher(Image, '/bench/image', 10)
        client.spin_until(lambda: pub.get_subscription_count() > 0, 30)
        # Let reliability auto settle on our (reliable) publisher before measuring.
        client.spin_until(lambda: 'reliability reliable' in node.log(), 10)
        warm = 3  # the first frames compile the backend for this size, fill caches
        msgs = [frame_msg(rgb, 10**9 * (i + 1)) for i in range(n + warm)]
        e2e, fwd, proc, bare_s, count = [], [], [], [], []

        def node_frame(i: int) -> None:
            key = 10**9 * (i + 1)
            done = lambda: all(key in b for b in boxes) and key in timing  # noqa: E731
            t0 = time.perf_counter()
            pub.publish(msgs[i])
            if not client.spin_until(done, 600):
                raise RuntimeError(f'node did not answer frame {i}:\n{node.log()}')
            if i >= warm:
                if 'instance' in cfg:
                    count.append(len(boxes[-2][key][0].detections))
                e2e.append(max(b[key][1] for b in boxes) - t0)
                fwd.append(timing[key][0])
                proc.append(timing[key][1])
        for i in range(n + warm):
            order = ('node', 'bare') if i % 2 == 0 else ('bare', 'node')
            for what in order:
                time.sleep(gap)
                if what == 'node':
                    node_frame(i)
                elif i >= warm:
                    bare_s.append(bare())
                else:
                    bare()
        client.spin_until(lambda: False, 1.5)  # one more diagnostics message
        if diags:
            values = {kv.key: kv.value for kv in diags[-1].status[0].values}
            out['node_stages_p50_s'] = {k[6:-6]: float(v) for k, v in values.items()
                                        if k.startswith('stage.') and k.endswith('_p50_s')}
        e2e_a, fwd_a, proc_a, bare_a = map(np.asarray, (e2e, fwd, proc, bare_s))
        out.update({
            'e2e_s': {'p50': pct(e2e, 50), 'p95': pct(e2e, 95), 'p99': pct(e2e, 99),
                      'n': len(e2e)},
            'forward_in_node_s': {'p50': pct(fwd, 50), 'p95': pct(fwd, 95)},
            'node_processing_s': {'p50': pct(proc, 50)},
            'bare_forward_s': {'p50': pct(bare_s, 50), 'p95': pct(bare_s, 95)},
            'rest_s': {'p50': pct(e2e_a - fwd_a, 50),
                       'in_node_p50': pct(proc_a - fwd_a, 50),
                       'transport_p50': pct(e2e_a - proc_a, 50)},
            'ratio_e2e_over_forward': {'median': pct(e2e_a / fwd_a, 50),
                                       'p90': pct(e2e_a / fwd_a, 90)},
            'ratio_e2e_over_bare': {'median': pct(e2e_a / bare_a, 50),
                                    'p90': pct(e2e_a / bare_a, 90)},
            'per_frame': {'e2e': e2e, 'forward': fwd, 'processing': proc, 'bare': bare_s},
            'instances_per_frame': {'median': pct(count, 50)} if count else None,
        })
        if stream_s > 0:
            out['stream'] = stream(client, pub, boxes, rgb, stream_s, node.pid)
        out['node_alive_at_end'] = node.alive()
    out['node_exit_code'] = node.proc.returncode
    return out


def stream(client, pub, boxes, rgb, seconds: float, pid: int, rate: float = 30.0) -> dict:
    """Publish at ``rate`` Hz for ``seconds``; collect answers, latency and RSS over time."""
    from seg_ros.testing.remote import frame_msg
    for b in boxes:
        b.clear()
    base = 10**12
    msg = frame_msg(rgb, base)  # one message, restamped: keep the publisher's CPU low
    sent: dict[int, float] = {}
    rss = [(0.0, rss_mb(pid))]
    t_start = time.perf_counter()
    period = 1.0 / rate
    i = 0
    next_t = t_start
    while True:
        now = time.perf_counter()
        if now - t_start >= seconds:
            break
        if now >= next_t:
            key = base + i * 10**6
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(key, 10**9)
            sent[key] = time.perf_counter()
            pub.publish(msg)
            i += 1
            next_t += period
            if now - rss[-1][0] - t_start >= 5.0:
                rss.append((now - t_start, rss_mb(pid)))
        client.executor.spin_once(timeout_sec=max(0.0, min(next_t - time.perf_counter(),
                                                            0.01)))
    client.spin_until(lambda: False, 3.0)  # drain
    answered = [k for k in sent if all(k in b for b in boxes)]
    lat = [(sent[k] - t_start, max(b[k][1] for b in boxes) - sent[k]) for k in answered]
    buckets = {}
    for t, v in lat:
        buckets.setdefault(int(t // 10) * 10, []).append(v)
    trend = [(b, float(np.median(v))) for b, v in sorted(buckets.items())]
    lat_v = [v for _, v in lat]
    if len(trend) >= 2:
        slope = float(np.polyfit([b for b, _ in trend], [m for _, m in trend], 1)[0])
    else:
        slope = 0.0
    return {'seconds': seconds, 'rate_hz': rate, 'sent': len(sent), 'answered': len(answered),
            'dropped': len(sent) - len(answered),
            'output_rate_hz': len(answered) / seconds,
            'latency_s': {'p50': pct(lat_v, 50), 'p95': pct(lat_v, 95), 'p99': pct(lat_v, 99)},
            'latency_median_per_10s': trend, 'latency_slope_s_per_s': slope,
            'rss_mb_over_time': rss, 'rss_growth_mb': rss[-1][1] - rss[1][1] if len(rss) > 1
            else 0.0}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--configs', nargs='+', default=['lraspp'], choices=list(CONFIGS))
    ap.add_argument('--sizes', nargs='+', default=['640x480', '1920x1080'], choices=list(SIZES))
    ap.add_argument('--backends', nargs='+', default=None,
                    help='backends of the semantic and instance models, NAME[:PRECISION] '
                    '(auto allowed; default: torch and every installed one, openvino also '
                    'with bf16)')
    ap.add_argument('--n', type=int, default=0, help='samples per measurement (0: by model)')
    ap.add_argument('--gap', type=float, default=0.3, help='quiet seconds before each sample')
    ap.add_argument('--stream-seconds', type=float, default=0.0)
    ap.add_argument('--stream-configs', nargs='*', default=['lraspp@640x480@torch'],
                    help='config@size@backend triples that also get the 30 Hz stream')
    ap.add_argument('--instance-threshold', type=float, default=0.0,
                    help='score threshold of random-weights instance configs')
    ap.add_argument('--bare-torchvision-defaults', action='store_true',
                    help="instance configs: the bare model with torchvision's own resize "
                         '(800/1333), what a torchvision user runs, instead of the image size')
    ap.add_argument('--instances', type=int, default=100,
                    help='instance.max_detections: with threshold 0, exactly this many '
                         'instances a frame (random weights)')
    ap.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                    help='a node parameter on top of the config (repeatable)')
    ap.add_argument('--quick', action='store_true', help='lraspp 640x480, n=15')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'benchmark.json')
    args = ap.parse_args()
    if args.quick:
        args.configs, args.sizes, args.n = ['lraspp'], ['640x480'], args.n or 15
    device = resolve_device('auto')
    if args.backends is None:
        args.backends = ['torch'] + [b for b in ('onnxruntime', 'openvino')
                                     if backends.installed(b)]
        if backends.installed('openvino'):
            args.backends.append('openvino:bf16')
    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_facts(device)
    print(f'machine: {machine}', flush=True)
    results = []
    for cname in args.configs:
        cfg = CONFIGS[cname]
        sem_backends = args.backends
        for sname in args.sizes:
            h, w = SIZES[sname]
            heavy = 'instance' in cfg or 'resnet' in cfg.get('semantic', '')
            n = args.n or ((5 if sname == '1920x1080' else 8) if heavy else
                           (12 if sname == '1920x1080' else 30))
            rgb = {'tabletop': tabletop_scene, 'camvid': camvid_scene}.get(
                cfg.get('scene'), scene)(h, w)
            weights = {kind: str(random_weights(args.json.parent / f'bench_{cfg[kind]}.pt',
                                                kind, cfg[kind]))
                       for kind in ('semantic', 'instance') if kind in cfg}
            if 'semantic_weights' in cfg:
                weights['semantic'] = cfg['semantic_weights']
            if 'weights' in cfg:
                weights['instance'] = cfg['weights']
            threshold = cfg.get('threshold', args.instance_threshold)
            bare = bare_forward(cfg, device, rgb, threshold, weights, args.instances,
                                args.bare_torchvision_defaults)
            for spec in sem_backends:
                backend, precision = parse_backend(spec)
                s = args.stream_seconds if f'{cname}@{sname}@{spec}' in args.stream_configs \
                    else 0.0
                r = {'config': cname, 'size': sname, 'backend': spec, 'n': n,
                     'bare_model': ("torchvision's defaults (resize 800/1333)"
                                    if args.bare_torchvision_defaults and 'instance' in cfg
                                    else "the image's own size"),
                     **node_bench(cfg, rgb, n, s, threshold, args.json.parent,
                                  bare, backend, precision, args.gap, weights, args.instances,
                                  args.node_param)}
                if args.node_param:
                    r['node_params'] = args.node_param
                results.append(r)
                print(f'{cname:<12} {sname:>9} {spec:<14} node p50 '
                      f'{1000 * r["e2e_s"]["p50"]:7.1f} ms (p99 {1000 * r["e2e_s"]["p99"]:7.1f})'
                      f'  forward in node {1000 * r["forward_in_node_s"]["p50"]:7.1f} ms  '
                      f'rest {1000 * r["rest_s"]["p50"]:5.1f} ms  e2e/forward '
                      f'{r["ratio_e2e_over_forward"]["median"]:.3f}  bare eager forward '
                      f'{1000 * r["bare_forward_s"]["p50"]:7.1f} ms  e2e/bare '
                      f'{r["ratio_e2e_over_bare"]["median"]:.3f}'
                      + (f'  instances {r["instances_per_frame"]["median"]:.0f}'
                         if r.get('instances_per_frame') else ''), flush=True)
                if 'stream' in r:
                    st = r['stream']
                    print(f'{"":<12} stream {st["rate_hz"]:.0f} Hz x {st["seconds"]:.0f} s: '
                          f'{st["output_rate_hz"]:.2f} Hz out, {st["dropped"]}/{st["sent"]} '
                          f'dropped, p50 {1000 * st["latency_s"]["p50"]:.1f} ms p99 '
                          f'{1000 * st["latency_s"]["p99"]:.1f} ms, slope '
                          f'{1000 * st["latency_slope_s_per_s"]:.3f} ms/s, RSS growth '
                          f'{st["rss_growth_mb"]:.1f} MB', flush=True)
                args.json.write_text(json.dumps({'machine': machine, 'results': results},
                                                indent=1))
    print_table(results)
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
