"""The defaults lose no data (issue 13, item 8): the embedded default, the production example and a
parameter file that says nothing about storage all keep every user's files across stops, culls,
upgrades and restarts (a per-user volume); `none` only when asked for, and then the deploy says that
files are lost. (A user's file kept across a stop and a start on a real deploy of the default:
tests/e2e/test_local_chain.py::test_the_default_keeps_a_users_files_across_a_stop.)"""
from __future__ import annotations

import logging
from pathlib import Path


from hubops.cli import main as cli
from hubops.hub import config as hubconfig
from hubops.stages import storage
from hubops.core.params import load_params
from tests.helpers import make_params

PROJECT = Path(__file__).resolve().parents[2]


def test_the_embedded_default_keeps_users_files_in_a_volume_per_user():
    p = load_params(PROJECT / "parameters/local.yaml")
    assert p.storage.users.mode == "node-local"
    config = hubconfig.render(p, singleuser_image="hubops-singleuser:test")
    # the spawner mounts volume hubops-local-home-USER at the home of every user's server
    assert "c.HubopsSpawner.home_mode = 'node-local'" in config
    assert "c.HubopsSpawner.home_volume_prefix = 'hubops-local'" in config
    assert "c.HubopsSpawner.home_target = '/home/jovyan'" in config


def test_the_production_example_keeps_users_files(monkeypatch):
    text = (PROJECT / "parameters/production.example.yaml").read_text()
    import yaml

    assert yaml.safe_load(text)["storage"]["users"]["mode"] in ("shared-path", "node-local", "volume-driver")


def test_a_file_that_says_nothing_about_storage_keeps_files(tmp_path):
    p = load_params(make_params(tmp_path, "hddef1", port=18410, subnet="10.164.10.0/24"))
    assert p.storage.users.mode == "node-local"
    assert "node-local" in storage.describe_users(p) and "lost" not in storage.describe_users(p).split(";")[0]


def test_none_only_when_asked_and_the_deploy_says_files_are_lost(tmp_path, capsys, caplog):
    p = load_params(make_params(tmp_path, "hddef2", port=18411, subnet="10.164.11.0/24",
                                extra="storage: {users: {mode: none}}\n"))
    assert p.storage.users.mode == "none"
    # 70-storage says it in its result and in the log (no engine is asked for mode none)
    with caplog.at_level(logging.WARNING, logger="hubops"):
        r = storage.ensure_user_storage(p, clients=None)
    assert any("LOST" in item.detail for item in r.items), r.items
    assert "users' files are LOST whenever their server stops" in caplog.text
    # and the deploy's summary says it where the operator reads where the hub is
    cli._print_access(p)
    out = " ".join(capsys.readouterr().err.split())
    assert "users' files are LOST whenever their server stops" in out, out


def test_the_deploy_summary_says_files_are_kept_by_default(tmp_path, capsys):
    p = load_params(make_params(tmp_path, "hddef3", port=18412, subnet="10.164.12.0/24"))
    cli._print_access(p)
    out = " ".join(capsys.readouterr().err.split())
    assert "files: kept across stops, culls and restarts (node-local" in out and "LOST" not in out, out
