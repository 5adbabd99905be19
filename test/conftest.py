"""Shared pytest configuration: CUDA marker and device parametrisation (as torchvision)."""
import os
import shutil
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
_OWNED: list[str] = []  # the backend cache this session made (removed at its end)


def pytest_configure(config):
    # Backend exports (ONNX, compiled models) of this run's nodes go to one fresh cache:
    # tests never write into the user's ~/.cache, and a cache hit is one of this run's own.
    if 'SEG_ROS_TEST_CACHE' not in os.environ:
        os.environ['SEG_ROS_TEST_CACHE'] = tempfile.mkdtemp(prefix='seg_ros_cache_')
        _OWNED.append(os.environ['SEG_ROS_TEST_CACHE'])
        os.environ['XDG_CACHE_HOME'] = os.environ['SEG_ROS_TEST_CACHE']
    config.addinivalue_line('markers', 'needs_cuda: test needs a CUDA device (skipped here)')
    config.addinivalue_line('markers', 'ros: test starts ROS 2 nodes over real DDS')


def pytest_unconfigure(config):
    for cache in _OWNED:
        shutil.rmtree(cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='CUDA not available on this machine')
    for item in items:
        if 'needs_cuda' in item.keywords:
            item.add_marker(skip)


def cpu_and_cuda():
    """Parametrise a test over cpu and cuda (the cuda case is skipped without a GPU)."""
    return ('cpu', pytest.param('cuda', marks=pytest.mark.needs_cuda))
