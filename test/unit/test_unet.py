"""semantic.model unet: segmentation_models_pytorch's Unet behind torchvision's interface,
loaded from a weights file, and served by a compiled backend like the other semantic models."""
import numpy as np
import pytest
import torch

from seg_ros.core.inference.semantic import SemanticSegmenter
from seg_ros.core.models.registry import ModelLoadError, load_semantic_model


def test_any_size_in_same_size_out():
    m = load_semantic_model('unet', 'none', 5).model
    with torch.inference_mode():
        for h, w in ((64, 96), (50, 70), (33, 129)):  # not multiples of the stride
            assert m(torch.rand(1, 3, h, w))['out'].shape == (1, 5, h, w)


def test_a_weights_file_names_its_classes(tmp_path):
    torch.manual_seed(0)
    src = load_semantic_model('unet', 'none', 7)
    path = tmp_path / 'unet.pt'
    torch.save(src.model.state_dict(), path)
    got = load_semantic_model('unet', str(path))  # classes read from the file
    assert got.num_classes == 7 and not got.random_init
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(src.model(x)['out'], got.model(x)['out'])
    with pytest.raises(ModelLoadError, match='has 7 classes'):
        load_semantic_model('unet', str(path), num_classes=4)
    with pytest.raises(ModelLoadError, match='no weights for unet'):
        load_semantic_model('unet', 'DEFAULT')


def test_onnxruntime_labels_equal_eager(tmp_path):
    torch.manual_seed(1)
    loaded = load_semantic_model('unet', 'none', 6)
    image = torch.rand(1, 3, 72, 100)
    eager = SemanticSegmenter(loaded, 'cpu', 0, backend='torch')(image).labels
    ort = SemanticSegmenter(loaded, 'cpu', 0, backend='onnxruntime',
                            cache_dir=str(tmp_path))(image).labels
    assert eager.shape == (72, 100) and len(np.unique(eager)) > 1
    assert (eager == ort).mean() >= 0.99
