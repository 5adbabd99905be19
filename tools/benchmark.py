#!/usr/bin/env python3
"""Benchmark: the node end to end against the bare model, in one run.

    scripts/with_env python tools/benchmark.py                  # full run (~40 min on CPU)
    scripts/with_env python tools/benchmark.py --quick          # lraspp 640x480 only
    scripts/with_env python tools/benchmark.py --configs lraspp --sizes 640x480 \
        --stream-seconds 120 --json out/bench.json

For each configuration (model set) and image size, on whatever device is present:

1. model only: median forward time of the bare torchvision model on a tensor already on
   the device (semantic: normalised batch at the input size; Mask R-CNN: the model's own
   list-of-images forward, which includes its internal transform) -- the floor;
2. pipeline: our pure code (seg_ros.core) from a raw uint8 rgb8 buffer to ready-to-publish
   host arrays;
3. node end to end: segment_node runs as a separate process; this process publishes
   sensor_msgs/Image frames and measures publish -> receipt of every output over DDS, one
   frame at a time (no queueing): p50 / p95 / p99; then, for the stream configurations, a
   30 Hz stream for ``--stream-seconds``: output rate, dropped frames, latency over time
   (10 s buckets), node RSS over time;
4. a per-stage breakdown of the overhead: pipeline stages measured here, the node's own
   processing time (its ~/latency topic), and what remains (DDS transport, serialisation,
   queueing).

It prints a table with the ratios node p50 / model only and pipeline / model only and
writes everything to ``--json``. Model weights are random (no hub here): timing does not
depend on the weights' values, except for Mask R-CNN, whose detection count drives the
mask head; ``--instance-threshold`` fixes it (default 0.0: up to max_detections = 100
instances, the worst case).
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
from seg_ros.core.imaging import buffer_to_frame  # noqa: E402
from seg_ros.core.instances import InstanceSegmenter  # noqa: E402
from seg_ros.core.models import load_instance_model, load_semantic_model  # noqa: E402
from seg_ros.core.pipeline import Pipeline, resolve_device  # noqa: E402
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


def timeit(fn, n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float('nan')


def build(cfg: dict, device, threshold: float):
    sem = inst = None
    if 'semantic' in cfg:
        loaded = load_semantic_model(cfg['semantic'], 'none', 21, device=device)
        sem = SemanticSegmenter(loaded, device, input_size=0)
    if 'instance' in cfg:
        loaded = load_instance_model(cfg['instance'], 'none', 91, device=device,
                                     score_threshold=threshold, max_detections=100)
        inst = InstanceSegmenter(loaded, device, threshold, 0.5, 100)
    return Pipeline(device, sem, inst)


def model_only(pipe: Pipeline, rgb: np.ndarray, n: int, warmup: int = 0) -> list[float]:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255).to(pipe.device)
    fns = []
    if pipe.semantic is not None:
        s = pipe.semantic
        xs = s.normalise(x)
        fns.append(lambda: s.model(xs))
    if pipe.instance is not None:
        m = pipe.instance.model
        fns.append(lambda: m([x[0]]))

    @torch.inference_mode()
    def run():
        for f in fns:
            f()
    return timeit(run, n, warmup)


def pipeline_times(pipe: Pipeline, rgb: np.ndarray, n: int,
                   warmup: int = 0) -> tuple[list[float], dict]:
    h, w = rgb.shape[:2]
    data = rgb.tobytes()
    stages: dict[str, list[float]] = {}

    def run():
        frame = buffer_to_frame('rgb8', h, w, w * 3, False, data)
        res = pipe(frame)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
    times = timeit(run, n, warmup)
    return times, {k: float(np.median(v)) for k, v in stages.items()}


def node_args(cfg: dict, threshold: float) -> list[str]:
    args = ['-p', 'device:=' + ('cuda' if torch.cuda.is_available() else 'cpu'),
            '-r', 'image:=/bench/image', '-p', 'diagnostics_period:=1.0']
    if 'semantic' in cfg:
        args += ['-p', f'semantic.model:={cfg["semantic"]}', '-p', 'semantic.weights:=none',
                 '-p', 'semantic.num_classes:=21', '-p', 'semantic.input_size:=0']
    else:
        args += ['-p', 'semantic.enabled:=false']
    if 'instance' in cfg:
        args += ['-p', 'instance.enabled:=true', '-p', f'instance.model:={cfg["instance"]}',
                 '-p', 'instance.weights:=none', '-p', f'instance.score_threshold:={threshold}']
    return args


def rss_mb(pid: int) -> float:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def node_bench(cfg: dict, rgb: np.ndarray, n: int, stream_s: float, threshold: float,
               log_dir: Path, between=None) -> dict:
    """Node end to end; ``between()`` runs before every measured frame (while the node is
    idle), so that in-process samples interleave with node samples in one machine state."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray
    from vision_msgs.msg import Detection2DArray

    from seg_ros.ros.remote import Client, NodeProcess, frame_msg
    domain = 60 + os.getpid() % 40
    node = NodeProcess(node_args(cfg, threshold), domain, log_dir / 'bench_node.log')
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
        proc_times: list[float] = []
        client.node.create_subscription(Float64MultiArray, '/segmentation/latency',
                                        lambda m: proc_times.append(m.data[0]), 100)
        pub = client.node.create_publisher(Image, '/bench/image', 10)
        client.spin_until(lambda: pub.get_subscription_count() > 0, 30)
        # Let reliability auto settle on our (reliable) publisher before measuring.
        client.spin_until(lambda: 'reliability reliable' in node.log(), 10)
        msgs = [frame_msg(rgb, 10**9 * (i + 1)) for i in range(n + 2)]
        lat = []
        for i, msg in enumerate(msgs):
            done = lambda k=10**9 * (i + 1): all(k in b for b in boxes)  # noqa: E731
            if between is not None and i >= 2:
                between()
            t0 = time.perf_counter()
            pub.publish(msg)
            if not client.spin_until(done, 600):
                raise RuntimeError(f'node did not answer frame {i}:\n{node.log()}')
            t_last = max(b[10**9 * (i + 1)][1] for b in boxes)
            if i >= 2:  # the first two are warm-up
                lat.append(t_last - t0)
            client.spin_until(lambda: False, 0.05)
        proc = proc_times[2:]
        client.spin_until(lambda: False, 1.5)  # one more diagnostics message
        if diags:
            values = {kv.key: kv.value for kv in diags[-1].status[0].values}
            out['node_stages_p50_s'] = {k[6:-6]: float(v) for k, v in values.items()
                                        if k.startswith('stage.')}
        out['e2e_s'] = {'p50': pct(lat, 50), 'p95': pct(lat, 95), 'p99': pct(lat, 99),
                        'n': len(lat)}
        out['node_processing_p50_s'] = pct(proc, 50)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument('--sizes', nargs='+', default=['640x480', '1920x1080'], choices=list(SIZES))
    ap.add_argument('--n', type=int, default=0, help='samples per measurement (0: by model)')
    ap.add_argument('--stream-seconds', type=float, default=120.0)
    ap.add_argument('--stream-configs', nargs='*', default=['lraspp@640x480'],
                    help='config@size pairs that also get the 30 Hz stream')
    ap.add_argument('--instance-threshold', type=float, default=0.0)
    ap.add_argument('--quick', action='store_true', help='lraspp 640x480, 30 s stream')
    ap.add_argument('--json', type=Path, default=ROOT / 'out' / 'benchmark.json')
    args = ap.parse_args()
    transports = large_data_transport()
    if args.quick:
        args.configs, args.sizes, args.stream_seconds = ['lraspp'], ['640x480'], 30.0
    device = resolve_device('auto')
    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = {'device': str(device), 'torch': torch.__version__, 'threads':
               torch.get_num_threads(), 'cpu': platform.processor() or platform.machine(),
               'cores': os.cpu_count(), 'python': platform.python_version(),
               'dds_transports': transports}
    try:
        with open('/proc/cpuinfo') as f:
            machine['cpu'] = next(ln.split(':', 1)[1].strip() for ln in f
                                  if ln.startswith('model name'))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        machine['gpu'] = torch.cuda.get_device_name(device)
    print(f'machine: {machine}', flush=True)
    results = []
    for cname in args.configs:
        cfg = CONFIGS[cname]
        for sname in args.sizes:
            h, w = SIZES[sname]
            heavy = 'instance' in cfg or 'resnet' in cfg.get('semantic', '')
            n = args.n or ((5 if sname == '1920x1080' else 8) if heavy else
                           (10 if sname == '1920x1080' else 30))
            rgb = scene(h, w)
            pipe = build(cfg, device, args.instance_threshold)
            m, p, stages = [], [], {}
            model_only(pipe, rgb, 1, warmup=2)  # warm-up
            pipeline_times(pipe, rgb, 1, warmup=2)

            def between(pipe=pipe, rgb=rgb, m=m, p=p, stages=stages):
                # One model-only and one pipeline sample before each node frame: this
                # machine's speed drifts by tens of percent over minutes, so the three
                # measurements interleave instead of running one after the other.
                m.extend(model_only(pipe, rgb, 1))
                t, st = pipeline_times(pipe, rgb, 1)
                p.extend(t)
                for k, v in st.items():
                    stages.setdefault(k, []).append(v)
            s = args.stream_seconds if f'{cname}@{sname}' in args.stream_configs else 0.0
            node = node_bench(cfg, rgb, n, s, args.instance_threshold, args.json.parent,
                              between)
            stages = {k: float(np.median(v)) for k, v in stages.items()}
            del pipe
            r = {'config': cname, 'size': sname, 'n': n,
                 'model_only_s': {'p50': pct(m, 50), 'p95': pct(m, 95)},
                 'pipeline_s': {'p50': pct(p, 50), 'p95': pct(p, 95)},
                 'pipeline_stages_p50_s': stages, **node}
            r['ratio_node_p50_over_model'] = r['e2e_s']['p50'] / r['model_only_s']['p50']
            r['ratio_pipeline_over_model'] = r['pipeline_s']['p50'] / r['model_only_s']['p50']
            r['overhead_breakdown_p50_s'] = {
                'pipeline_minus_model': r['pipeline_s']['p50'] - r['model_only_s']['p50'],
                'node_processing_minus_pipeline': r['node_processing_p50_s']
                - r['pipeline_s']['p50'],
                'transport_and_queueing': r['e2e_s']['p50'] - r['node_processing_p50_s'],
            }
            results.append(r)
            print(f'{cname:<20} {sname:>9}: model {1000 * r["model_only_s"]["p50"]:8.1f} ms  '
                  f'pipeline {1000 * r["pipeline_s"]["p50"]:8.1f} ms  node p50 '
                  f'{1000 * r["e2e_s"]["p50"]:8.1f} / p95 {1000 * r["e2e_s"]["p95"]:8.1f} / '
                  f'p99 {1000 * r["e2e_s"]["p99"]:8.1f} ms  node/model '
                  f'{r["ratio_node_p50_over_model"]:.3f}  pipeline/model '
                  f'{r["ratio_pipeline_over_model"]:.3f}', flush=True)
            if 'stream' in r:
                st = r['stream']
                print(f'{"":<20} stream {st["rate_hz"]:.0f} Hz x {st["seconds"]:.0f} s: '
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
    print('\n| config | size | model only p50 | pipeline p50 | node p50 | node p95 | node p99 '
          '| node/model | pipeline/model |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in results:
        print(f'| {r["config"]} | {r["size"]} | {1000 * r["model_only_s"]["p50"]:.1f} ms | '
              f'{1000 * r["pipeline_s"]["p50"]:.1f} ms | {1000 * r["e2e_s"]["p50"]:.1f} ms | '
              f'{1000 * r["e2e_s"]["p95"]:.1f} ms | {1000 * r["e2e_s"]["p99"]:.1f} ms | '
              f'{r["ratio_node_p50_over_model"]:.3f} | {r["ratio_pipeline_over_model"]:.3f} |')


if __name__ == '__main__':
    sys.exit(main())
