"""hubops.stages.images against the real engine: base image, hub and single-user builds, delivery.

Images are content-addressed and kept between runs (a second run must be all "keep"), so
these tests do not remove what they build; `hubops teardown --remove-images` does.
"""
from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from hubops.stages import images as im
from tests.helpers import RUN, machine_lock

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = ROOT / "images"
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_ROOTS = Path("/usr/share/ca-certificates")
DEPLOYMENT = "itest-images"
KINDS = ("hub", "singleuser")

# A throwaway self-signed certificate appended to the extra bundle. It exists nowhere else,
# so finding any line of it in an image proves the bundle leaked. Fixed text: the bundle's
# digest, and so the image tags, stay the same from run to run.
MARKER_CERT = """\
-----BEGIN CERTIFICATE-----
MIIB1jCCAX2gAwIBAgIUJqrnjlWhmojTkrhRnCTdBgMTsZgwCgYIKoZIzj0EAwIw
QDE+MDwGA1UEAww1aHVib3BzIHRlc3QgbWFya2VyIENBIC0gbXVzdCBuZXZlciBh
cHBlYXIgaW4gYW4gaW1hZ2UwIBcNMjYxMTI2MDUwNTQzWhgPMjEyNjExMDIwNTA1
NDNaMEAxPjA8BgNVBAMMNWh1Ym9wcyB0ZXN0IG1hcmtlciBDQSAtIG11c3QgbmV2
ZXIgYXBwZWFyIGluIGFuIGltYWdlMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
C05uPcba/Ykmc86j3XaUEfi6dFeC+2KIcnceOiAOqKSSw//y/aQiF380zoMSrPBJ
1HDbD2NqM6HUkhkcggFyN6NTMFEwHQYDVR0OBBYEFMLBrLo019gbRLhTPrUy2wFD
s0WMMB8GA1UdIwQYMBaAFMLBrLo019gbRLhTPrUy2wFDs0WMMA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgdJtr2Ow3JbEpFmcOsr9qkK9BbMLgBz6/
dTAl5eK6Ob8CIBZRl2kBCQUaEuRD1TPVzYIwO0j4GZVLeMYpG/aEWHpO
-----END CERTIFICATE-----
"""

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL)


def _bodies(text: str) -> list[list[str]]:
    """The base64 lines of every certificate in a PEM text."""
    return [[ln.strip() for ln in m.group(1).splitlines() if ln.strip()] for m in _PEM.finditer(text)]


