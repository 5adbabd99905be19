"""precision int8: calibration sets, static quantization with NNCF (OpenVINO) and
onnxruntime.quantization, built only in warm-up, cached, refusals. No ROS."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from seg_ros.core.config.params import BY_NAME
from seg_ros.core.inference.pipeline import Pipeline
from seg_ros.core.inference.semantic import LabelGraph, SemanticSegmenter, first_max
from seg_ros.core.models import backends, quantize
from seg_ros.core.models.backends import BackendError
from seg_ros.core.models.registry import load_semantic_model

from helpers import make_semantic_weights, synthetic_image

H, W = 96, 128
ABLE = [b for b in ('openvino', 'onnxruntime')
        if backends.installed(b) and not quantize.quantizer_missing(b)]


def able(name):
    return pytest.mark.skipif(name not in ABLE, reason=f'{name} cannot quantize here')


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return make_semantic_weights(tmp_path_factory.mktemp('w') / 'sem.pt', num_classes=6)


@pytest.fixture(scope='module')
def frames_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('calib')
    for i in range(5):
        Image.fromarray(synthetic_image(120, 160, seed=i)).save(d / f'{i:02d}.png')
    (d / 'notes.txt').write_text('not an image')
    return d


def segmenter(weights, backend, cache, calib_dir, precision='int8'):
    loaded = load_semantic_model('lraspp_mobilenet_v3_large', str(weights), 0, [], 'cpu')
    lines: list[str] = []
    seg = SemanticSegmenter(loaded, 'cpu', input_size=0, precision=precision, backend=backend,
                            cache_dir=str(cache), report=lines.append,
                            calibration=lambda: quantize.calibration_set(str(calib_dir), '',
                                                                         lines.append))
    return seg, lines


def pixels(h=H, w=W, seed=0):
    return torch.from_numpy(synthetic_image(h, w, seed))[None].contiguous()


def test_first_max_is_argmax_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (2, 7, 9, 11), generator=g).float()  # many ties
    assert torch.equal(first_max(scores), scores.argmax(1).to(torch.int32))
    scores[0, :, 0, 0] = 5.0  # all equal: class 0
    assert int(first_max(scores)[0, 0, 0]) == 0


def test_folder_frames_spread_and_refusals(tmp_path, frames_dir):
    frames = quantize.folder_frames(frames_dir, limit=3)
    assert len(frames) == 3 and all(f.shape == (120, 160, 3) and f.dtype == np.uint8
                                    for f in frames)
    assert np.array_equal(frames[0], synthetic_image(120, 160, seed=0))
    assert np.array_equal(frames[-1], synthetic_image(120, 160, seed=4))  # first and last
    with pytest.raises(quantize.CalibrationError, match='not a folder'):
        quantize.folder_frames(tmp_path / 'missing')
    with pytest.raises(quantize.CalibrationError, match='holds no image'):
        quantize.folder_frames(tmp_path)
    (tmp_path / 'bad.png').write_bytes(b'\x89PNG not really')
    with pytest.raises(quantize.CalibrationError, match='does not decode'):
        quantize.folder_frames(tmp_path)


def test_calibration_sets_of_shipped_and_other_weights():
    camvid = quantize.calibration_set('', 'camvid')
    assert len(camvid.frames) >= 8 and camvid.frames[0].shape == (360, 480, 3)
    said: list[str] = []
    other = quantize.calibration_set('', '', said.append)
    assert len(other.frames) == quantize.GENERATED_FRAMES and 'generated tables' in said[0]
    assert quantize.calibration_set('', 'tabletop').digest == other.digest  # deterministic
    assert camvid.digest != other.digest


def test_fit_resizes_to_the_graph_input():
    f = synthetic_image(120, 160)
    assert np.array_equal(quantize.fit(f, 120, 160), f)
    out = quantize.fit(f, 60, 100)
    assert out.shape == (60, 100, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - float(f.mean())) < 3.0


def test_parameters_accept_int8_and_refuse_a_missing_folder(tmp_path):
    assert BY_NAME['precision'].check('int8') is None
    assert 'must be one of' in BY_NAME['precision'].check('int4')
    check = BY_NAME['int8.calibration_dir'].check
    assert check('') is None and check(str(tmp_path)) is None
    assert 'not a folder' in check(str(tmp_path / 'nope'))


@pytest.mark.parametrize('backend', [pytest.param(b, marks=able(b))
                                     for b in ('openvino', 'onnxruntime')])
def test_int8_graph_built_in_warm_up_cached_and_quantized(weights, tmp_path, frames_dir,
                                                           backend):
    seg, lines = segmenter(weights, backend, tmp_path, frames_dir)
    assert seg.compiled.precision == 'int8'
    # the graph ends at the coarse class scores; UpsampledMax takes the labels
    assert seg.compiled.graph.coarse and 'coarse' in seg.compiled.key_extra()
    pipe = Pipeline(torch.device('cpu'), semantic=seg)
    pipe.warm_up(H, W, keep_image=False)
    built = [ln for ln in lines if 'quantized' in ln]
    assert len(built) == 1 and '5 frames of' in built[0], lines
    files = list((tmp_path / 'int8').glob('*.xml' if backend == 'openvino' else '*.onnx'))
    assert len(files) == 1
    if backend == 'openvino':
        assert 'FakeQuantize' in files[0].read_text()
    else:
        ops = {n.op_type for n in onnx.load(str(files[0])).graph.node}
        assert 'QLinearConv' in ops, ops
    int8 = seg.from_pixels(pixels()).labels
    ref, _ = segmenter(weights, backend, tmp_path / 'fp32', frames_dir, precision='fp32')
    want = ref.from_pixels(pixels()).labels
    assert int8.shape == want.shape and int8.dtype == want.dtype
    assert (int8 == want).mean() >= 0.7, (int8 == want).mean()
    # a second node with the same weights, frames and versions reuses the file
    again, lines2 = segmenter(weights, backend, tmp_path, frames_dir)
    Pipeline(torch.device('cpu'), semantic=again).warm_up(H, W, keep_image=False)
    assert any('int8 graph for input' in ln and 'reused from cache' in ln for ln in lines2)
    assert not any('quantized' in ln for ln in lines2), lines2
    assert np.array_equal(again.from_pixels(pixels()).labels, int8)


@pytest.mark.parametrize('backend', [pytest.param(b, marks=able(b)) for b in ABLE[:1]])
def test_a_size_not_warmed_runs_fp32_and_says_so_once(weights, tmp_path, frames_dir, backend):
    seg, lines = segmenter(weights, backend, tmp_path, frames_dir)
    Pipeline(torch.device('cpu'), semantic=seg).warm_up(H, W, keep_image=False)
    n_files = len(list((tmp_path / 'int8').iterdir()))
    for _ in range(2):
        seg.from_pixels(pixels(64, 80))
    told = [ln for ln in lines if 'runs fp32' in ln]
    assert len(told) == 1 and 'warmup_size' in told[0], lines
    assert len(list((tmp_path / 'int8').iterdir())) == n_files  # nothing built on a frame


def test_backends_without_int8_fall_back_or_refuse(weights, tmp_path, frames_dir, monkeypatch):
    if not backends.installed('onnxruntime'):
        pytest.skip('onnxruntime not installed')
    monkeypatch.setattr(quantize, 'quantizer_missing',
                        lambda b: f'backend {b} quantizes with x, which does not import')
    seg, lines = segmenter(weights, 'onnxruntime', tmp_path, frames_dir)
    assert seg.compiled.precision == 'fp32'
    assert any('precision=int8' in ln and 'running fp32' in ln for ln in lines), lines


def test_auto_picks_a_backend_that_quantizes():
    if 'openvino' in ABLE:
        assert backends.resolve('auto', torch.device('cpu'), 'int8') == 'openvino'


def test_undecodable_calibration_is_a_backend_error(weights, tmp_path):
    if not ABLE:
        pytest.skip('no backend can quantize here')
    bad = tmp_path / 'frames'
    bad.mkdir()
    (bad / 'x.jpg').write_bytes(b'no jpeg')
    seg, _ = segmenter(weights, ABLE[0], tmp_path, bad)
    with pytest.raises(BackendError, match='does not decode'):
        Pipeline(torch.device('cpu'), semantic=seg).warm_up(H, W, keep_image=False)


def test_chain_max_only_in_openvino_graphs(weights, tmp_path):
    for backend in ('openvino', 'onnxruntime'):
        if not backends.installed(backend):
            continue
        seg, _ = segmenter(weights, backend, tmp_path / backend, tmp_path, precision='fp32')
        assert isinstance(seg.compiled.graph, LabelGraph)
        assert seg.compiled.graph.chain_max == (backend == 'openvino')
        assert ('chain-max' in seg.compiled.key_extra()) == (backend == 'openvino')
        assert not seg.compiled.graph.coarse  # fp32: the whole graph, labels out


def test_shipped_calibration_set_is_small():
    # a dozen frames the camvid weights carry, not the dataset
    folder = Path(quantize.CALIBRATION_DIR) / 'camvid'
    files = list(folder.iterdir())
    assert 8 <= len(files) <= 16 and sum(f.stat().st_size for f in files) < 600_000


@pytest.mark.parametrize('backend', [pytest.param(b, marks=able(b)) for b in ABLE[:1]])
def test_instance_trunk_is_quantized_and_heads_stay_float(tmp_path, frames_dir, backend):
    from seg_ros.core.inference.instances import InstanceSegmenter
    from seg_ros.core.models.instance_backends import compile_instance_model
    from seg_ros.core.models.registry import load_instance_model
    torch.manual_seed(0)
    loaded = load_instance_model('maskrcnn_mobilenet_v3_large_fpn', 'none', 4,
                                 score_threshold=0.0, max_detections=20)
    lines: list[str] = []
    graphs = compile_instance_model(
        loaded.model, backend, loaded.name, torch.device('cpu'), 'int8', str(tmp_path),
        report=lines.append,
        calibration=lambda: quantize.calibration_set(str(frames_dir), '', lines.append))
    trunk, *heads = graphs
    assert trunk.precision == 'int8' and all(h.precision == 'fp32' for h in heads)
    seg = InstanceSegmenter(loaded, 'cpu', 0.0, 0.5, 20)
    pipe = Pipeline(torch.device('cpu'), instance=seg)
    assert set(pipe.compiled_graphs()) == set(graphs)
    pipe.warm_up(120, 160, keep_image=False)
    built = [ln for ln in lines if 'quantized' in ln]
    assert len(built) == 1 and '-backbone' in built[0], lines
    res = seg(torch.from_numpy(synthetic_image(120, 160)).permute(2, 0, 1)[None].float() / 255)
    assert res.id_map.shape == (120, 160)
