"""Shared pytest configuration: CUDA marker and device parametrisation (as torchvision)."""
import faulthandler
import os
import shutil
import sys
import tempfile

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
_OWNED: list[str] = []  # the backend cache this session made (removed at its end)


def pytest_configure(config):
    # Under pytest-xdist (scripts/test runs two workers on two cores), each worker computes
    # on one intra-op thread, as the node processes the tests start already do: two pools
    # of two threads on two cores would keep preempting each other.
    if int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1') or 1) > 1:
        torch.set_num_threads(1)
    # Backend exports (ONNX, compiled models) of this run's nodes go to one fresh cache:
    # tests never write into the user's ~/.cache, and a cache hit is one of this run's own.
    if 'SEG_ROS_TEST_CACHE' not in os.environ:
        os.environ['SEG_ROS_TEST_CACHE'] = tempfile.mkdtemp(prefix='seg_ros_cache_')
        _OWNED.append(os.environ['SEG_ROS_TEST_CACHE'])
        os.environ['XDG_CACHE_HOME'] = os.environ['SEG_ROS_TEST_CACHE']
    config.addinivalue_line('markers', 'needs_cuda: test needs a CUDA device (skipped here)')
    config.addinivalue_line('markers', 'ros: test starts ROS 2 nodes over real DDS')


@pytest.fixture(autouse=True)
def _own_environment():
    """Each test's changes to os.environ end with it. A test that set, say,
    FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (eval_instances does, as the demo does) would
    otherwise switch every later test of the process, and the nodes they start, to Fast DDS's
    TCP transport: seen here as a node that never discovered its client, then a client whose
    participant hung on destruction."""
    saved = dict(os.environ)
    # a tool that starts its own node (demo, eval_camvid, eval_instances, run in-process or
    # not) takes this worker's domain, not 50 + pid % 50: that met the other worker's
    # domains and a demo then never discovered its node now and then
    from helpers import fresh_domain_id
    os.environ['SEG_ROS_DOMAIN_ID'] = str(fresh_domain_id())
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


#: Seconds past a test's pytest-timeout after which the watchdog ends its process.
WATCHDOG_GRACE = float(os.environ.get("SEG_ROS_WATCHDOG_GRACE", "60"))
_WATCHDOG_OUT: list = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A watchdog that needs no GIL. pytest-timeout's thread method is a Python thread: a
    test stuck in C code that holds the GIL (a DDS participant's destruction) starves it,
    and a CI run then hung until its 90 minutes ran out, the stuck test unnamed. faulthandler's
    watchdog is a C thread: past the test's timeout and a grace it writes every thread's stack
    to the real stderr and ends the process (under xdist the worker: the controller reports
    the test as crashed and goes on with a new worker)."""
    marker = item.get_closest_marker('timeout')
    limit = float(marker.args[0]) if marker and marker.args else float(
        item.config.getini('timeout') or 0)
    if limit > 0:
        if not _WATCHDOG_OUT:  # a copy of fd 2 that output capturing does not redirect
            _WATCHDOG_OUT.append(os.fdopen(os.dup(2), 'w'))
        faulthandler.dump_traceback_later(limit + WATCHDOG_GRACE, exit=True,
                                          file=_WATCHDOG_OUT[0])
    try:
        yield
    finally:
        if limit > 0:
            faulthandler.cancel_dump_traceback_later()


def pytest_unconfigure(config):
    for cache in _OWNED:
        shutil.rmtree(cache, ignore_errors=True)


#: Seconds a module took on one worker (2026-12-02, 2 AVX-512 cores): with two workers
#: (scripts/test: pytest-xdist, --dist loadfile, one module per worker at a time) the
#: longest start first, so that no long module is left to run alone at the end.
MODULE_SECONDS = {
    'test/ros/test_segment_bag.py': 227, 'test/ros/test_shutdown.py': 110,
    'test/unit/test_backends.py': 108, 'test/ros/test_startup.py': 105,
    'test/ros/test_demo.py': 99, 'test/launch/test_ros2_cli.py': 98,
    'test/unit/test_instance_backends.py': 89, 'test/ros/test_backend_node.py': 65,
    'test/ros/test_depth_node.py': 55, 'test/ros/test_reliability.py': 53,
    'test/ros/test_custom_instances.py': 51, 'test/ros/test_lifecycle.py': 35,
    'test/ros/test_tf_node.py': 33, 'test/ros/test_instance_node.py': 31,
    'test/launch/test_segment_launch.py': 28, 'test/ros/test_cameras_node.py': 27,
    'test/ros/test_silence.py': 25, 'test/ros/test_tracking_node.py': 24,
    'test/ros/test_humble_imports.py': 21, 'test/ros/test_semantic_node.py': 20,
    'test/launch/test_multi_camera_launch.py': 19, 'test/unit/test_instances.py': 16,
    'test/unit/test_processor.py': 16, 'test/unit/test_batching.py': 15,
}


#: Modules whose tools (the demo, eval_instances) choose Fast DDS's LARGE_DATA transports
#: for themselves. Two such groups running at once, one per worker, lost discovery now and
#: then (1 run in 3 of these two modules side by side); one after the other it was rarer but
#: not gone, so the tests now run those tools on the default transports
#: (helpers.TEST_TRANSPORTS) and still keep them one xdist scope (one worker, in turn).
LARGE_DATA_MODULES = ('test/ros/test_demo.py', 'test/ros/test_custom_instances.py')


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, except that LARGE_DATA_MODULES are one scope (one worker)."""
    if config.getoption('dist') != 'loadfile':
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split('::', 1)[0]
            return 'large_data' if path in LARGE_DATA_MODULES else path
    return Scheduling(config, log)


def _module_seconds(item) -> int:
    path = os.path.relpath(str(item.path), os.path.dirname(os.path.dirname(__file__)))
    return MODULE_SECONDS.get(path.replace(os.sep, '/'), 0)


def pytest_collection_modifyitems(config, items):
    # longest modules first; a module's own tests keep their order (stable sort)
    items.sort(key=lambda item: -_module_seconds(item))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='CUDA not available on this machine')
    for item in items:
        if 'needs_cuda' in item.keywords:
            item.add_marker(skip)


def cpu_and_cuda():
    """Parametrise a test over cpu and cuda (the cuda case is skipped without a GPU)."""
    return ('cpu', pytest.param('cuda', marks=pytest.mark.needs_cuda))
