"""/diagnostics of the node: one status per camera (rates, latency, stages, drops)."""
from __future__ import annotations

from collections.abc import Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from seg_ros.core.inference.pipeline import Pipeline


def diagnostics(node_name: str, cameras: Sequence, pipeline: Pipeline | None,
                stamp) -> DiagnosticArray:
    """The DiagnosticArray of ``cameras`` (:class:`seg_ros.ros.camera.Camera`): WARN when a
    camera dropped frames for any reason other than being superseded, or receives nothing
    (``cam.silence``, said in the message).
    """
    models = []
    if pipeline is not None and pipeline.semantic is not None:
        models.append(f'semantic={pipeline.semantic.loaded.name}')
    if pipeline is not None and pipeline.instance is not None:
        models.append(f'instance={pipeline.instance.loaded.name}')
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    for cam in cameras:
        snap = cam.stats.snapshot()
        drops = snap.pop('drops')
        status = DiagnosticStatus()
        status.name = f'{node_name}: segmentation' + (f' {cam.name}' if cam.name else '')
        status.hardware_id = str(pipeline.device) if pipeline is not None else 'none'
        errors = sum(v for k, v in drops.items() if k != 'superseded')
        silence = getattr(cam, 'silence', None)
        status.level = DiagnosticStatus.OK if not errors and not silence else \
            DiagnosticStatus.WARN
        status.message = (f'{snap["processed_rate_hz"]:.1f} Hz processed, '
                          f'{snap["input_rate_hz"]:.1f} Hz in') + (f'; {silence}' if silence
                                                                   else '')
        values = {'device': status.hardware_id, 'model': ' '.join(models),
                  'input_topic': cam.input_topic}
        if cam.name:
            values['camera'] = cam.name
            values['frames_batched'] = str(cam.batched)
        values.update({k: f'{v:.6g}' if isinstance(v, float) else str(v)
                       for k, v in snap.items()})
        values.update({f'drops.{k}': str(v) for k, v in sorted(drops.items())})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr.status.append(status)
    return arr
