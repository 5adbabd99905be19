"""YOLO segmentation ONNX files (Ultralytics' export layout), decoded without Ultralytics:
hand-made graphs whose answer is known, through the same loader and processor the node uses."""
import numpy as np
import pytest

from seg_ros.core.config.settings import Settings
from seg_ros.core.inference.loading import LoadError, load_pipeline
from seg_ros.core.inference.processor import FrameInput, FrameProcessor
from seg_ros.core.models.yolo_seg import letterbox_params, read_yolo_file
from seg_ros.core.spatial.imaging import buffer_to_frame
from seg_ros.testing.yolo_files import Row, expected, tabletop_rows, write_yolo_seg

KEPT = [0, 2, 4]  # of tabletop_rows(): the duplicate and the low score go


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('yolo')
    return {'v8': write_yolo_seg(tmp / 'seg.onnx'),
            # an end-to-end graph has done its NMS: no duplicate in its rows
            'e2e': write_yolo_seg(tmp / 'e2e.onnx', end2end=True,
                                  rows=[r for i, r in enumerate(tabletop_rows()) if i != 1]),
            'detect': write_yolo_seg(tmp / 'det.onnx', task='detect'),
            'batch2': write_yolo_seg(tmp / 'b2.onnx', batch=2)}


def settings(weights, **extra):
    values = {'device': 'cpu', 'semantic.enabled': False, 'instance.enabled': True,
              'instance.weights': str(weights), 'warmup': False, **extra}
    return Settings.from_values(values)


def run(path, h, w, **extra):
    s = settings(path, **extra)
    proc = FrameProcessor(load_pipeline(s), s)
    rgb = np.full((h, w, 3), 90, np.uint8)
    frame = buffer_to_frame('rgb8', h, w, w * 3, False, rgb.tobytes())
    return proc, proc.process([FrameInput('', frame, 1)])[0]


def test_file_metadata_is_read(files):
    info = read_yolo_file(files['v8'])
    assert info.names == ['cup', 'bottle'] and info.imgsz == (320, 416) and not info.end2end
    assert read_yolo_file(files['e2e']).end2end


@pytest.mark.parametrize('layout', ['v8', 'e2e'])
@pytest.mark.parametrize('hw', [(480, 640), (720, 1280), (300, 200)])
def test_known_answer(files, layout, hw):
    """Duplicate suppressed, the low score dropped, the other class kept over the cup; boxes
    within 2 px and masks IoU >= 0.9 in the frame's own pixels (the letterbox undone, the
    mask that crosses its box cropped to it). With ``instance.duplicate_iou: 1.0`` every
    detection is published as Ultralytics' predictor returns it; by default the bottle,
    which covers most of the cup's pixels, is the cup's second hypothesis instead."""
    h, w = hw
    proc, merged = run(files[layout], h, w)
    inst = merged.result.instances
    assert len(inst) == len(KEPT) - 1 and inst.class_ids[0] == 0, inst.scores
    assert [c for c, _ in inst.alternatives[0]] == [1] and inst.alternatives[1] == []
    assert inst.alternatives[0][0][1] == pytest.approx(0.6, abs=1e-6)
    proc, out = run(files[layout], h, w, **{'instance.duplicate_iou': 1.0})
    inst = out.result.instances
    want = expected([tabletop_rows()[i] for i in KEPT], (h, w))
    assert len(inst) == len(want), inst.scores
    names = proc.pipeline.instance.loaded.class_names
    assert names == ['cup', 'bottle']
    for k, (row, box, mask) in enumerate(want):  # descending score
        assert inst.class_ids[k] == row.cls
        assert inst.scores[k] == pytest.approx(row.score, abs=1e-6)
        np.testing.assert_allclose(inst.boxes[k], box, atol=2.0)
        got = inst.id_map == inst.ids[k]
        union = got | mask
        if k < 2:  # the bottle (k=2) lies under the cup's higher-scored pixels
            assert (got & mask).sum() / union.sum() >= 0.9, (k, row)
    bottle = inst.id_map == inst.ids[1]
    left_edge = expected([tabletop_rows()[2]], (h, w))[0][2]
    assert bottle.sum() < 0.6 * (inst.boxes[1][2] - inst.boxes[1][0]) * \
        (inst.boxes[1][3] - inst.boxes[1][1]), 'the mask crossing the box was not cut'
    assert (bottle & ~left_edge).sum() <= 0.05 * bottle.sum()


