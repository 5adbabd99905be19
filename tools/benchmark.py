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
this process (``out/bench_<model>.pt``): timing should not depend on the weights' values,
except for Mask R-CNN, whose detection count drives the mask head; ``--instance-threshold``
fixes it (default 0.0: up to max_detections = 100 instances, the worst case).
``--stream-seconds`` adds a 30 Hz stream (output rate, latency trend, RSS) for the
``--stream-configs``.

Many cameras (``--cameras 1 2 4``): for each N, one node with N cameras and N single-camera
nodes, alternately (a quiet gap before each), every camera streaming the first ``--sizes``
frame at 30 Hz for ``--camera-seconds`` after a warm-up: frames answered per second (all
cameras), per-camera latency p50 / p99 (publish -> receipt), and the nodes' summed RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from seg_ros.core import backends  # noqa: E402
from seg_ros.core.models import load_instance_model, load_semantic_model  # noqa: E402
from seg_ros.core.pipeline import resolve_device  # noqa: E402
from seg_ros.core.semantic import SemanticSegmenter  # noqa: E402
from seg_ros.ros.remote import large_data_transport  # noqa: E402

CONFIGS = {
    'lraspp': {'semantic': 'lraspp_mobilenet_v3_large'},
    'deeplabv3_resnet50': {'semantic': 'deeplabv3_resnet50'},
    'maskrcnn_v2': {'instance': 'maskrcnn_resnet50_fpn_v2'},
    'lraspp+maskrcnn_v2': {'semantic': 'lraspp_mobilenet_v3_large',
                           'instance': 'maskrcnn_resnet50_fpn_v2'},
}
SIZES = {'320x240': (240, 320), '640x480': (480, 640), '1920x1080': (1080, 1920)}


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured rgb8 frame (gradients and blocks), deterministic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 17.0)], -1)
    for _ in range(12):
        y0, x0 = rng.integers(0, h - h // 6), rng.integers(0, w - w // 6)
        img[y0:y0 + h // 6, x0:x0 + w // 6] = rng.integers(0, 255, 3)
    return img.astype(np.uint8)


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float('nan')


def bare_forward(cfg: dict, device, rgb: np.ndarray, threshold: float,
                 weights: dict[str, str] | None = None):
    """The floor: the eager torchvision model's call alone, fp32, channels-last, on a
    prepared (normalised) tensor on the device; returns a function timing one call.
    """
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(device)
    calls = []
    weights = weights or {}
    if 'semantic' in cfg:
        sem = SemanticSegmenter(load_semantic_model(cfg['semantic'], weights.get(
            'semantic', 'none'), 21, device=device), device, input_size=0)
        xs = sem.normalise(x)
        calls.append(lambda: sem.model(xs))
    if 'instance' in cfg:
        m = load_instance_model(cfg['instance'], weights.get('instance', 'none'), 91,
                                device=device,
                                score_threshold=threshold, max_detections=100).model
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


def parse_backend(spec: str) -> tuple[str, str]:
    """``openvino:bf16`` -> ('openvino', 'bf16'); ``torch`` -> ('torch', 'fp32')."""
    name, _, precision = spec.partition(':')
    return name, precision or 'fp32'


def node_args(cfg: dict, threshold: float, backend: str = 'torch',
              precision: str = 'fp32', cache_dir: str = '',
              weights: dict[str, str] | None = None) -> list[str]:
    weights = weights or {}
    args = ['-p', 'device:=' + ('cuda' if torch.cuda.is_available() else 'cpu'),
            '-r', 'image:=/bench/image', '-p', 'diagnostics_period:=1.0',
            '-p', f'precision:={precision}']
    if cache_dir:
        args += ['-p', f'backend.cache_dir:={cache_dir}']
    if 'semantic' in cfg:
        args += ['-p', f'semantic.model:={cfg["semantic"]}',
                 '-p', f'semantic.weights:={weights.get("semantic", "none")}',
                 '-p', 'semantic.num_classes:=21', '-p', 'semantic.input_size:=0',
                 '-p', f'semantic.backend:={backend}']
    else:
        args += ['-p', 'semantic.enabled:=false']
    if 'instance' in cfg:
        args += ['-p', 'instance.enabled:=true', '-p', f'instance.model:={cfg["instance"]}',
                 '-p', f'instance.weights:={weights.get("instance", "none")}',
                 '-p', f'instance.score_threshold:={threshold}',
                 '-p', 'instance.backend:=torch']
    return args


def rss_mb(pid: int) -> float:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def node_bench(cfg: dict, rgb: np.ndarray, n: int, stream_s: float, threshold: float,
               log_dir: Path, bare, backend: str = 'torch', precision: str = 'fp32',
               gap: float = 0.3, weights: dict[str, str] | None = None) -> dict:
    """One node: per frame its end-to-end time and its own forward (``~/timing``); the
    bare forward ``bare()`` alternates with the node frames (order flipped every pair),
    a quiet gap before each sample.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray
    from vision_msgs.msg import Detection2DArray

    from seg_ros.ros.remote import Client, NodeProcess, frame_msg
    domain = 60 + os.getpid() % 40
    node = NodeProcess(node_args(cfg, threshold, backend, precision,
                                 str(log_dir / 'backend_cache'), weights),
                       domain, log_dir / 'bench_node.log')
    client = None
    out: dict = {}
    try:
        node.wait_ready(600)
        client = Client(domain, 'seg_ros_bench')
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
        e2e, fwd, proc, bare_s = [], [], [], []

        def node_frame(i: int) -> None:
            key = 10**9 * (i + 1)
            done = lambda: all(key in b for b in boxes) and key in timing  # noqa: E731
            t0 = time.perf_counter()
            pub.publish(msgs[i])
            if not client.spin_until(done, 600):
                raise RuntimeError(f'node did not answer frame {i}:\n{node.log()}')
            if i >= warm:
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
        })
        if stream_s > 0:
            out['stream'] = stream(client, pub, boxes, rgb, stream_s, node.pid)
        out['node_alive_at_end'] = node.alive()
    finally:
        if client is not None:
            client.close()
        out['node_exit_code'] = node.stop()
    return out


def stream(client, pub, boxes, rgb, seconds: float, pid: int, rate: float = 30.0) -> dict:
    """Publish at ``rate`` Hz for ``seconds``; collect answers, latency and RSS over time."""
    from seg_ros.ros.remote import frame_msg
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



# -- many cameras (issue 12): one node with N cameras against N single-camera nodes --------
def random_weights(path: Path, kind: str = 'semantic',
                   name: str = 'lraspp_mobilenet_v3_large') -> Path:
    """A seeded random-weights file, the same model in the node and in this process (a
    random model's speed can depend on its values) and one export cache entry.
    """
    if not path.is_file():
        torch.manual_seed(0)
        model = (load_semantic_model(name, 'none', 21) if kind == 'semantic' else
                 load_instance_model(name, 'none', 91)).model
        torch.save(model.state_dict(), path)
    return path


def cameras_run(n: int, mode: str, weights: Path, rgb: np.ndarray, seconds: float,
                backend: str, log_dir: Path, rate: float = 30.0) -> dict:
    """``mode`` 'one_node': one node with ``cameras`` cam0..cam{n-1}; 'n_nodes': n nodes of
    one camera each. Every camera streams ``rgb`` at ``rate`` Hz (all cameras on the same
    tick, as a synchronised rig) for ``seconds``.
    """
    from sensor_msgs.msg import Image

    from seg_ros.ros.remote import Client, NodeProcess, frame_msg
    domain = 60 + os.getpid() % 40
    base = ['-p', 'device:=' + ('cuda' if torch.cuda.is_available() else 'cpu'),
            '-p', f'semantic.weights:={weights}', '-p', 'semantic.input_size:=0',
            '-p', f'semantic.backend:={backend}',
            '-p', f'backend.cache_dir:={log_dir / "backend_cache"}']
    cams = [f'cam{i}' for i in range(n)]
    inputs = {c: f'/bench/{c}/image' for c in cams}
    if mode == 'one_node':
        args = [*base, '-p', f'cameras:=[{", ".join(cams)}]',
                *[a for c in cams for a in ('-r', f'{c}/image:={inputs[c]}')]]
        nodes = [NodeProcess(args, domain, log_dir / 'bench_cams_node.log')]
        outputs = {c: f'/segmentation/{c}/semantic/labels' for c in cams}
    else:
        nodes = [NodeProcess([*base, '-r', f'__node:=seg_{c}', '-r', f'image:={inputs[c]}'],
                             domain, log_dir / f'bench_cams_{c}.log') for c in cams]
        outputs = {c: f'/seg_{c}/semantic/labels' for c in cams}
    client = None
    try:
        for nd in nodes:
            nd.wait_ready(600)
        client = Client(domain, 'seg_ros_bench_cams')
        boxes = {c: client.collect(Image, outputs[c]) for c in cams}
        pubs = {c: client.node.create_publisher(Image, inputs[c], 10) for c in cams}
        assert client.spin_until(lambda: all(p.get_subscription_count() for p in
                                              pubs.values()), 60)
        msg = frame_msg(rgb, 1)

        def stream_for(duration: float, key0: int) -> dict[str, dict[int, float]]:
            sent: dict[str, dict[int, float]] = {c: {} for c in cams}
            t_start = time.perf_counter()
            k, next_t = 0, t_start
            while time.perf_counter() - t_start < duration:
                if time.perf_counter() >= next_t:
                    for j, c in enumerate(cams):
                        key = key0 + k * 1000 + j
                        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(key, 10**9)
                        sent[c][key] = time.perf_counter()
                        pubs[c].publish(msg)
                    k += 1
                    next_t += 1.0 / rate
                client.executor.spin_once(timeout_sec=max(0.0, min(
                    next_t - time.perf_counter(), 0.01)))
            client.spin_until(lambda: False, 2.0)  # drain
            return sent
        # warm-up: every node compiles/warms for this size, all cameras answered once
        stream_for(4.0, 10**12)
        time.sleep(3.0)  # quiet gap
        for b in boxes.values():
            b.clear()
        sent = stream_for(seconds, 2 * 10**12)
        rss = sum(rss_mb(nd.pid) for nd in nodes)
        per_cam = {}
        total = 0
        for c in cams:
            lat = [boxes[c][k][1] - t for k, t in sent[c].items() if k in boxes[c]]
            total += len(lat)
            per_cam[c] = {'sent': len(sent[c]), 'answered': len(lat),
                          'p50_s': pct(lat, 50), 'p99_s': pct(lat, 99)}
        return {'cameras': n, 'mode': mode, 'seconds': seconds, 'rate_hz': rate,
                'answered_per_s': total / seconds, 'rss_mb': rss, 'per_camera': per_cam,
                'latency_p50_s': float(np.median([v['p50_s'] for v in per_cam.values()])),
                'latency_p99_s': float(max(v['p99_s'] for v in per_cam.values()))}
    finally:
        if client is not None:
            client.close()
        for nd in nodes:
            nd.stop()


def cameras_main(args) -> int:
    device = resolve_device('auto')
    machine = machine_facts(device)
    print(f'machine: {machine}', flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    weights = random_weights(args.json.parent / 'bench_lraspp_mobilenet_v3_large.pt')
    h, w = SIZES[args.sizes[0]]
    rgb = scene(h, w)
    results = []
    for i, n in enumerate(args.cameras):
        modes = ('one_node', 'n_nodes') if i % 2 == 0 else ('n_nodes', 'one_node')
        for mode in modes:
            time.sleep(3.0)
            r = cameras_run(n, mode, weights, rgb, args.camera_seconds, args.camera_backend,
                            args.json.parent)
            results.append(r)
            print(f'{n} camera(s) {mode:<8}: {r["answered_per_s"]:6.2f} frames/s answered, '
                  f'latency p50 {1000 * r["latency_p50_s"]:7.1f} ms p99 '
                  f'{1000 * r["latency_p99_s"]:7.1f} ms, RSS {r["rss_mb"]:7.0f} MB', flush=True)
            args.json.write_text(json.dumps({'machine': machine, 'cameras': results},
                                            indent=1))
    print('\n| cameras | setup | frames answered / s | per-camera latency p50 | p99 (worst '
          'camera) | RSS |')
    print('|---|---|---|---|---|---|')
    for r in results:
        setup = 'one node' if r['mode'] == 'one_node' else f'{r["cameras"]} nodes'
        print(f'| {r["cameras"]} | {setup} | {r["answered_per_s"]:.2f} | '
              f'{1000 * r["latency_p50_s"]:.1f} ms | {1000 * r["latency_p99_s"]:.1f} ms | '
              f'{r["rss_mb"]:.0f} MB |')
    by = {(r['cameras'], r['mode']): r for r in results}
    for n in args.cameras:
        if n > 1 and (n, 'one_node') in by and (n, 'n_nodes') in by:
            one, many = by[(n, 'one_node')], by[(n, 'n_nodes')]
            print(f'{n} cameras: throughput one node / {n} nodes = '
                  f'{one["answered_per_s"] / many["answered_per_s"]:.2f}, RSS = '
                  f'{one["rss_mb"] / many["rss_mb"]:.2f}')
    print(f'wrote {args.json}')
    return 0


def machine_facts(device) -> dict:
    machine = {'device': str(device), 'torch': torch.__version__, 'threads':
               torch.get_num_threads(), 'cpu': platform.processor() or platform.machine(),
               'cores': os.cpu_count(), 'python': platform.python_version(),
               'dds_transports': large_data_transport()}
    for mod in ('openvino', 'onnxruntime'):
        try:
            machine[mod] = __import__(mod).__version__
        except ImportError:
            pass
    try:
        with open('/proc/cpuinfo') as f:
            machine['cpu'] = next(ln.split(':', 1)[1].strip() for ln in f
                                  if ln.startswith('model name'))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        machine['gpu'] = torch.cuda.get_device_name(device)
    return machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--configs', nargs='+', default=['lraspp'], choices=list(CONFIGS))
    ap.add_argument('--sizes', nargs='+', default=['640x480', '1920x1080'], choices=list(SIZES))
    ap.add_argument('--backends', nargs='+', default=None,
                    help='semantic backends, NAME[:PRECISION] (default: torch and every '
                    'installed one, openvino also with bf16)')
    ap.add_argument('--n', type=int, default=0, help='samples per measurement (0: by model)')
    ap.add_argument('--gap', type=float, default=0.3, help='quiet seconds before each sample')
    ap.add_argument('--stream-seconds', type=float, default=0.0)
    ap.add_argument('--stream-configs', nargs='*', default=['lraspp@640x480@torch'],
                    help='config@size@backend triples that also get the 30 Hz stream')
    ap.add_argument('--instance-threshold', type=float, default=0.0)
    ap.add_argument('--quick', action='store_true', help='lraspp 640x480, n=15')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'benchmark.json')
    ap.add_argument('--cameras', type=int, nargs='+', default=None,
                    help='many-camera mode: for each N, one node with N cameras against N '
                    'single-camera nodes, every camera at 30 Hz (size: first of --sizes)')
    ap.add_argument('--camera-seconds', type=float, default=30.0)
    ap.add_argument('--camera-backend', default='auto', help='semantic.backend of the nodes')
    args = ap.parse_args()
    if args.cameras:
        return cameras_main(args)
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
        sem_backends = args.backends if 'semantic' in cfg else ['torch']
        for sname in args.sizes:
            h, w = SIZES[sname]
            heavy = 'instance' in cfg or 'resnet' in cfg.get('semantic', '')
            n = args.n or ((5 if sname == '1920x1080' else 8) if heavy else
                           (12 if sname == '1920x1080' else 30))
            rgb = scene(h, w)
            weights = {kind: str(random_weights(args.json.parent / f'bench_{cfg[kind]}.pt',
                                                kind, cfg[kind]))
                       for kind in ('semantic', 'instance') if kind in cfg}
            bare = bare_forward(cfg, device, rgb, args.instance_threshold, weights)
            for spec in sem_backends:
                backend, precision = parse_backend(spec)
                s = args.stream_seconds if f'{cname}@{sname}@{spec}' in args.stream_configs \
                    else 0.0
                r = {'config': cname, 'size': sname, 'backend': spec, 'n': n,
                     **node_bench(cfg, rgb, n, s, args.instance_threshold, args.json.parent,
                                  bare, backend, precision, args.gap, weights)}
                results.append(r)
                print(f'{cname:<12} {sname:>9} {spec:<14} node p50 '
                      f'{1000 * r["e2e_s"]["p50"]:7.1f} ms (p99 {1000 * r["e2e_s"]["p99"]:7.1f})'
                      f'  forward in node {1000 * r["forward_in_node_s"]["p50"]:7.1f} ms  '
                      f'rest {1000 * r["rest_s"]["p50"]:5.1f} ms  e2e/forward '
                      f'{r["ratio_e2e_over_forward"]["median"]:.3f}  bare eager forward '
                      f'{1000 * r["bare_forward_s"]["p50"]:7.1f} ms  e2e/bare '
                      f'{r["ratio_e2e_over_bare"]["median"]:.3f}', flush=True)
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


def print_table(results: list[dict]) -> None:
    print('\n| config | size | backend | node p50 | node p99 | forward in node p50 | rest p50 '
          '(in node / transport) | **e2e / forward** (median per frame) | bare eager forward '
          'p50 | e2e / bare eager (median per pair) |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in results:
        ms = lambda v: f'{1000 * v:.1f} ms'  # noqa: E731
        print(f'| {r["config"]} | {r["size"]} | {r["backend"]} | {ms(r["e2e_s"]["p50"])} | '
              f'{ms(r["e2e_s"]["p99"])} | {ms(r["forward_in_node_s"]["p50"])} | '
              f'{ms(r["rest_s"]["p50"])} ({ms(r["rest_s"]["in_node_p50"])} / '
              f'{ms(r["rest_s"]["transport_p50"])}) | '
              f'**{r["ratio_e2e_over_forward"]["median"]:.3f}** | '
              f'{ms(r["bare_forward_s"]["p50"])} | {r["ratio_e2e_over_bare"]["median"]:.3f} |')
    stages = sorted({k for r in results for k in r.get('node_stages_p50_s', {})})
    if stages:
        print('\n| config | size | backend | ' + ' | '.join(stages) + ' |')
        print('|---|---|---|' + '---|' * len(stages))
        for r in results:
            st = r.get('node_stages_p50_s', {})
            print(f'| {r["config"]} | {r["size"]} | {r["backend"]} | ' + ' | '.join(
                f'{1000 * st[k]:.2f} ms' if k in st else '' for k in stages) + ' |')


if __name__ == '__main__':
    sys.exit(main())
