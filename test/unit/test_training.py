"""train_instances / eval_instances / the tabletop generator, without ROS."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_ros.core.models.registry import ModelLoadError, load_instance_model, read_weights_file
from seg_ros.synthetic import tabletop
from seg_ros.training import coco, make_tabletop, train_instances

W, H = 64, 48


def _rect(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed_rle(mask):
    flat = mask.T.ravel()  # column-major, as COCO
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {'size': [H, W], 'counts': counts}


def _dataset(tmp: Path, mutate=None) -> tuple[Path, Path]:
    """Three images: a polygon, an uncompressed RLE, a compressed RLE and a crowd region."""
    images = tmp / 'img'
    images.mkdir(exist_ok=True)
    data = {'images': [], 'annotations': [],
            'categories': [{'id': 3, 'name': 'bracket'}, {'id': 7, 'name': 'tote'}]}
    for i in range(3):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(images / f'{i}.png')
        data['images'].append({'id': i + 1, 'file_name': f'{i}.png', 'width': W, 'height': H})
    poly = {'id': 1, 'image_id': 1, 'category_id': 3, 'iscrowd': 0, 'area': 200.0,
            'bbox': [10, 10, 20, 10], 'segmentation': [[10, 10, 30, 10, 30, 20, 10, 20]]}
    rle = {'id': 2, 'image_id': 2, 'category_id': 7, 'iscrowd': 0, 'area': 150.0,
           'bbox': [5, 5, 15, 10], 'segmentation': _uncompressed_rle(_rect(5, 5, 20, 15))}
    crle = coco.annotation(3, 3, 3, _rect(30, 20, 50, 40))
    crowd = dict(coco.annotation(4, 3, 7, _rect(0, 0, 10, 10)), iscrowd=1)
    data['annotations'] = [poly, rle, crle, crowd]
    if mutate:
        mutate(data, images)
    path = tmp / 'ann.json'
    path.write_text(json.dumps(data))
    return path, images


def test_polygon_and_rle_masks_and_crowd(tmp_path):
    ds = coco.load_coco(*_dataset(tmp_path))
    assert ds.class_names == ['__background__', 'bracket', 'tote']
    _, labels, masks = ds.load(1)
    assert labels.tolist() == [1] and 180 <= masks[0].sum() <= 231  # 20x10 polygon
    _, labels, masks = ds.load(2)
    assert labels.tolist() == [2] and np.array_equal(masks[0], _rect(5, 5, 20, 15))
    _, labels, masks = ds.load(3)  # the crowd region is not a training object
    assert labels.tolist() == [1] and np.array_equal(masks[0], _rect(30, 20, 50, 40))


@pytest.mark.parametrize('mutate, expect', [
    (lambda d, im: (im / '1.png').unlink(), "image '1.png' not found"),
    (lambda d, im: d['annotations'][0]['segmentation'][0].__setitem__(2, 90),
     'outside the 64x48 image'),
    (lambda d, im: d['annotations'][1]['segmentation'].__setitem__('size', [10, 10]),
     'does not fit the 64x48 image'),
    (lambda d, im: d['annotations'][0].__setitem__('category_id', 5),
     'category_id 5, not among the categories [3, 7]'),
    (lambda d, im: d.__setitem__('annotations', []), 'no (non-crowd) annotated objects'),
    (lambda d, im: d.__setitem__('images', []), 'has no images'),
    (lambda d, im: d.pop('categories'), 'not a COCO instance file'),
])
def test_bad_dataset_one_line(tmp_path, capsys, mutate, expect):
    ann, images = _dataset(tmp_path, mutate)
    with pytest.raises(coco.DatasetError, match=re.escape(expect)):
        coco.load_coco(ann, images)
    rc = train_instances.main(['--coco', str(ann), '--images', str(images), '--epochs', '1',
                               '--out', str(tmp_path / 'w.pt')])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and expect in err[0] and 'Traceback' not in err[0]


def test_evaluate_perfect_and_empty(tmp_path):
    ds = coco.load_coco(*_dataset(tmp_path))
    preds = [coco.prediction(1, 3, ds.coco.annToMask(ds.coco.anns[1]), 0.9),
             coco.prediction(2, 7, _rect(5, 5, 20, 15), 0.8),
             coco.prediction(3, 3, _rect(30, 20, 50, 40), 0.7)]
    assert coco.evaluate(ds, preds)['AP50'] == pytest.approx(1.0)
    wrong_class = [dict(p, category_id=10 - p['category_id']) for p in preds]
    assert coco.evaluate(ds, wrong_class)['AP'] == pytest.approx(0.0)
    assert coco.evaluate(ds, []) == {'AP': 0.0, 'AP50': 0.0, 'AP75': 0.0}


def test_tabletop_scenes_exact_and_reproducible():
    a = tabletop.render(np.random.default_rng([5, 1]), 96, 72)
    b = tabletop.render(np.random.default_rng([5, 1]), 96, 72)
    c = tabletop.render(np.random.default_rng([5, 2]), 96, 72)
    assert np.array_equal(a.rgb, b.rgb) and not np.array_equal(a.rgb, c.rgb)
    assert a.object_map.max() <= len(a.objects)
    found = list(a.instances(min_area=1))
    assert len(found) >= 2, 'the scene must hold objects: an empty one proves nothing'
    for cls, mask in found:
        assert cls in tabletop.CLASSES and mask.any()
    # objects are nearer to the camera than the table around them
    on_obj = a.object_map > 0
    valid = a.depth > 0
    assert (on_obj & valid).any() and (~on_obj & valid).any()
    assert np.median(a.depth[on_obj & valid]) < np.median(a.depth[~on_obj & valid])


def test_every_generated_object_stands_over_the_table():
    """tabletop.table_under: an object drawn beyond the table's edge widens the table (it
    stood in mid-air at the table's height before); the table never shrinks."""
    near = tabletop.Solid('box', (0.1, 0.0, 0.05), tuple(map(tuple, np.eye(3))),
                          (0.05, 0.05, 0.05), (1, 0, 0), (0, 1, 0), 'solid', 100.0)
    far = tabletop.Solid('cylinder', (2.0, -1.0, 0.03), tuple(map(tuple, np.eye(3))),
                         (0.03, 0.03, 0.1), (1, 0, 0), (0, 1, 0), 'solid', 100.0)
    centre = np.zeros(2)
    assert np.array_equal(tabletop.table_under([near], centre, np.array([0.6, 0.7])),
                          [0.6, 0.7])
    half = tabletop.table_under([near, far], centre, np.array([0.6, 0.7]))
    reach = np.linalg.norm(far.size)
    assert half[0] >= 2.0 + reach and half[1] >= 1.0 + reach and half[1] < 1.2


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp('tabletop')
    ann = make_tabletop.make(out, 4, seed=3, width=128, height=96, workers=1)
    return ann, out / 'images'


