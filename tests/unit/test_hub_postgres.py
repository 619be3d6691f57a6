"""storage.hub.mode postgres without an engine: parameters, the hub's config (checked with traitlets),
the archive's data read back for the manifest, and a backup of one mode refused by the other."""
from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from hubops.core.errors import BackupError, ParameterError
from hubops.core.params import load_params
from hubops.hub import config as hubconfig, hubdb
from hubops.ops import backup_pg
from tests.helpers import make_params, write_cert_pair


def params(tmp_path: Path, storage: str, *, managers: int = 1):
    f = make_params(tmp_path, "pgunit", port=18443, subnet="10.199.7.0/24", extra=f"storage: {storage}\n")
    if managers > 1:
        text = f.read_text().replace(
            '    - {name: local, url: "unix:///var/run/docker.sock", advertise_addr: 127.0.0.1}',
            "\n".join(f'    - {{name: m{i}, url: "unix:///run/m{i}.sock", advertise_addr: 10.9.0.{i}}}'
                      for i in range(1, managers + 1)))
        f.write_text(text)
    return load_params(f)


def test_hubops_own_postgres_defaults(tmp_path):
    p = params(tmp_path, "{hub: {mode: postgres}}")
    assert p.hub_db_postgres and p.hub_can_move
    assert p.db_service == "hubops-pgunit-db" and p.db_node == "local"
    assert hubdb.url(p) == "postgresql+psycopg2://hub@hubops-pgunit-db:5432/jupyterhub"
    assert "db-password" in hubconfig.secret_roles(p) and "db-ca" not in hubconfig.config_roles(p)


def test_db_node_may_be_another_manager(tmp_path):
    p = params(tmp_path, "{hub: {mode: postgres, postgres: {node: m3}}}", managers=3)
    assert p.db_node == "m3" and p.hub_host.name == "m1"