def _leak_markers(bundle_text: str) -> dict[bytes, str]:
    """Base64 lines that may only be in an image if the extra bundle leaked into it.

    Certificates of the bundle that Debian's ca-certificates package also ships (and so
    legitimately sit in the image's trust store) are left out; what remains is the
    machine's own CAs (here the intercepting proxy's) and the marker. One line per
    certificate, one that no other certificate of the bundle has.
    """
    debian = set()
    for crt in DEBIAN_ROOTS.rglob("*.crt"):
        debian.update("".join(b) for b in _bodies(crt.read_text(errors="replace")))
    bodies = _bodies(bundle_text)
    counts: dict[str, int] = {}
    for b in bodies:
        for ln in set(b):
            counts[ln] = counts.get(ln, 0) + 1
    markers: dict[bytes, str] = {}
    for b in bodies:
        if "".join(b) in debian:
            continue
        unique = [ln for ln in b[2:-1] if len(ln) == 64 and counts[ln] == 1]
        assert unique, "a certificate of the extra bundle has no line of its own"
        markers[unique[len(unique) // 2].encode()] = b[0][:24]
    return markers


class _StreamFile(io.RawIOBase):
    """A file-like view of a generator of bytes, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _scan_saved_image(client: docker.DockerClient, ref: str, needles: list[bytes]) -> list[str]:
    """Names of the files of `ref`, in any layer or its config, containing any of `needles`.

    Scans `docker save` output rather than a container export: a file added in one layer
    and deleted in a later one is still shipped, and only the layers show it.
    """
    hits = []

    def scan_member(tf: tarfile.TarFile, m: tarfile.TarInfo, where: str) -> None:
        if any(s in m.name for s in ("extra-ca", "pip-ca")):
            hits.append(f"{where}{m.name} (by name)")
        if not m.isfile():
            return
        f = tf.extractfile(m)
        if f is None:
            return
        if m.name.endswith("layer.tar"):
            with tarfile.open(fileobj=f, mode="r|") as inner:
                for im_ in inner:
                    scan_member(inner, im_, f"{m.name}:/")
            return
        data = f.read()
        if any(n in data for n in needles):
            hits.append(f"{where}{m.name}")

    raw = io.BufferedReader(_StreamFile(client.api.get_image(ref)), buffer_size=1 << 20)
    with tarfile.open(fileobj=raw, mode="r|") as outer:
        for m in outer:
            scan_member(outer, m, "")
    return hits


def _run(client: docker.DockerClient, ref: str, cmd: list[str], user: str | None = None) -> str:
    out = client.containers.run(ref, cmd, remove=True, user=user, stdout=True, stderr=True)
    return out.decode().strip()


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extra_ca(tmp_path_factory) -> Path:
    """The host's bundle (pip needs it to pass the proxy) plus the marker certificate."""
    assert HOST_BUNDLE.is_file(), f"{HOST_BUNDLE} is missing: the build cannot reach PyPI"
    path = tmp_path_factory.mktemp("ca") / "extra-ca.pem"
    path.write_text(HOST_BUNDLE.read_text().rstrip("\n") + "\n" + MARKER_CERT)
    return path


@pytest.fixture(scope="module")
def base(docker_client):
    return im.ensure_base_image(docker_client)


@pytest.fixture(scope="module")
def built(docker_client, base, extra_ca) -> dict:
    out = {}
    # One build of a tag at a time on this machine: builds are not bit-for-bit reproducible, so two runs
    # building the same content-addressed tag at once would each see the other's image under it.
    with machine_lock("image-build") as waited:
        print(f"\nimage build lock taken after {waited:.1f} s")
        out.update(_build_all(docker_client, extra_ca))
    return out


def _build_all(docker_client, extra_ca) -> dict:
    out = {}
    for kind in KINDS:
        lines: list[str] = []
        r = im.ensure_image_built(docker_client, kind, images_dir=IMAGES_DIR, extra_ca_bundle=extra_ca,
                                  deployment=DEPLOYMENT, progress=lines.append)
        out[kind] = (r, lines)
    return out


# -- tests ------------------------------------------------------------------------------
def test_base_image_exists_and_second_call_keeps(docker_client, base):
    img = docker_client.images.get(im.BASE_IMAGE)
    assert base.facts["id"] == img.id
    again = im.ensure_base_image(docker_client)
    assert not again.changed and again.items[0].action == "keep"
    assert again.facts["id"] == img.id
    dry = im.ensure_base_image(docker_client, dry_run=True)
    assert not dry.changed


def test_images_build_with_digest_tags_and_labels(docker_client, built):
    for kind, (r, lines) in built.items():
        ref = r.facts["ref"]
        assert re.fullmatch(rf"hubops-{kind}:[0-9a-f]{{12}}", ref)
        img = docker_client.images.get(ref)
        assert r.facts["id"] == img.id
        assert img.labels["hubops.managed"] == "true"
        assert img.labels["hubops.stage"] == "60-images"
        assert img.labels["hubops.image-kind"] == kind
        if r.changed:  # built in this run: the log went to the progress callback
            assert any(ln.startswith("Step ") for ln in lines)


def test_hub_image_runs_jupyterhub_and_proxy(docker_client, built):
    ref = built["hub"][0].facts["ref"]
    assert _run(docker_client, ref, ["jupyterhub", "--version"]).splitlines()[-1] == "6.1.1"
    chp = _run(docker_client, ref, ["configurable-http-proxy", "--version"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", chp.splitlines()[-1]), chp
    cfg = docker_client.images.get(ref).attrs["Config"]
    assert cfg["WorkingDir"] == "/srv/jupyterhub"
    assert cfg["Cmd"] == ["jupyterhub", "-f", "/srv/jupyterhub/jupyterhub_config.py"]
    assert "8000/tcp" in cfg["ExposedPorts"]


def test_singleuser_image_runs_as_jovyan(docker_client, built):
    ref = built["singleuser"][0].facts["ref"]
    assert _run(docker_client, ref, ["jupyterhub-singleuser", "--version"]).splitlines()[-1] == "6.1.1"
    assert _run(docker_client, ref, ["sh", "-c", "id -u; id -un; echo $HOME; pwd"]).split() == [
        "1000", "jovyan", "/home/jovyan", "/home/jovyan"]
    assert docker_client.images.get(ref).attrs["Config"]["Cmd"] == ["jupyterhub-singleuser"]


def test_second_build_keeps_without_rebuilding(docker_client, built, extra_ca):
    for kind, (first, _) in built.items():
        lines: list[str] = []
        again = im.ensure_image_built(docker_client, kind, images_dir=IMAGES_DIR, extra_ca_bundle=extra_ca,
                                      deployment=DEPLOYMENT, progress=lines.append)
        assert [i.action for i in again.items] == ["keep"]
        assert again.facts == {"ref": first.facts["ref"], "id": first.facts["id"]}
        assert lines == []  # no build ran


def test_extra_ca_bundle_never_reaches_final_image(docker_client, built, extra_ca):
    markers = _leak_markers(extra_ca.read_text())
    # at least the marker, plus here the intercepting proxy's CA
    assert len(markers) >= 1
    for r, _ in built.values():
        ref = r.facts["ref"]
        hits = _scan_saved_image(docker_client, ref, list(markers))
        assert hits == [], f"extra CA material found in {ref}: {hits[:10]}"
        env = docker_client.images.get(ref).attrs["Config"].get("Env") or []
        assert not any(e.startswith(("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")) for e in env)


def test_images_on_single_node_is_keep(docker_client, built):
    refs = [r.facts["ref"] for r, _ in built.values()]
    res = im.ensure_images_on_nodes({"local": docker_client}, refs, source=docker_client)
    assert not res.changed
    assert [i.action for i in res.items] == ["keep", "keep"]
    assert res.facts["loads"] == 0


def test_leak_scan_finds_a_copied_bundle(docker_client, base, extra_ca):
    """Control: the scan above does see the bundle when an image does contain it."""
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tf:
        for name, data in (("Dockerfile", f"FROM {im.BASE_IMAGE}\nCOPY ca.pem /etc/leaked.pem\n".encode()),
                           ("ca.pem", extra_ca.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    ref = f"hubops-itest-leak:control-{RUN}"  # this run's: another run may scan its own at the same time
    img, _ = docker_client.images.build(fileobj=ctx, custom_context=True, tag=ref, rm=True,
                                        labels={"hubops.managed": "true", "hubops.deployment": DEPLOYMENT,
                                                "hubops.test-run": RUN})  # an image of its own
    try:
        markers = _leak_markers(extra_ca.read_text())
        hits = _scan_saved_image(docker_client, ref, list(markers))
        assert any(h.endswith("etc/leaked.pem") for h in hits), hits
    finally:
        docker_client.images.remove(img.id, force=True)


def test_failed_build_raises_with_kind_and_log_tail(docker_client, base, tmp_path):
    ctx = tmp_path / "images" / "broken"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo about-to-fail && exit 3\n")
    with pytest.raises(im.ImageBuildError) as exc:
        im.ensure_image_built(docker_client, "broken", images_dir=tmp_path / "images", deployment=DEPLOYMENT)
    msg = str(exc.value)
    assert "building the broken image hubops-broken:" in msg
    assert "returned a non-zero code: 3" in msg
    assert "  | about-to-fail" in msg.splitlines()  # the RUN's own output is in the tail
    assert not docker_client.images.list(name="hubops-broken")


def test_missing_debootstrap_is_a_clear_error(docker_client, monkeypatch):
    monkeypatch.setattr(im.shutil, "which", lambda name: None)
    monkeypatch.setattr(im.os.path, "exists", lambda path: False)
    with pytest.raises(im.HubopsError, match=r"install debootstrap: apt-get install debootstrap"):
        im.ensure_base_image(docker_client, name="hubops-itest-nobase:none", pull_ref=None)


def test_failing_debootstrap_reports_its_output(docker_client):
    # nothing listens on port 9 of loopback: debootstrap cannot fetch the Release file
    with pytest.raises(im.HubopsError, match=r"debootstrap of bookworm from http://127.0.0.1:9/debian failed") as exc:
        im.ensure_base_image(docker_client, name="hubops-itest-nobase:none", pull_ref=None,
                             mirror="http://127.0.0.1:9/debian")
    assert "Last output" in str(exc.value)
    assert not docker_client.images.list(name="hubops-itest-nobase")


def test_a_profile_image_on_no_allowed_node_is_refused_with_what_to_do(docker_client, tmp_path):
    """A profile naming an image reference that neither the building engine nor any node its placement
    allows holds: 60-images stops with the parameter's path and what to do (it raised a NameError once)."""
    from hubops.core.engine import Clients
    from hubops.core.params import load_params
    from tests.helpers import free_port, free_subnet, make_params, run_name

    f = make_params(tmp_path, run_name("imgref"), port=free_port(), subnet=free_subnet(),
                    extra="profiles:\n  - {name: standard}\n  - {name: byref, image: 'hubops-no-such-image:never'}\n")
    p = load_params(f)
    clients = Clients(p)
    with machine_lock("image-build"):
        im.ensure_base(p, clients)
        im.ensure_built(p, clients, "singleuser")
    with pytest.raises(im.ImageNotBuilt) as e:
        im.ensure_profile_images(p, clients)
    msg = str(e.value)
    assert "profiles[1] (byref).image: hubops-no-such-image:never is on neither the building engine" in msg, msg
    assert "local" in msg and "docker load" in msg, msg
