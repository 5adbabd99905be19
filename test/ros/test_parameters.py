"""Every declared parameter is readable over the GetParameters service (string arrays
included), and a misspelt override is warned about with the closest declared name."""
import pytest
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters, ListParameters

from seg_ros.core.config.params import PARAMS

from helpers import serve_node

pytestmark = pytest.mark.ros

_TYPES = {'bool': ParameterType.PARAMETER_BOOL, 'int': ParameterType.PARAMETER_INTEGER,
          'double': ParameterType.PARAMETER_DOUBLE, 'string': ParameterType.PARAMETER_STRING,
          'string_array': ParameterType.PARAMETER_STRING_ARRAY}


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    args = ['-p', 'device:=cpu', '-p', 'warmup:=false', '-p', 'devcie:=cpu',
            '-p', 'semantic.input_sise:=0', '-p', 'zzzz_nothing_like_it:=1']
    yield from serve_node(tmp_path_factory.mktemp('params'), args)


def call(client, srv_type, name, request):
    cli = client.node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=20), name
    fut = cli.call_async(request)
    assert client.spin_until(fut.done, 20)
    client.node.destroy_client(cli)
    return fut.result()


def test_every_declared_parameter_has_a_value(served):
    node, client = served
    listed = call(client, ListParameters, '/segmentation/list_parameters',
                  ListParameters.Request()).result.names
    ours = [p.name for p in PARAMS]
    assert set(ours) <= set(listed)
    # one request for every declared name, as `ros2 param dump` does
    values = call(client, GetParameters, '/segmentation/get_parameters',
                  GetParameters.Request(names=list(listed))).values
    assert len(values) == len(listed)
    assert all(v.type != ParameterType.PARAMETER_NOT_SET for v in values)
    by_name = dict(zip(listed, values, strict=True))
    for p in PARAMS:
        assert by_name[p.name].type == _TYPES[p.type], p.name
    for name in ('semantic.class_names', 'instance.class_names', 'instance.classes'):
        assert list(by_name[name].string_array_value) == [], name


def test_misspelt_overrides_are_warned_with_the_closest_name(served):
    node, client = served
    log = node.log()
    assert "unknown parameter 'devcie' ignored" in log and 'did you mean device?' in log, log
    assert 'did you mean semantic.input_size?' in log, log
    line = [ln for ln in log.splitlines() if 'zzzz_nothing_like_it' in ln]
    assert len(line) == 1 and 'did you mean' not in line[0], log
