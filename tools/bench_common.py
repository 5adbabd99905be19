"""Small helpers the benchmark programs share (no program of its own).

Every figure is printed with the machine it was measured on, the CPU's instruction-set
flags included (a bf16 figure holds only on a CPU with BF16).
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from seg_ros.core.models import load_instance_model, load_semantic_model  # noqa: E402
from seg_ros.ros.remote import large_data_transport  # noqa: E402

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
