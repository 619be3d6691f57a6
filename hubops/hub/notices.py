"""Where the hub's notices (ops/announce, remove-node's warnings) are kept, so that they follow the hub.

They live beside the hub's database, because that is what moves with the hub:
- storage.hub.mode volume or shared-path: the file ``hubops-announcements.json`` in the hub's data
  folder, next to its SQLite database (a volume on the manager the hub is pinned to, or storage every
  manager mounts);
- storage.hub.mode postgres: a one-row table ``hubops_notices`` in the hub's own PostgreSQL database
  (hubops's server or an existing one). The data folder is then a local volume of whichever manager
  the hub runs on, so a notice kept there stayed behind when the hub moved. The hub reads the row on
  each page with its own login (libpq's environment, set by its configuration), so a new notice shows
  at once and after any failover, without restarting the hub.
  Until the first notice is written to the table (a deployment made by an older hubops), the hub and
  hubops read the data folder's file as before, so notices shown before an upgrade stay shown.

JupyterHub ignores tables it does not know (its schema check looks only at its own), and the table
goes with the database: pg_dump backups hold it, teardown of hubops's server removes it.
"""
from __future__ import annotations

import json
from typing import Any

from hubops.core.errors import HubopsError, NotDeployed
from hubops.core.engine import Clients
from hubops.core.params import Loaded

TABLE = "hubops_notices"

# Runs in the hub's image (its SQLAlchemy and psycopg2) as one of hubops's database tasks (hubdb.run_task:
# the login files in /tmp/hubops-db). argv[1] "read": prints {"table": bool, "notes": dict|None};
# "write": stores /tmp/hubops-db/notes.json as the only row.
_SCRIPT = """
import json, os, sys
import sqlalchemy as sa
D = os.environ.get("HUBOPS_TASK_DIR", "/tmp/hubops-db")  # another folder: tests run it against a local server
c = json.load(open(D + "/conn.json"))
args = {"password": open(D + "/pw").read().strip(), "sslmode": c["sslmode"], "connect_timeout": 10}
if c["sslmode"] != "disable":
    args["sslrootcert"] = D + "/ca.pem"
host = "[%s]" % c["host"] if ":" in c["host"] else c["host"]
eng = sa.create_engine("postgresql+psycopg2://%s@%s:%s/%s" % (c["user"], host, c["port"], c["db"]), connect_args=args)
with eng.begin() as con:
    if sys.argv[1] == "write":
        con.execute(sa.text("CREATE TABLE IF NOT EXISTS NOTICES_TABLE (id integer PRIMARY KEY CHECK (id = 1), "
                            "notes text NOT NULL, updated timestamptz NOT NULL DEFAULT now())"))
        con.execute(sa.text("INSERT INTO NOTICES_TABLE (id, notes) VALUES (1, :n) ON CONFLICT (id) DO UPDATE "
                            "SET notes = EXCLUDED.notes, updated = now()"), {"n": open(D + "/notes.json").read()})
        print(json.dumps({"written": True}))
    elif "NOTICES_TABLE" in sa.inspect(con).get_table_names():
        row = con.execute(sa.text("SELECT notes FROM NOTICES_TABLE WHERE id = 1")).fetchone()
        print(json.dumps({"table": True, "notes": json.loads(row[0]) if row else None}))
    else:
        print(json.dumps({"table": False, "notes": None}))
""".replace("NOTICES_TABLE", TABLE)


def in_database(p: Loaded) -> bool:
    """Whether this deployment's notices are kept in the hub's database (else in its data folder)."""
    return p.hub_db_postgres


def _task(p: Loaded, clients: Clients, action: str, files: dict[str, bytes] | None = None) -> dict[str, Any]:
    from hubops.hub import hubdb, running

    image = running.running_image(p, clients)
    if image is None:
        raise NotDeployed(f"no hub service {p.hub_service}: deploy first (hubops deploy -p {p.source})")
    code, out, _ = hubdb.run_task(p, clients, image, ["python3", "-c", _SCRIPT, action],
                                  what=f"{action} the hub's notices in its database", role="notices",
                                  files=files, timeout=120)
    lines = out.strip().splitlines()
    if code != 0 or not lines:
        raise HubopsError(f"{action} the hub's notices in {hubdb.describe(p)} failed (exit {code}): "
                          f"{out.strip()[-600:]}")
    return json.loads(lines[-1])


def read(p: Loaded, clients: Clients) -> dict[str, Any] | None:
    """The notices kept in the hub's database; None when none were ever written there."""
    got = _task(p, clients, "read")
    notes = got.get("notes")
    return notes if isinstance(notes, dict) else None


def write(p: Loaded, clients: Clients, notes: dict[str, Any]) -> None:
    """Keep `notes` as the hub's notices in its database (the whole set is replaced)."""
    _task(p, clients, "write", {"notes.json": json.dumps(notes, sort_keys=True).encode()})


def config_lines(p: Loaded, file_var: str) -> list[str]:
    """jupyterhub_config.py lines defining `read_notes()` for a deployment whose notices are in its
    database (`in_database`): the notices as a dict, read from the database at most every 5 s; `file_var`
    names the data folder's file, read while the table has no row. (Other deployments' configuration
    reads the file itself, as it always did.)"""
    from hubops.hub import hubdb

    lines = [
        "def read_notes_file():",
        "    try:",
        f"        notes = json.loads({file_var}.read_text())",
        "    except (OSError, ValueError):",
        "        return {}",
        "    return notes if isinstance(notes, dict) else {}",
    ]

    # The hub's own login to its database: libpq's environment (PGPASSWORD, TLS) set by this file.
    return lines + [
        "import sqlalchemy",
        "NOTES_DB = []",
        # One read per NOTES_TTL seconds, not one per page: the query runs on the hub's event loop, and a
        # hundred users' pages would each wait for the database. A new notice shows within that time.
        "NOTES_TTL = 5.0",
        "NOTES_SEEN = []  # [(monotonic time, notes)]",
        "def read_notes():",
        "    if NOTES_SEEN and time.monotonic() - NOTES_SEEN[0][0] < NOTES_TTL:",
        "        return NOTES_SEEN[0][1]",
        "    notes = read_notes_fresh()",
        "    NOTES_SEEN[:] = [(time.monotonic(), notes)]",
        "    return notes",
        "def read_notes_fresh():",
        "    try:",
        "        if not NOTES_DB:",
        f"            NOTES_DB.append(sqlalchemy.create_engine({hubdb.url(p)!r}, pool_pre_ping=True, pool_size=1,",
        "                                                     max_overflow=2))",
        "        with NOTES_DB[0].connect() as con:",
        f"            row = con.execute(sqlalchemy.text('SELECT notes FROM {TABLE} WHERE id = 1')).fetchone()",
        "    except sqlalchemy.exc.ProgrammingError:  # no table yet: the notices of an older hubops, if any",
        "        return read_notes_file()",
        "    except Exception:  # the database does not answer: the hub cannot serve either; show none",
        "        return {}",
        "    if row is None:",
        "        return read_notes_file()",
        "    try:",
        "        notes = json.loads(row[0])",
        "    except ValueError:",
        "        return {}",
        "    return notes if isinstance(notes, dict) else {}",
    ]
