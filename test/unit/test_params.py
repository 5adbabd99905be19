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
    assert 'one of' in validate('semantic.model', 'unet')
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
