"""Test helpers: weights files, synthetic images, a segment_node process, DDS waiting."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch

from seg_ros.core.models.registry import INSTANCE_MODELS, SEMANTIC_MODELS
from seg_ros.testing import remote


def synthetic_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB scene with gradients, rectangles and a disc: structured content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1),
                    128 + 100 * np.sin(x / 5.0)], -1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(0, 255, 3)
    disc = (y - h / 2) ** 2 + (x - w / 3) ** 2 < (min(h, w) / 5) ** 2
    img[disc] = (250, 20, 20)
    return img.clip(0, 255).astype(np.uint8)


def make_semantic_weights(path: Path, name: str = 'lraspp_mobilenet_v3_large',
                          num_classes: int = 6, seed: int = 0) -> Path:
    """Random-init semantic weights whose output varies over an image.

    Random LR-ASPP output is nearly constant; scaling the low-level classifier makes the
    label map follow the image's local structure, so a comparison can fail.
    """
    torch.manual_seed(seed)
    model = SEMANTIC_MODELS[name].builder(weights=None, weights_backbone=None,
                                          num_classes=num_classes)
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            if mod_name.endswith('low_classifier') or mod_name == 'classifier.4':
                mod.weight.mul_(40.0)
    torch.save(model.state_dict(), path)
    return path


def make_instance_weights(path: Path, name: str = 'maskrcnn_resnet50_fpn',
                          num_classes: int = 4, seed: int = 0,
                          anchors_as_boxes: bool = False) -> Path:
    """Random-init Mask R-CNN weights with spread scores (about 0.65-0.9 on
    :func:`synthetic_image`), more than one class and masks covering part of each box.

    ``anchors_as_boxes`` zeroes both box regressors, so every box is an anchor: shifting
    the image by a multiple of the anchor stride shifts the boxes exactly (for tracking).
    """
    torch.manual_seed(seed)
    model = INSTANCE_MODELS[name].builder(weights=None, weights_backbone=None,
                                          num_classes=num_classes)
    with torch.no_grad():
        w = model.roi_heads.box_predictor.cls_score.weight
        w.normal_(0.0, 0.01)
        w.sub_(w.mean(1, keepdim=True))
        model.roi_heads.box_predictor.cls_score.bias.zero_()
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(0.5)
        if anchors_as_boxes:
            for layer in (model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred):
                layer.weight.zero_()
                layer.bias.zero_()
    torch.save(model.state_dict(), path)
    return path


def _worker_index() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker ((0, 1) without xdist)."""
    worker = os.environ.get('PYTEST_XDIST_WORKER', '')
    count = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1') or 1)
    return (int(worker[2:]) if worker.startswith('gw') else 0), max(count, 1)


_domain = itertools.count(os.getpid() % 50)


#: Fast DDS transports of the tools the tests run as child processes (demo, eval_instances),
#: which choose LARGE_DATA for themselves when none is set. With LARGE_DATA (UDP discovery,
#: then TCP / shared memory) a tool and its node now and then never discovered each other
#: (CI of 2b4d7be and a fresh clone of 1df7223: "no publisher on /camera/image" until the
#: 300 s timeout, in one worker with nothing else on LARGE_DATA); with the default transports
#: (shared memory + UDP) every other ROS test of the suite never did. The tests check what
#: the tools do, not the transport: they run on the default one.
TEST_TRANSPORTS = 'DEFAULT'


def run_killing_group(cmd: list[str], timeout: float, env: dict[str, str]
                      ) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a session of its own: on
    the timeout the whole group is killed (the tool and anything it started that shares it;
    a node it started in its own session ends with it: ``testing.remote`` arms
    PR_SET_PDEATHSIG), then TimeoutExpired is raised as subprocess.run does."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def fresh_domain_id() -> int:
    """A ROS_DOMAIN_ID for this test, distinct per call within a run: domains 30-99 are
    split between the pytest-xdist workers (each test talks DDS in its own domain, so two
    workers never hear each other's nodes)."""
    index, count = _worker_index()
    span = 70 // count
    return 30 + index * span + next(_domain) % span


def NodeProcess(args: list[str], domain_id: int, log_path: Path,
                executable: str = 'segment_node') -> remote.NodeProcess:
    """segment_node in its own process; one intra-op thread so two fit on two cores."""
    return remote.NodeProcess(args, domain_id, log_path, env={'OMP_NUM_THREADS': '1'},
                              executable=executable)


RosClient = remote.Client
image_to_array = remote.decode


def start_node(tmp_dir: Path, args: list[str], executable: str = 'segment_node',
               ready_marker: str = 'listening on'):
    """A node process (waited until ready) and a client in a fresh ROS domain."""
    domain = fresh_domain_id()
    node = NodeProcess(args, domain, Path(tmp_dir) / 'node.log', executable)
    try:
        node.wait_ready(marker=ready_marker)
        return node, RosClient(domain)
    except BaseException:
        node.stop()  # never leave a node behind (it would hold a core for later tests)
        raise


def serve_node(tmp_dir: Path, args: list[str]):
    """Generator for module fixtures: yields ``(node, client)``, then closes the client and
    checks that the node exits cleanly (code 0) on SIGINT. The node is stopped whatever
    happens (a failed check, an exception in the fixture, the generator closed early)."""
    node, client = start_node(tmp_dir, args)
    try:
        yield node, client
    finally:
        try:
            client.close()
        finally:
            code = node.stop()
    assert code == 0, node.log()


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def torchvision_semantic_labels(weights: Path, rgb: np.ndarray, num_classes: int,
                                name: str = 'lraspp_mobilenet_v3_large') -> np.ndarray:
    """The reference: torchvision alone builds, loads the file, normalises, argmax."""
    model = SEMANTIC_MODELS[name].builder(weights=None, weights_backbone=None,
                                          num_classes=num_classes)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return model((x - IMAGENET_MEAN) / IMAGENET_STD)['out'].argmax(1)[0].numpy()