def test_score_threshold_and_nms_iou_are_parameters(files):
    s = settings(files['v8'], **{'instance.duplicate_iou': 1.0})  # every box an instance
    proc = FrameProcessor(load_pipeline(s), s)
    rgb = np.full((480, 640, 3), 90, np.uint8)
    frame = buffer_to_frame('rgb8', 480, 640, 640 * 3, False, rgb.tobytes())

    def scores():
        return list(np.round(proc.process([FrameInput('', frame, 1)])[0]
                             .result.instances.scores, 2))
    assert scores() == [0.9, 0.7, 0.6]
    proc.update(s.with_changes({'instance.score_threshold': 0.25}))
    assert scores() == [0.9, 0.7, 0.6, 0.3]
    proc.update(s.with_changes({'instance.score_threshold': 0.25, 'instance.nms_iou': 0.99}))
    assert scores() == [0.9, 0.8, 0.7, 0.6, 0.3]  # the duplicate (IoU ~0.86) survives 0.99


def test_letterbox_matches_ultralytics_rule():
    # Ultralytics' LetterBox: ratio min(h'/h, w'/w), sides rounded, padding centred
    assert letterbox_params(480, 640, (320, 416)) == (0.65, 312, 416, 4, 0)
    assert letterbox_params(720, 1280, (640, 640)) == (0.5, 360, 640, 140, 0)
    assert letterbox_params(300, 200, (320, 416)) == (320 / 300, 320, 213, 0, 101)


def test_refusals_are_one_line(files, tmp_path):
    def refusal(path, **extra):
        with pytest.raises(LoadError) as exc:
            load_pipeline(settings(path, **extra))
        text = str(exc.value)
        assert '\n' not in text
        return text
    assert 'a detection export, not a YOLO segmentation export' in refusal(files['detect'])
    assert 'exported with batch 2' in refusal(files['batch2'])
    assert 'contradict' in refusal(files['v8'], **{'instance.class_names': ['a', 'b']})
    assert 'contradicts' in refusal(files['v8'], **{'instance.num_classes': 3})
    assert 'no such file' in refusal(tmp_path / 'missing.onnx')
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'not onnx')
    assert 'not an ONNX model' in refusal(bad)
    assert 'torch architecture' in refusal(files['v8'], **{'instance.model':
                                                            'maskrcnn_resnet50_fpn'})
    assert 'yolo_seg needs instance.weights' in refusal(
        tmp_path / 'x.pt', **{'instance.model': 'yolo_seg'})


def test_openvino_backend_gives_the_same_answer(files):
    pytest.importorskip('openvino')
    _, ort = run(files['v8'], 480, 640)
    _, ov = run(files['v8'], 480, 640, **{'instance.backend': 'openvino'})
    a, b = ort.result.instances, ov.result.instances
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    assert np.array_equal(a.class_ids, b.class_ids)
    assert (a.id_map == b.id_map).mean() > 0.999


def test_an_empty_frame_and_a_row_without_mask(tmp_path):
    """No detection above the threshold: an empty answer, not an error; a detection whose
    mask is empty is dropped (Ultralytics' rule)."""
    path = write_yolo_seg(tmp_path / 'few.onnx', rows=[Row((10, 10, 50, 50), 0, 0.2)])
    assert len(run(path, 240, 320)[1].result.instances) == 0
    rows = [Row((10, 10, 50, 50), 0, 0.9, 'left'), Row((300, 10, 400, 50), 1, 0.8, 'left')]
    path = write_yolo_seg(tmp_path / 'empty_mask.onnx', rows=rows)
    inst = run(path, 320, 416)[1].result.instances
    assert list(inst.class_ids) == [0]  # the second box lies right of the left half
