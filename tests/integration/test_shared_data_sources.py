"""Preflight's check of shared data against the real local engine (hubops/stages/shared_data.py): a
data set's path that does not exist on a node, a group folder whose parent does not exist, a volume
driver a node does not have: each refused naming the key and the host. The engine is asked through
its own bind-mount check, with no image and no container made."""
from __future__ import annotations

import docker
import pytest

from hubops.core.engine import Clients
from hubops.core.errors import PreflightError
from hubops.core.params import load_params
from hubops.stages import shared_data
from tests.helpers import free_port, free_subnet, make_params, run_name

pytestmark = pytest.mark.engine
USERS = "operator admin\nalice @physics\n"


def check(tmp_path, extra: str):
    p = load_params(make_params(tmp_path, run_name("sdata"), port=free_port(), subnet=free_subnet(), extra=extra,
                                users=USERS))
    clients = Clients(p)
    try:
        return shared_data.check_sources(p, clients)
    finally:
        clients.close()


def containers() -> int:
    return len(docker.from_env().api.containers(all=True))


def test_present_sources_pass(tmp_path):
    (tmp_path / "census").mkdir()
    (tmp_path / "shared").mkdir()
    r = check(tmp_path, f"""
        shared_data:
          datasets: [{{name: census, path: {tmp_path / 'census'}}}]
          group_folders: [{{group: physics, gid: 2001, path: {tmp_path / 'shared' / 'physics'}}}]
          # a group folder is made by 70-storage: its parent is what must be there
    """)
    targets = [i.target for i in r.items]
    assert targets == [f"{tmp_path / 'census'} on local", f"{tmp_path / 'shared'} on local"], targets


def test_a_missing_data_set_path_is_refused_naming_the_key_and_host(tmp_path):
    before = containers()
    with pytest.raises(PreflightError) as e:
        check(tmp_path, f"shared_data: {{datasets: [{{name: census, path: {tmp_path / 'nowhere'}}}]}}")
    print(e.value)
    assert f"shared_data.datasets[0].path: {tmp_path / 'nowhere'} does not exist on host local" in str(e.value)
    assert containers() == before  # asked without making anything


def test_a_group_folder_without_its_parent_is_refused(tmp_path):
    with pytest.raises(PreflightError) as e:
        check(tmp_path, f"shared_data: {{group_folders: [{{group: physics, gid: 2001, path: {tmp_path / 'no' / 'physics'}}}]}}")
    assert f"shared_data.group_folders[0].path: {tmp_path / 'no'} does not exist on host local" in str(e.value)


def test_a_volume_driver_the_node_lacks_is_refused(tmp_path):
    with pytest.raises(PreflightError) as e:
        check(tmp_path, "shared_data: {datasets: [{name: sky, driver: hubops-no-such-driver}]}")
    assert "shared_data.datasets[0].driver: volume driver 'hubops-no-such-driver' is not installed on host local" \
        in str(e.value)
