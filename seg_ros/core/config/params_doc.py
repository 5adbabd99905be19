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
