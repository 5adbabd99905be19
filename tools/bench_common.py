"""Small helpers the benchmark programs share (no program of its own).

Every figure is printed with the machine it was measured on, the CPU's instruction-set
flags included (a bf16 figure holds only on a CPU with BF16).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch

from seg_ros.core.models.registry import load_instance_model, load_semantic_model
from seg_ros.testing.remote import large_data_transport

ROOT = Path(__file__).resolve().parent.parent

SIZES = {'320x240': (240, 320), '640x480': (480, 640), '1920x1080': (1080, 1920)}
#: the CPU flags that decide which kernels run (VNNI / BF16 / AMX for OpenVINO's bf16)
CPU_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16', 'amx_bf16',
             'amx_int8')


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


def rss_mb(pid: int) -> float:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


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


def cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU has (from /proc/cpuinfo)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next(ln.split(':', 1)[1].split() for ln in f if ln.startswith('flags'))
    except (OSError, StopIteration):
        return []
    return [f for f in CPU_FLAGS if f in flags]


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
    machine['cpu_flags'] = ' '.join(cpu_flags())
    if torch.cuda.is_available():
        machine['gpu'] = torch.cuda.get_device_name(device)
    return machine


def tabletop_scene(h: int, w: int, seed: int = 7) -> np.ndarray:
    """A generated tabletop (seg_ros.synthetic.tabletop), one the tabletop model never saw."""
    from seg_ros.synthetic import tabletop
    return tabletop.render(np.random.default_rng([seed, 0]), w, h).rgb


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