def torchvision_maskrcnn(weights: Path, rgb: np.ndarray, score_threshold: float,
                         min_size: int, max_size: int, num_classes: int = 4,
                         name: str = 'maskrcnn_resnet50_fpn') -> dict[str, np.ndarray]:
    """The reference: torchvision's Mask R-CNN output above ``score_threshold``."""
    model = INSTANCE_MODELS[name].builder(weights=None, weights_backbone=None,
                                          num_classes=num_classes, min_size=min_size,
                                          max_size=max_size)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    with torch.no_grad():
        out = model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]
    keep = out['scores'] >= score_threshold
    return {k: v[keep].numpy() for k, v in out.items()}


def run_node_to_exit(args: list[str], timeout: float = 90.0,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run segment_node expecting it to exit by itself (e.g. bad parameters)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(fresh_domain_id()), **(env or {}))
    return subprocess.run(['segment_node', '--ros-args', *args], env=env, timeout=timeout,
                          capture_output=True, text=True)





def image_msg(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = 'cam',
              step: int | None = None):
    """A sensor_msgs/Image built with our own encoder."""
    import array as pyarray

    from sensor_msgs.msg import Image

    from seg_ros.core.spatial.imaging import array_to_buffer
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.step, data = array_to_buffer(arr, encoding, step=step)
    msg.encoding = encoding
    buf = pyarray.array('B')
    buf.frombytes(data)
    msg.data = buf
    return msg


def set_parameters(client: RosClient, node_name: str, values: dict, timeout: float = 10.0):
    """Set parameters of a remote node via its SetParameters service; returns results."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    cli = client.node.create_client(SetParameters, f'{node_name}/set_parameters')
    assert cli.wait_for_service(timeout_sec=timeout), 'parameter service not available'
    req = SetParameters.Request()
    req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
    fut = cli.call_async(req)
    client.spin_until(fut.done, timeout)
    client.node.destroy_client(cli)
    return fut.result().results


def depth_msg(depth: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = 'cam'):
    """A 16UC1 / 32FC1 sensor_msgs/Image of an (H, W) array (no row padding)."""
    dtype = {'16UC1': np.uint16, '32FC1': np.float32}[encoding]
    return remote.frame_msg(np.asarray(depth).astype(dtype), stamp_ns, frame_id, encoding)


def camera_info_msg(k, p, width: int, height: int, stamp_ns: int, frame_id: str = 'cam'):
    """A sensor_msgs/CameraInfo with the given k (9) and p (12)."""
    return remote.camera_info_msg(k, p, width, height, stamp_ns, frame_id)


def included_launch(launch_name: str, arguments: dict):
    """A test's LaunchDescription: the installed seg_ros launch file with ``arguments``,
    then launch_testing's ReadyToTest."""
    import launch_testing.actions
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription
    path = os.path.join(get_package_share_directory('seg_ros'), 'launch', launch_name)
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(path),
                                 launch_arguments=[(k, str(v)) for k, v in arguments.items()]),
        launch_testing.actions.ReadyToTest(),
    ])


class LaunchClientCase:
    """Mixin for launch_testing test classes: ``self.client`` in ``DOMAIN`` (class attr)."""

    DOMAIN = 0

    @classmethod
    def setUpClass(cls):
        cls.client = RosClient(cls.DOMAIN, f'{cls.__name__.lower()}_client')

    @classmethod
    def tearDownClass(cls):
        cls.client.close()


def assert_clean_exit(proc_info, proc_output) -> None:
    """Post-shutdown: every launched process exited 0 and printed no traceback."""
    import launch_testing.asserts
    launch_testing.asserts.assertExitCodes(proc_info)
    for io in proc_output:
        assert b'Traceback' not in io.text, io.text.decode(errors='replace')


def write_bag(path: Path, storage: str, topic: str, frames: list[tuple[int, int, object]],
              extra: dict[str, list[tuple[int, object]]] | None = None) -> Path:
    """A rosbag2 (``storage`` 'sqlite3' or 'mcap'): ``frames`` are (receive time ns, index,
    rclpy message) on ``topic``; ``extra`` maps other topics to (receive time ns, message)."""
    from seg_ros.offline.bagfile import write_bag as write
    return write(path, {topic: [(t, m) for t, _, m in frames], **(extra or {})}, storage)


def read_bag(path: Path) -> dict[str, list[tuple[int, str, bytes]]]:
    """topic -> [(receive time, type, CDR bytes)] of every message of a rosbag2."""
    from seg_ros.offline.bagfile import read_bag as read
    return read(path)


def get_parameters(client: RosClient, node_name: str, names: list[str],
                   timeout: float = 20.0) -> list:
    """The values of ``names`` on ``node_name`` over its GetParameters service, as Python."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python
    cli = client.node.create_client(GetParameters, f'{node_name}/get_parameters')
    try:
        assert cli.wait_for_service(timeout_sec=timeout), node_name
        fut = cli.call_async(GetParameters.Request(names=names))
        assert client.spin_until(fut.done, timeout)
        return [parameter_value_to_python(v) for v in fut.result().values]
    finally:
        client.node.destroy_client(cli)
