"""Shared pytest configuration: CUDA marker and device parametrisation (as torchvision)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    config.addinivalue_line('markers', 'needs_cuda: test needs a CUDA device (skipped here)')
    config.addinivalue_line('markers', 'ros: test starts ROS 2 nodes over real DDS')


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
