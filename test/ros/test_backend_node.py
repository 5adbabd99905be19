"""segment_node on a compiled backend over real DDS: labels agree with torchvision, the
export is cached across starts, the parameters read back."""
import numpy as np
import pytest
from sensor_msgs.msg import Image

from seg_ros.core.models import backends

from helpers import (
    get_parameters,
    image_msg,
    image_to_array,
    make_semantic_weights,
    start_node,
    synthetic_image,
    torchvision_semantic_labels,
)

pytestmark = pytest.mark.ros
H, W, NUM_CLASSES = 480, 640, 6  # bf16 agreement is measured at the benchmark's size


def serve_once(tmp, weights, cache, backend, precision):
    args = ['-p', 'device:=cpu', '-p', f'semantic.weights:={weights}',
            '-p', 'semantic.input_size:=0', '-p', f'semantic.backend:={backend}',
            '-p', f'precision:={precision}', '-p', f'backend.cache_dir:={cache}',
            '-r', 'image:=/cam/image']
    tmp.mkdir(parents=True, exist_ok=True)
    node, client = start_node(tmp, args)
    try:
        box = client.collect(Image, '/segmentation/semantic/labels')
        pub = client.node.create_publisher(Image, '/cam/image', 10)
        rgb = synthetic_image(H, W, seed=3)
        msg = image_msg(rgb, 'rgb8', 42 * 10**9)
        assert client.exchange(pub, msg, [box], 60.0, resend=0.5) is not None, node.log()
        labels = image_to_array(box[42 * 10**9][0])[:, :, 0]
        values = get_parameters(client, '/segmentation', ['semantic.backend', 'precision',
                                                          'backend.cache_dir'])
    finally:
        client.close()
        assert node.stop() == 0, node.log()
    return rgb, labels, node.log(), values


@pytest.mark.parametrize('backend,precision', [
    pytest.param('onnxruntime', 'fp32', marks=pytest.mark.skipif(
        not backends.installed('onnxruntime'), reason='onnxruntime absent')),
    pytest.param('openvino', 'bf16', marks=pytest.mark.skipif(
        not backends.installed('openvino'), reason='openvino absent')),
])
def test_backend_node_agrees_and_reuses_its_cache(tmp_path, backend, precision):
    weights = make_semantic_weights(tmp_path / 'sem.pt', num_classes=NUM_CLASSES)
    cache = tmp_path / 'cache'
    rgb, labels, log, values = serve_once(tmp_path / 'a', weights, cache, backend, precision)
    assert f'semantic backend: {backend}' in log and 'exported' in log, log
    assert values == [backend, precision, str(cache)], values
    want = torchvision_semantic_labels(weights, rgb, NUM_CLASSES)
    assert labels.shape == want.shape
    assert (labels == want).mean() >= 0.995, (labels == want).mean()
    exports = sorted((cache / 'onnx').glob('*.onnx'))
    assert exports
    # a second start with the same weights reuses the export, and answers the same
    _, again, log2, _ = serve_once(tmp_path / 'b', weights, cache, backend, precision)
    assert 'reused from cache' in log2 and 'exported' not in log2, log2
    assert sorted((cache / 'onnx').glob('*.onnx')) == exports
    assert np.array_equal(again, labels)