def test_train_resume_and_self_describing_file(tiny_set, tmp_path, capsys):
    ann, images = tiny_set
    out = tmp_path / 'parts.pt'
    common = ['--coco', str(ann), '--images', str(images), '--val-coco', str(ann),
              '--val-images', str(images), '--size', '96', '--batch', '2', '--out', str(out)]
    assert train_instances.main(common + ['--epochs', '1']) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['epochs'] == 1 and summary['steps'] == 2 and 'AP' in summary['best']
    state, meta = read_weights_file(out)
    assert meta['model'] == 'maskrcnn_mobilenet_v3_large_fpn'
    assert meta['class_names'] == ['__background__', 'box', 'cylinder']
    assert meta['train_size'] == 96 and meta['seg_ros_version']
    assert torch.load(out, weights_only=True)['state_dict'].keys() == state.keys()
    loaded = load_instance_model('', str(out))  # the file alone is enough
    assert loaded.name == 'maskrcnn_mobilenet_v3_large_fpn' and loaded.train_size == 96
    assert loaded.class_names == ['__background__', 'box', 'cylinder']
    with pytest.raises(ModelLoadError, match='contradicts weights file'):
        load_instance_model('maskrcnn_resnet50_fpn_v2', str(out))
    # resume: the checkpoint carries on to the second epoch
    assert train_instances.main(common + ['--epochs', '2', '--resume']) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['epochs'] == 2 and summary['steps'] == 4
    assert [h['epoch'] for h in summary['history']] == [1, 2]


def test_init_refusals(tiny_set, tmp_path, capsys):
    ann, images = tiny_set
    base = ['--coco', str(ann), '--images', str(images), '--epochs', '1', '--size', '64',
            '--out', str(tmp_path / 'w.pt')]
    rc = train_instances.main(base + ['--init', str(tmp_path / 'missing.pt')])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and 'weights file not found' in err[0]
    rc = train_instances.main(base + ['--model', 'maskrcnn_resnet50_fpn', '--init', 'camvid'])
    assert rc == 2 and 'MobileNetV3 trunk' in capsys.readouterr().err
    rc = train_instances.main(base + ['--freeze-trunk', '4'])  # --init none: a random trunk
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and 'needs a trained trunk' in err[0]


def test_camvid_trunk_fits_the_light_model():
    model, how, trained = train_instances.build(
        'maskrcnn_mobilenet_v3_large_fpn', ['__background__', 'a'], 96, 'camvid')
    assert trained and 'CamVid' in how
    n_trunk = sum(1 for k in model.state_dict() if k.startswith('backbone.body.'))
    assert f'{n_trunk}/' in how  # every trunk tensor came from the shipped file
    frozen = train_instances.freeze_trunk(model, 7)
    grad = {k: p.requires_grad for k, p in model.named_parameters()}
    assert frozen == sum(1 for k in grad if k.split('.')[2] in set('0123456')
                         and k.startswith('backbone.body.'))
    assert not any(v for k, v in grad.items() if k.startswith('backbone.body.6.'))
    assert all(v for k, v in grad.items() if k.startswith(('backbone.body.7.', 'backbone.fpn',
                                                           'roi_heads', 'rpn')))
    with pytest.raises(train_instances.TrainError, match='the trunk has 17 blocks'):
        train_instances.freeze_trunk(model, 18)
