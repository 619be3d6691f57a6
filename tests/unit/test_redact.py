"""Redaction (no engine): known secrets never reach outputs/, in any usual form."""
from __future__ import annotations

import base64
import json
import logging

import nbformat
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hubops.audit import redact, runner
from hubops.core.params import load_params
from hubops.audit.redact import MASK, Redactor, RedactingFilter, known_secrets

SECRET = "Tr0ub4dor-and-3-correct-horse-battery"
TOKEN = "env-token-5f0c2a9e41b7"


def pem_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def pem_body_lines(pem: str) -> list[str]:
    return [ln for ln in pem.strip().splitlines() if not ln.startswith("-----")]


def forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"=")]


# --- the Redactor itself ---------------------------------------------------------------------

def test_plain_base64_and_urlsafe_forms_are_redacted():
    r = Redactor([SECRET])
    b64 = base64.b64encode(SECRET.encode()).decode()
    url = base64.urlsafe_b64encode(SECRET.encode()).decode()
    text = f"a {SECRET} b {b64} c {url} d {b64.rstrip('=')}"
    assert r.redact(text) == f"a {MASK} b {MASK} c {MASK} d {MASK}"


@pytest.mark.parametrize("prefix", ["", "u:", "us:", "user:", "operator:"])
def test_a_secret_inside_a_longer_base64_blob_is_redacted_at_any_alignment(prefix):
    blob = base64.b64encode(f"{prefix}{SECRET}!trailing".encode()).decode()
    out = Redactor([SECRET]).redact(f"Authorization: Basic {blob}")
    assert MASK in out
    # What is left of the blob cannot carry the secret: at most a group of four on each side.
    left = out.split("Basic ", 1)[1].replace(MASK, " ").split()
    assert all(len(part) <= 4 + len(base64.b64encode(b"!trailing")) for part in left)


def test_html_and_url_escaped_forms_are_redacted():
    s = "p&ss<word>'\"quoted/+="
    r = Redactor([s])
    import html
    from urllib.parse import quote

    assert s not in r.redact(s) and html.escape(s) not in r.redact(html.escape(s))
    assert quote(s, safe="") not in r.redact(quote(s, safe=""))


def test_each_line_of_a_pem_private_key_is_redacted_and_certificates_are_not_secrets():
    pem = pem_key()
    r = Redactor([pem])
    lines = pem_body_lines(pem)
    assert all(r.redact(f"x {ln} y") == f"x {MASK} y" for ln in lines if len(ln) >= redact.MIN_LEN)
    assert "".join(lines) not in r.redact(repr(pem))  # the key as one escaped string
    cert_like = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUPublicStuff\n-----END CERTIFICATE-----\n"
    assert len(Redactor([cert_like])) == 0


def test_short_values_are_not_registered():
    r = Redactor(["abc", "", None, "  "])
    assert len(r) == 0 and r.redact("abc def") == "abc def"


def test_redact_obj_walks_json_structures():
    r = Redactor([SECRET])
    obj = {"a": [SECRET, {"b": f"x{SECRET}y"}], "n": 3, "t": None}
    assert r.redact_obj(obj) == {"a": [MASK, {"b": f"x{MASK}y"}], "n": 3, "t": None}


def test_logging_filter_redacts_message_arguments_and_tracebacks():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    h = Keep()
    h.addFilter(RedactingFilter(Redactor([SECRET])))
    log = logging.getLogger("hubops.test-redact")
    log.addHandler(h)
    propagate, log.propagate = log.propagate, False
    try:
        log.warning("token %s in %r", SECRET, {"k": SECRET})
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(h)
        log.propagate = propagate
    assert records and all(SECRET not in r for r in records)
    assert MASK in records[0] and "ValueError: bad [redacted]" in records[1]


# --- where the secrets come from --------------------------------------------------------------

