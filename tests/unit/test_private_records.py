"""Records private from the first byte (issue 13, item 5), on small notebooks run by the real runner
and real kernels (no engine):

- a run folder is 0700 and every file in it 0600, whatever the umask;
- papermill writes into a private working path beside outputs/: a runner killed with SIGKILL while a
  stage has printed a secret leaves no file under outputs/ that holds it; `--resume` redacts the
  leftover into the record and removes the working copy;
- (tests/integration/test_generated_secrets.py: every generated secret is known to the redactor.)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat

from hubops.audit import runner
from hubops.core.params import load_params
from tests.helpers import make_params

PROJECT = Path(__file__).resolve().parents[2]
TOKEN = "hd-Zq8vR2mK9pL4xT7nW3cY6bF1gH5jD0sA"  # made up for this test; the runner's env names it *TOKEN*
RECORD = 'import hubops\nhubops.record("{name}", hubops.Result("x").change("create", "thing {name}"))'


def notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('params_file = ""  # the file\ndry_run = False  # plan')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def modes(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)) or ".": oct(f.stat().st_mode & 0o777) for f in [root, *root.rglob("*")]}


def test_run_folder_is_0700_and_every_file_0600_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    stages = [notebook(tmp_path / "00-a.ipynb", RECORD.format(name="00-a"), "print('hello')"),
              notebook(tmp_path / "10-b.ipynb", RECORD.format(name="10-b"))]
    monkeypatch.setattr(runner, "deploy_stages", lambda: stages)
    old = os.umask(0o022)  # the usual umask: files 0644, folders 0755 unless hubops says otherwise
    try:
        run = runner.run_chain(make_params(tmp_path, "hdpriv1", port=18401, subnet="10.164.1.0/24"))
    finally:
        os.umask(old)
    assert run.manifest["status"] == "ok"
    found = modes(run.dir)
    print(found)
    assert found.pop(".") == "0o700"
    assert {"run.json", "index.html", "00-a.ipynb", "10-b.ipynb", "00-a.html"} <= set(found)
    assert set(found.values()) == {"0o600"}, found
    assert not (runner.work_root() / run.id).exists(), "the private working copy is gone once published"


DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hubops.audit import runner
    stages = [Path(a) for a in sys.argv[2:]]
    runner.deploy_stages = lambda: stages
    runner.run_chain(sys.argv[1])
""")