def test_external_server(tmp_path, monkeypatch):
    write_cert_pair(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    monkeypatch.setenv("HUBOPS_TEST_PG_PW", "s3cret-value")
    p = params(tmp_path, "{hub: {mode: postgres, postgres: {url: 'postgresql://jh@db.example.org:6543/hubdb', "
                         f"password: {{env: HUBOPS_TEST_PG_PW}}, ca: {tmp_path / 'ca.pem'}}}}}}}")
    assert hubdb.conn(p) == {"host": "db.example.org", "port": 6543, "user": "jh", "db": "hubdb",
                             "sslmode": "verify-full", "external": True}
    assert hubdb.password(p) == "s3cret-value"
    assert "db-ca" in hubconfig.config_roles(p)
    assert ("storage.hub.postgres.password", p.storage.hub.postgres.password) in p.secret_refs()


def test_external_password_unset_is_refused(tmp_path, monkeypatch):
    write_cert_pair(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    monkeypatch.delenv("HUBOPS_TEST_PG_UNSET", raising=False)
    with pytest.raises(ParameterError, match="storage.hub.postgres.password: environment variable HUBOPS_TEST_PG_UNSET"):
        params(tmp_path, "{hub: {mode: postgres, postgres: {url: 'postgresql://jh@db.example.org/hubdb', "
                         f"password: {{env: HUBOPS_TEST_PG_UNSET}}, ca: {tmp_path / 'ca.pem'}}}}}}}")


def test_rendered_config_has_no_password_and_loads(tmp_path, monkeypatch):
    p = params(tmp_path, "{hub: {mode: postgres}}")
    text = hubconfig.render(p, singleuser_image="hubops-singleuser:x")
    assert "sqlite" not in text
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name in hubconfig.SECRET_FILES.values():
        (secrets_dir / name).write_text("ab" * 16)
    (tmp_path / "ul").write_text("operator admin\nalice\n")
    monkeypatch.setenv("HUBOPS_SECRETS_DIR", str(secrets_dir))
    monkeypatch.setenv("HUBOPS_USERLIST", str(tmp_path / "ul"))
    cfg = Config()
    for k in ("PGPASSWORD", "PGSSLMODE", "PGCONNECT_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)  # the config sets them in the hub's own process
    exec(compile(text, "jupyterhub_config.py", "exec"), {"get_config": lambda: cfg})
    assert cfg.JupyterHub.db_url == "postgresql+psycopg2://hub@hubops-pgunit-db:5432/jupyterhub"
    import os

    assert os.environ["PGPASSWORD"] == "ab" * 16 and os.environ["PGSSLMODE"] == "disable"
    assert cfg.JupyterHub.db_kwargs == {"pool_pre_ping": True}


TOC = """;
; Archive created at 2026-12-01 18:00:00 UTC
215; 1259 16390 TABLE public users hub
216; 1259 16400 TABLE public spawners hub
217; 1259 16410 TABLE public alembic_version hub
3370; 0 16390 TABLE DATA public users hub
3371; 0 16400 TABLE DATA public spawners hub
3372; 0 16410 TABLE DATA public alembic_version hub
"""
SQL = """--
COPY public.alembic_version (version_num) FROM stdin;
4621fec11365
\\.

COPY public.users (id, name, admin, created, last_activity, cookie_id, encrypted_auth_state) FROM stdin;
1\toperator\tt\t2026-12-01 17:00:00\t\\N\tabc\t\\N
2\talice\tf\t2026-12-01 17:00:01\t\\N\tdef\t\\N
\\.

COPY public.spawners (id, user_id, server_id, state, name, started) FROM stdin;
1\t2\t3\t{"a": "b\\\\tc"}\t\t2026-12-01 17:01:00
2\t1\t\\N\t{}\tlab\t\\N
\\.
"""


def test_database_info_from_the_archive():
    info = backup_pg.database_info(SQL, TOC)
    assert info["engine"] == "postgres" and info["alembic_revision"] == "4621fec11365"
    assert info["users"] == [{"name": "alice", "admin": False}, {"name": "operator", "admin": True}]
    assert info["admins"] == ["operator"]
    assert info["servers"] == [{"user": "alice", "server": "", "running": True},
                               {"user": "operator", "server": "lab", "running": False}]


def test_an_archive_without_hub_tables_is_refused():
    with pytest.raises(BackupError, match="not JupyterHub's .no table spawners, alembic_version"):
        backup_pg.database_info("", "3370; 0 16390 TABLE DATA public users hub\n")


def test_a_backup_of_the_other_mode_is_refused_with_what_to_do(tmp_path):
    pg = params(tmp_path, "{hub: {mode: postgres}}")
    msg = backup_pg.mode_mismatch(pg, tmp_path, "sqlite")
    assert "holds a SQLite database" in msg and "hubops ops migrate-db" in msg
    assert backup_pg.mode_mismatch(pg, tmp_path, "postgres") is None
    lite = params(tmp_path, "{hub: {mode: volume}}")
    msg = backup_pg.mode_mismatch(lite, tmp_path, "postgres")
    assert "holds a PostgreSQL archive" in msg and "storage.hub.mode postgres" in msg
    assert backup_pg.mode_mismatch(lite, tmp_path, "sqlite") is None


def test_probe_refuses_an_address_that_does_not_answer(tmp_path, monkeypatch):
    from hubops.core.errors import PreflightError
    from tests.helpers import free_port

    write_cert_pair(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    monkeypatch.setenv("HUBOPS_TEST_PG_PW", "x" * 12)
    port = free_port()
    p = params(tmp_path, f"{{hub: {{mode: postgres, postgres: {{url: 'postgresql://jh@127.0.0.1:{port}/hubdb', "
                         f"password: {{env: HUBOPS_TEST_PG_PW}}, ca: {tmp_path / 'ca.pem'}}}}}}}")
    with pytest.raises(PreflightError, match="does not answer.*Nothing was changed"):
        hubdb.probe_tls(p, timeout=2)


def test_a_server_newer_than_hubops_pg_dump_is_named_at_deploy(tmp_path, monkeypatch):
    """hubops's pg_dump (images/postgres) refuses a newer server: 70-storage says so at deploy (the
    hub works), not the first `ops backup`."""
    write_cert_pair(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    monkeypatch.setenv("HUBOPS_TEST_PG_PW", "s3cret-value")
    p = params(tmp_path, "{hub: {mode: postgres, postgres: {url: 'postgresql://jh@db.example.org:6543/hubdb', "
                         f"password: {{env: HUBOPS_TEST_PG_PW}}, ca: {tmp_path / 'ca.pem'}}}}}}}")
    assert hubdb.backup_warning(p, 150014) is None and hubdb.backup_warning(p, 90624) is None
    warning = hubdb.backup_warning(p, 170002)
    assert "PostgreSQL 17" in warning and f"pg_dump {hubdb.PG_DUMP_MAJOR}" in warning and "db.example.org" in warning
    assert "s3cret" not in warning
