"""Parameter table validation (no ROS)."""
import yaml

from seg_ros.core.config.params import BY_NAME, PARAMS, names, validate


def test_valid_defaults():
    for p in PARAMS:
        assert validate(p.name, p.default) is None, p.name


def test_refusals_name_the_reason():
    assert 'cuda:N' in validate('device', 'gpu')
    assert validate('device', 'cuda:1') is None
    assert 'outside' in validate('instance.score_threshold', 1.5)
    assert 'expected int' in validate('semantic.input_size', 'big')
    assert 'expected int' in validate('semantic.input_size', True)
    assert 'one of' in validate('semantic.model', 'segformer')
    assert validate('instance.score_threshold', 1) is None  # ints are fine for doubles
    assert validate('some.other.param', object()) is None   # unknown parameters pass


def test_names_helper():
    assert names(None) == [] and names(['']) == [] and names(['a', '', 'b']) == ['a', 'b']


def test_yaml_documents_every_parameter():
    with open('config/segment.yaml', encoding='utf-8') as f:
        text = f.read()
    doc = yaml.safe_load(text)['/**']['ros__parameters']

    def flat(d, prefix=''):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f'{prefix}{k}.')
            else:
                yield f'{prefix}{k}', v
    values = dict(flat(doc))
    for p in PARAMS:
        leaf = p.name.split('.')[-1]
        if p.default == ():  # empty string arrays are shown commented out (rcl's YAML
            # parser refuses an empty sequence)
            assert f'# {leaf}:' in text, p.name
        else:
            assert values[p.name] == p.default, p.name
    assert set(values) <= set(BY_NAME)


def test_parameters_page_is_generated_from_the_table():
    """docs/parameters.md is what tools/params_doc.py renders from the table, and every
    declared parameter has its row (the page is never edited by hand)."""
    from pathlib import Path

    from seg_ros.core.config.params_doc import markdown
    page = Path(__file__).resolve().parents[2] / 'docs' / 'parameters.md'
    text = page.read_text(encoding='utf-8')
    assert text == markdown(), 'docs/parameters.md is stale: run tools/params_doc.py'
    for p in PARAMS:
        assert f'| `{p.name}` |' in text, p.name


def test_segment_yaml_is_generated_from_the_table():
    """config/segment.yaml (values and comments) is what tools/params_doc.py renders: a
    description changed in the table and not in the file fails here."""
    from pathlib import Path

    from seg_ros.core.config.params_doc import yaml_text
    path = Path(__file__).resolve().parents[2] / 'config' / 'segment.yaml'
    assert path.read_text(encoding='utf-8') == yaml_text(), \
        'config/segment.yaml is stale: run tools/params_doc.py'
    for p in PARAMS:  # every parameter's description is in its comment
        first_words = ' '.join(p.description.split()[:4])
        assert first_words in ' '.join(
            line.strip().lstrip('#').strip() for line in path.read_text().splitlines()), p.name


def test_reading_a_params_file_imports_no_torch():
    """The table, its validation and a params file's Settings load without torch (segment_bag
    refuses a bad file, the docs are rendered, without loading a model library)."""
    import subprocess
    import sys
    code = ('import sys, yaml\n'
            'from seg_ros.core.config.settings import Settings\n'
            'from seg_ros.core.config import params_doc\n'
            'doc = yaml.safe_load(open("config/segment.yaml"))["/**"]["ros__parameters"]\n'
            'def flat(d, p=""):\n'
            '    for k, v in d.items():\n'
            '        yield from flat(v, p + k + ".") if isinstance(v, dict) else [(p + k, v)]\n'
            's = Settings.from_values(dict(flat(doc)))\n'
            'params_doc.markdown()\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("torch", "torchvision", "numpy", "rclpy")))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == '[]', out


def test_names_agree_with_the_registry():
    from seg_ros.core.config import names
    from seg_ros.core.models import backends, registry
    assert tuple(registry.SEMANTIC_MODELS) == names.SEMANTIC_MODEL_NAMES
    assert tuple(registry.INSTANCE_MODELS) == names.MASKRCNN_NAMES
    assert names.INSTANCE_MODEL_NAMES == (*names.MASKRCNN_NAMES, names.YOLO_SEG,
                                          names.DEPTH_OBJECTS)
    assert backends.BACKENDS == names.BACKENDS
    assert all((registry.WEIGHTS_DIR / f).is_file() for f in names.SHIPPED_INSTANCE.values())
    assert all((registry.WEIGHTS_DIR / s['file']).is_file()
               for s in names.SHIPPED_SEMANTIC.values())
