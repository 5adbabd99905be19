"""An immutable snapshot of the parameters the computation reads. No rclpy.

The live node builds a :class:`Settings` from its declared parameters and a new one on every
accepted change; the worker takes the newest between two batches, so one batch never sees
half of a change. ``segment_bag`` builds one from the same table without a node
(:func:`resolve_values`: defaults, then params files, then ``-p`` overrides, each validated as
the node validates them).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from seg_ros.core.config.params import BY_NAME, PARAMS, names, validate, validate_together


class SettingsError(ValueError):
    """A parameter value, params file or override is refused (the message says why)."""


@dataclass(frozen=True)
class Settings:
    """Every parameter value, plus typed fields for what the frame processor reads.

    Build with :meth:`from_values`; never mutate (a change is a new snapshot).
    """

    values: Mapping[str, Any] = field(repr=False)
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    classes: tuple[str, ...] = ()
    tracking: bool = False
    track_iou: float = 0.3
    track_timeout: float = 1.0
    depth_enabled: bool = False
    depth_slop: float = 0.02
    depth_min: float = 0.1
    depth_max: float = 20.0
    depth_min_points: int = 20
    depth_stride: int = 2
    target_frame: str = ''
    tf_timeout: float = 0.1
    max_image_pixels: int = 16384 * 16384
    max_age: float = 0.0
    input_timeout: float = 5.0
    max_batch: int = 0
    cameras: tuple[str, ...] = ()
    warmup_sizes: tuple[tuple[int, int], ...] = ((240, 320),)  # (height, width)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """A snapshot of ``values`` (parameter name -> value; missing names take the
        table's defaults).

        Raises:
            SettingsError: a value the node would refuse.
        """
        full = {p.name: p.default for p in PARAMS}
        full.update({k: v for k, v in values.items() if v is not None})
        for name, value in full.items():
            err = validate(name, value)
            if err:
                raise SettingsError(err)
        err = validate_together(full)
        if err:
            raise SettingsError(err)
        frozen = MappingProxyType({k: tuple(v) if isinstance(v, list) else v
                                   for k, v in full.items()})
        cameras = tuple(names(full['cameras']))
        return cls(
            values=frozen,
            score_threshold=float(full['instance.score_threshold']),
            mask_threshold=float(full['instance.mask_threshold']),
            classes=tuple(names(full['instance.classes'])),
            tracking=bool(full['instance.tracking']),
            track_iou=float(full['instance.track_iou']),
            track_timeout=float(full['instance.track_timeout']),
            depth_enabled=bool(full['depth.enabled']),
            depth_slop=float(full['depth.slop']),
            depth_min=float(full['depth.min']), depth_max=float(full['depth.max']),
            depth_min_points=int(full['depth.min_points']),
            depth_stride=int(full['depth.stride']),
            target_frame=str(full['depth.target_frame']),
            tf_timeout=float(full['depth.tf_timeout']),
            max_image_pixels=int(full['max_image_pixels']),
            max_age=float(full['max_age']),
            input_timeout=float(full['input_timeout']),
            max_batch=int(full['max_batch']) or max(len(cameras), 1),
            cameras=cameras,
            warmup_sizes=tuple((int(h), int(w)) for w, h in (
                size.split('x') for size in str(full['warmup_size']).replace(' ', '').split(','))))

    def __getitem__(self, name: str) -> Any:
        """A parameter's value by its ROS name (``settings['semantic.model']``)."""
        return self.values[name]

    def with_changes(self, changes: Mapping[str, Any]) -> Settings:
        """A new snapshot with ``changes`` applied (validated together).

        Raises:
            SettingsError: a changed value is refused.
        """
        return Settings.from_values({**self.values, **changes})


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def _wildcard(key: str) -> str:
    """A params-file node key as a regex: ``**`` any run of names, ``*`` one token."""
    key = key if key.startswith('/') else '/' + key
    return re.escape(key).replace(r'\*\*', '.*').replace(r'\*', '[^/]*')


def params_file_values(path: str | Path, node_name: str = 'segmentation',
                       namespace: str = '/') -> dict[str, Any]:
    """The ``ros__parameters`` a ROS 2 params file gives a node, as rcl applies them: every
    top-level key that matches the node's fully qualified name (``/**``, ``/*``, ``name``,
    ``/ns/name`` wildcards) in file order, nested keys joined with dots.

    Raises:
        SettingsError: unreadable or not a ROS 2 params file.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f'params file {path}: {str(exc).splitlines()[0]}') from None
    if not isinstance(doc, Mapping):
        raise SettingsError(f'params file {path}: not a ROS 2 parameters file')
    fqn = namespace.rstrip('/') + '/' + node_name
    out: dict[str, Any] = {}
    for key, body in doc.items():
        if not re.fullmatch(_wildcard(str(key)), fqn):
            continue
        if not isinstance(body, Mapping) or 'ros__parameters' not in body:
            raise SettingsError(f'params file {path}: {key}: expected ros__parameters')
        out.update(_flatten(body['ros__parameters'] or {}))
    return out


def override_value(text: str) -> tuple[str, Any]:
    """``NAME:=VALUE`` as ``ros2 run ... -p`` takes it (the value read as YAML).

    Raises:
        SettingsError: not NAME:=VALUE.
    """
    if ':=' not in text:
        raise SettingsError(f'-p {text}: expected NAME:=VALUE')
    name, raw = text.split(':=', 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ''
    except yaml.YAMLError:
        value = raw
    return name.strip(), value


def resolve_values(params_files: Iterable[str | Path] = (), overrides: Iterable[str] = (),
                   node_name: str = 'segmentation') -> dict[str, Any]:
    """Parameter values for a node without ROS: params files in order, then ``-p``
    overrides (names this node does not declare are kept: see :func:`unknown_names`).

    Raises:
        SettingsError: an unreadable file or a malformed override.
    """
    values: dict[str, Any] = {}
    for path in params_files:
        values.update(params_file_values(path, node_name))
    for text in overrides:
        name, value = override_value(text)
        values[name] = value
    # a YAML 1 for a double parameter: the value the user meant
    return {k: (float(v) if k in BY_NAME and BY_NAME[k].type == 'double'
                and isinstance(v, int) and not isinstance(v, bool) else v)
            for k, v in values.items()}


def unknown_names(values: Iterable[str]) -> list[str]:
    """One warning per name no parameter has, with the closest declared name."""
    out = []
    for name in sorted(values):
        if name in BY_NAME or name.startswith('qos_overrides.'):
            continue
        close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.6)
        hint = f'; did you mean {close[0]}?' if close else \
            ' (see ros2 param list, or config/segment.yaml)'
        out.append(f'unknown parameter {name!r} ignored: this node declares no such '
                   f'parameter{hint}')
    return out
