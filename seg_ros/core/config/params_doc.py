"""The parameter reference page (``docs/parameters.md``), rendered from the one parameter
table (:data:`seg_ros.core.config.params.PARAMS`). No rclpy.

``tools/params_doc.py`` writes it; ``test/unit/test_params.py`` fails when the file in the
repository differs from what the table renders (the page is never edited by hand).
"""
from __future__ import annotations

from typing import Any

from seg_ros.core.config.params import PARAMS, Param

HEADER = """\
# Parameters of `segment_node` (and `segment_lifecycle_node`, `segment_bag`)

Generated from the parameter table (`seg_ros/core/config/params.py`) by `tools/params_doc.py`;
do not edit by hand (`test/unit/test_params.py` fails when this page is stale).
`config/segment.yaml` holds every parameter with its default, ready to copy.

**Read-only** parameters are fixed at start (model, device, topics): change them with a
restart (`--ros-args -p name:=value`, or a params file). **Dynamic** ones can be set on a
running node (`ros2 param set /segmentation name value`); a value outside its range or
refused by its check is rejected with the reason, and the node keeps the old one.
"""


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, tuple):
        return '[]' if not v else '[' + ', '.join(map(str, v)) + ']'
    if isinstance(v, str):
        return f"`'{v}'`" if v == '' else f'`{v}`'
    return f'`{v}`'


def _range(p: Param) -> str:
    if p.int_range is not None:
        return f'{p.int_range[0]} .. {p.int_range[1]}'
    if p.float_range is not None:
        return f'{p.float_range[0]:g} .. {p.float_range[1]:g}'
    return ''


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def markdown() -> str:
    """The whole page, one table per group (the name's first dotted part)."""
    groups: dict[str, list[Param]] = {}
    for p in PARAMS:
        group = p.name.split('.')[0] if '.' in p.name else 'node'
        groups.setdefault(group, []).append(p)
    out = [HEADER]
    for group, params in groups.items():
        out.append(f'\n## {group}\n')
        out.append('| parameter | type | default | range | when | description |')
        out.append('|---|---|---|---|---|---|')
        for p in params:
            when = 'read-only' if p.read_only else 'dynamic'
            out.append(f'| `{p.name}` | {p.type} | {_cell(_value(p.default))} | '
                       f'{_range(p)} | {when} | {_cell(p.description)} |')
    return '\n'.join(out) + '\n'


YAML_HEADER = """\
# Parameters of seg_ros segment_node (default node name: segmentation), every one with its
# default. Generated from the parameter table (seg_ros/core/config/params.py) by
# tools/params_doc.py: do not edit by hand; copy it and change what you need.
# ros2 launch seg_ros segment.launch.py params_file:=/path/to/your_copy.yaml
# The wildcard applies to any node name / namespace the launch file gives.
# Every parameter: docs/parameters.md.
/**:
  ros__parameters:
"""


def _yaml_value(v: Any) -> str:
    import json
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, tuple):
        return '[' + ', '.join(json.dumps(x) for x in v) + ']'
    if isinstance(v, str):
        plain = v and v.strip() == v and not any(c in v for c in ':#{}[],&*!|>\'"%@`') \
            and v.lower() not in ('true', 'false', 'yes', 'no', 'on', 'off', 'null', '~') \
            and not _number(v)
        return v if plain else json.dumps(v)
    return repr(v)


def _number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _comment(p: Param, indent: str) -> list[str]:
    import textwrap
    text = p.description.rstrip('.') + '.'
    rng = _range(p)
    text += f' Range {rng}.' if rng else ''
    text += ' Read-only.' if p.read_only else ' Dynamic.'
    if p.type == 'string_array' and not p.default:
        text += (' Declared as an empty list; rcl\'s YAML parser refuses an empty sequence,'
                 ' so it is left out here.')
    return textwrap.wrap(text, 95 - len(indent), initial_indent=indent + '# ',
                         subsequent_indent=indent + '# ')


def yaml_text() -> str:
    """``config/segment.yaml``: every parameter with its default and its description, nested
    by the dotted name (a string array with an empty default is shown commented out).
    """
    tree: dict[str, Any] = {}
    for p in PARAMS:
        node = tree
        for part in p.name.split('.')[:-1]:
            node = node.setdefault(part, {})
        node[p.name.split('.')[-1]] = p
    out = [YAML_HEADER.rstrip('\n')]

    def emit(node: dict[str, Any], depth: int) -> None:
        indent = '  ' * depth
        leaves = [(k, v) for k, v in node.items() if isinstance(v, Param)]
        groups = [(k, v) for k, v in node.items() if not isinstance(v, Param)]
        for key, p in leaves:
            out.extend(_comment(p, indent))
            line = f'{key}: {_yaml_value(p.default)}'
            out.append(indent + ('# ' + line if p.type == 'string_array' and not p.default
                                 else line))
        for key, sub in groups:
            out.append('')
            out.append(f'{indent}{key}:')
            emit(sub, depth + 1)
    emit(tree, 2)
    return '\n'.join(out) + '\n'
