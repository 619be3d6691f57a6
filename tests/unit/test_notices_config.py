"""Where the hub's configuration reads its notices from, by storage.hub.mode (pure; the reader itself
runs against a real PostgreSQL in tests/integration/test_notices_db.py)."""
from __future__ import annotations

from hubops.core.params import load_params
from hubops.hub import config as hubconfig, notices
from tests.helpers import hub_config, make_params


def render(tmp_path, storage: str | None) -> tuple[object, str]:
    extra = f"storage: {storage}\n" if storage else ""
    p = load_params(make_params(tmp_path, "notesunit", port=18444, subnet="10.199.8.0/24", extra=extra))
    return p, hubconfig.render(p, singleuser_image="hubops-singleuser:abc")


def test_sqlite_modes_keep_reading_the_data_folder_file_as_before(tmp_path):
    for storage in (None, "{hub: {mode: shared-path, path: /mnt/nfs/hub}}"):
        p, text = render(tmp_path, storage)
        assert not notices.in_database(p)
        assert "json.loads(ANNOUNCEMENTS.read_text())" in text and "read_notes" not in text
        assert notices.TABLE not in text


def test_postgres_mode_reads_the_table_in_the_hubs_database_then_the_file(tmp_path, monkeypatch):
    p, text = render(tmp_path, "{hub: {mode: postgres, postgres: {}}}")
    assert notices.in_database(p)
    assert f"SELECT notes FROM {notices.TABLE} WHERE id = 1" in text
    assert repr(f"postgresql+psycopg2://hub@{p.db_service}:5432/jupyterhub") in text, "the hub's own URL, no password"
    for k in ("PGPASSWORD", "PGSSLMODE", "PGCONNECT_TIMEOUT"):
        monkeypatch.setenv(k, "")  # the configuration sets them in this process; undone after the test
    cfg = hub_config(p)  # executes as JupyterHub executes it; the reader connects only when a page is shown
    assert callable(cfg.JupyterHub.template_vars["announcement"])