def test_a_runner_killed_mid_stage_leaves_nothing_unredacted_under_outputs(tmp_path):
    outputs, work = tmp_path / "outputs", tmp_path / ".outputs-work"
    flag, release = tmp_path / "printed", tmp_path / "release"
    stages = [
        notebook(tmp_path / "00-a.ipynb", RECORD.format(name="00-a")),
        notebook(tmp_path / "10-leak.ipynb",
                 # a stage that prints a secret (as a careless debug line or a traceback would) ...
                 "import os\nprint('the token is', os.environ['HDPRIV_TOKEN'])",
                 # ... and then works for a while: the runner is killed here
                 f"import os, time\nopen({str(flag)!r}, 'w').close()\n"
                 f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.2)",
                 RECORD.format(name="10-leak")),
    ]
    params = make_params(tmp_path, "hdpriv2", port=18402, subnet="10.164.2.0/24")
    env = {**os.environ, "HUBOPS_OUTPUTS": str(outputs), "HDPRIV_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(params), *map(str, stages)], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not flag.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() - t0 < 120, "the stage did not reach its long cell"
            time.sleep(0.1)
        # Wait until papermill has saved the notebook with the printed secret (wherever it writes it):
        while not any(TOKEN.encode() in f.read_bytes() for f in [*outputs.rglob("*.ipynb"), *work.rglob("*.ipynb")]):
            assert time.monotonic() - t0 < 120, "papermill did not save the cell's output"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        release.touch()  # the orphaned kernel, if it outlived its runner, ends its cell and exits
    assert proc.returncode == -signal.SIGKILL

    # Nothing under outputs/ holds the secret; the only copy is in the private working path.
    hits = [str(f) for f in outputs.rglob("*") if f.is_file() and TOKEN.encode() in f.read_bytes()]
    assert hits == [], hits
    (run_dir,) = [d for d in outputs.iterdir() if d.is_dir()]
    assert not (run_dir / "10-leak.ipynb").exists(), "a notebook enters the record only once redacted"
    leftover = work / run_dir.name / "10-leak.ipynb"
    print(modes(work))
    assert oct(work.stat().st_mode & 0o777) == "0o700" and oct(leftover.stat().st_mode & 0o777) == "0o600"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["ok", "running"]

    # --resume redacts the leftover into the record, then runs the stage again.
    resumed = subprocess.run(
        [sys.executable, "-m", "hubops.cli.main", "deploy", "-p", str(params), "--resume", run_dir.name],
        cwd=PROJECT, env={**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=300)
    print(resumed.stderr[-2000:])
    # (the chain it runs is the project's, which this parameter file cannot deploy: what matters here is
    # that the leftover was redacted into the record before anything ran)
    assert "left by the stopped runner was redacted into the record" in " ".join(resumed.stderr.split())
    assert not (work / run_dir.name).exists()
    published = (run_dir / "10-leak.ipynb").read_text()
    assert "the token is [redacted]" in published and TOKEN not in published
    for f in [*outputs.rglob("*"), *work.rglob("*")]:
        assert not f.is_file() or TOKEN.encode() not in f.read_bytes(), f


def test_resume_redacts_leftovers_in_process(tmp_path, monkeypatch):
    """recover_leftovers on its own: a leftover with a known secret is redacted, moved in 0600, and
    its working folder removed."""
    from hubops.audit.redact import Redactor

    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    p = load_params(make_params(tmp_path, "hdpriv3", port=18403, subnet="10.164.3.0/24"))
    run = runner.new_run(p, kind="deploy", stages=[tmp_path / "00-x.ipynb"])
    leftover = runner._work_path(run, "00-x")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text=TOKEN)])]
    leftover.write_text(nbformat.writes(nb))
    assert runner.recover_leftovers(run, Redactor([TOKEN])) == ["00-x.ipynb"]
    out = run.dir / "00-x.ipynb"
    assert TOKEN not in out.read_text() and "[redacted]" in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o600" and not leftover.parent.exists()


def test_the_next_run_redacts_what_a_killed_unresumed_runner_left(tmp_path, monkeypatch):
    """A runner killed mid-stage and never resumed: the next run of the deployment redacts its
    leftover where it is (still resumable), and leaves a live runner's work and other deployments' alone."""
    from hubops.audit.redact import Redactor

    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setenv("HUBOPS_WORK", str(tmp_path / "work"))
    p = load_params(make_params(tmp_path, "hdpriv4", port=18404, subnet="10.164.4.0/24"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs

    def leftover(run, name):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text=TOKEN)])]
        path = runner._work_path(run, name)
        path.write_text(nbformat.writes(nb))
        return path

    killed = runner.new_run(p, kind="deploy", stages=[tmp_path / "10-x.ipynb"])
    killed.manifest["runner_pid"] = dead.pid
    killed.save()
    stale = leftover(killed, "10-x")
    live = runner.new_run(p, kind="status", stages=[tmp_path / "status.ipynb"])  # this process: alive
    running = leftover(live, "status")
    (tmp_path / "o").mkdir()
    other = load_params(make_params(tmp_path / "o", "hdpriv5", port=18405, subnet="10.164.5.0/24"))
    foreign = runner.new_run(other, kind="deploy", stages=[tmp_path / "10-y.ipynb"])
    foreign.manifest["runner_pid"] = dead.pid
    foreign.save()
    theirs = leftover(foreign, "10-y")

    assert runner.redact_stale_leftovers(p, Redactor([TOKEN])) == [killed.id]
    assert TOKEN not in stale.read_text() and "[redacted]" in stale.read_text()
    assert oct(stale.stat().st_mode & 0o777) == "0o600" and stale.parent.is_dir()  # still there for --resume
    assert TOKEN in running.read_text() and TOKEN in theirs.read_text()
    # and a new run of the deployment does it by itself
    stages = [notebook(tmp_path / "00-a.ipynb", RECORD.format(name="00-a"))]
    monkeypatch.setattr(runner, "deploy_stages", lambda: stages)
    stale.write_text(stale.read_text().replace("[redacted]", TOKEN))
    monkeypatch.setenv("HUBOPS_TEST_TOKEN", TOKEN)  # how the session redactor knows it here
    assert runner.run_chain(p.source).manifest["status"] == "ok"
    assert TOKEN not in stale.read_text()