def test_known_secrets_reads_the_operator_folder_params_and_env(params_factory, tmp_path, monkeypatch):
    f = params_factory("redact")
    f.write_text(f.read_text().replace(
        "auth: {mode: shared-password, userlist: userlist}",
        "auth: {mode: github, userlist: userlist, github: {client_id: a, client_secret: {env: HUBOPS_TEST_GH_SECRET}}}"))
    monkeypatch.setenv("HUBOPS_TEST_GH_SECRET", "gh-client-secret-0123456789")
    monkeypatch.setenv("SOME_API_TOKEN", TOKEN)
    monkeypatch.setenv("SOME_PASSWORD", "short")
    monkeypatch.setenv("SOME_TOKEN_FILE", "/not/a/secret/path")
    p = load_params(f)
    op = p.operator_path
    op.mkdir(parents=True)
    (op / "user-password").write_text(SECRET + "\n")
    (op / "api-token").write_text("api-token-value-abcdef123456\n")
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    (op / "ca-key.pem").write_text(key)
    (op / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIBpublicpublicpublic\n-----END CERTIFICATE-----\n")
    found = known_secrets(p)
    assert SECRET in found and "api-token-value-abcdef123456" in found
    assert "gh-client-secret-0123456789" in found and TOKEN in found
    assert "short" not in found and "/not/a/secret/path" not in found
    r = Redactor(found)
    assert all(MASK in r.redact(ln) for ln in pem_body_lines(key) if len(ln) >= redact.MIN_LEN)
    assert "MIIBpublicpublicpublic" in r.redact("MIIBpublicpublicpublic")


def test_known_secrets_ignores_an_unset_github_secret(params_factory, monkeypatch):
    f = params_factory("redact2")
    f.write_text(f.read_text().replace(
        "auth: {mode: shared-password, userlist: userlist}",
        "auth: {mode: github, userlist: userlist, github: {client_id: a, client_secret: {env: HUBOPS_UNSET_X}}}"))
    monkeypatch.setenv("HUBOPS_UNSET_X", "set-only-to-load-0000")
    p = load_params(f)
    monkeypatch.delenv("HUBOPS_UNSET_X")
    assert "set-only-to-load-0000" not in known_secrets(p)


# --- the runner redacts the record -------------------------------------------------------------

LEAKY = [
    # print the secret, and the token from the environment
    "s = open({pw!r}).read().strip()\nprint('the password is', s)\nimport os\nprint(os.environ['HUBOPS_TEST_TOKEN'])",
    # display it base64-encoded (standard, URL-safe, inside a Basic header), as HTML and as JSON
    "import base64\nfrom IPython.display import HTML, JSON, display\n"
    "display(base64.b64encode(s.encode()).decode())\n"
    "print(base64.urlsafe_b64encode(s.encode()))\n"
    "print('Authorization: Basic', base64.b64encode(('operator:' + s).encode()).decode())\n"
    "display(HTML(f'<b>{{s}}</b>'))\ndisplay(JSON({{'password': s}}))",
    # print the private key
    "print(open({key!r}).read())",
    # fail with an exception that carries it
    "raise RuntimeError(f'login failed with password {{s}}')",
]


def test_no_byte_of_the_run_dir_holds_a_secret(params_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setenv("HUBOPS_TEST_TOKEN", TOKEN)
    f = params_factory("leaky")
    p = load_params(f)
    op = p.operator_path
    op.mkdir(parents=True)
    (op / "user-password").write_text(SECRET + "\n")
    key = pem_key()
    (op / "tls-key.pem").write_text(key)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('params_file = ""  # the file\ndry_run = False  # plan')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c.format(pw=str(op / "user-password"), key=str(op / "tls-key.pem")))
                           for c in LEAKY]
    src = tmp_path / "00-leaky.ipynb"
    nbformat.write(nb, src)
    monkeypatch.setattr(runner, "deploy_stages", lambda: [src])

    run = runner.run_chain(f)

    stage = run.manifest["stages"][0]
    assert stage["status"] == "failed"
    assert stage["error"]["ename"] == "RuntimeError"
    assert stage["error"]["evalue"] == f"login failed with password {MASK}"
    assert json.loads((run.dir / "run.json").read_text())["stages"][0]["error"]["evalue"].endswith(MASK)
    executed = (run.dir / "00-leaky.ipynb").read_text()
    assert executed.count(MASK) >= 8, "each form was there to redact"
    bad = forms(SECRET) + forms(TOKEN) + [ln.encode() for ln in pem_body_lines(key)]
    bad.append(base64.b64encode(f"operator:{SECRET}".encode())[12:-12])  # the middle of the Basic header
    files = [p for p in run.dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"run.json", "index.html", "00-leaky.ipynb", "00-leaky.html"}
    for path in files:
        data = path.read_bytes()
        for form in bad:
            assert form not in data, f"{path.name} holds a secret form {form[:6]!r}…"
    from hubops.audit.ledger import verify_run

    assert verify_run(run.dir).ok, "redaction happens before the notebook is sealed"
