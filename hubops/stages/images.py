"""Images: a Debian base, the hub and single-user images built from `images/<kind>/`, and
their delivery to the nodes (the single-user image to every node, the hub image to managers).

No registry is assumed. The base comes from a pull when a registry answers, else from
`debootstrap`; the hub and single-user images are built on one engine (the "source") and
streamed to the other nodes (`docker save | docker load` through the API). Image tags carry
a digest of everything that went into the build, so an unchanged context is never rebuilt.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from hubops.core.paths import IMAGES
from hubops.core.errors import DockerOpError, HubopsError, ImageBuildError, ImageNotBuilt
from hubops.core.labels import labels
from hubops.core.progress import step as progress_step
from hubops.core.result import Result

log = logging.getLogger("hubops")

IMAGES_STAGE = "60-images"
BASE_IMAGE = "hubops-base:bookworm"
# The build context gets the optional extra CA bundle under this name (empty when none).
EXTRA_CA_NAME = "extra-ca.pem"
_TAIL_LINES = 30
# Code of hubops's own that an image runs, added to its build context under the given path: the
# hub image installs hubops/inhub (the spawner the generated jupyterhub_config.py imports). It is
# part of the context digest, so a change to the spawner gives a new hub image tag.
CONTEXT_EXTRAS: dict[str, dict[str, Path]] = {
    "hub": {"hubops/inhub": Path(__file__).resolve().parent.parent / "inhub"},  # hubops/stages/ -> hubops/inhub
}
# Never part of a context: what running Python leaves beside the sources.
_NOT_CONTEXT = ("__pycache__", "*.pyc", "*.pyo")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEP = re.compile(r"Step (\d+)/(\d+) ")


# --------------------------------------------------------------------------------------
# base image
# --------------------------------------------------------------------------------------
def ensure_base_image(
    client: docker.DockerClient,
    *,
    name: str = BASE_IMAGE,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
    pull_ref: str | None = "debian:bookworm-slim",
    pull_timeout: float = 20.0,
    dry_run: bool = False,
) -> Result:
    """Make sure the engine has the Debian base image `name`.

    Changes on the engine: nothing when `name` exists; else pulls `pull_ref` and tags it as
    `name`, or, when no registry answers, runs `debootstrap --variant=minbase` on this machine
    and imports the tree as `name`. `pull_ref=None` skips the pull.
    """
    res = Result("base image", dry_run=dry_run)
    existing = image_or_none(client, name)
    if existing is not None:
        res.facts.update(obtained="present", id=existing.id)
        return res.keep(name, "image exists")

    # A pull_ref already on the engine (pulled or loaded earlier) only needs a tag.
    local = image_or_none(client, pull_ref) if pull_ref else None
    if dry_run:
        how = f"tag local {pull_ref}" if local else (
            f"pull {pull_ref}, else debootstrap {suite} from {mirror}" if pull_ref
            else f"debootstrap {suite} from {mirror}")
        res.facts.update(obtained="would " + how)
        return res.change("create", name, how)

    if local is None and pull_ref:
        local = _try_pull(client, pull_ref, pull_timeout)
        how = "pulled"
    else:
        how = "tagged local"
    if local is not None:
        repo, tag = _split_ref(name)
        local.tag(repo, tag)
        res.facts.update(obtained=f"{how} {pull_ref}", id=local.id)
        return res.change("create", name, f"{how} {pull_ref}")

    t0 = time.monotonic()
    image_id = _debootstrap_import(client, name=name, suite=suite, mirror=mirror)
    secs = round(time.monotonic() - t0, 1)
    res.facts.update(obtained=f"debootstrap {suite} from {mirror}", id=image_id, seconds=secs)
    return res.change("create", name, f"debootstrap --variant=minbase {suite} ({secs} s)")


def _try_pull(client: docker.DockerClient, ref: str, timeout: float):
    """Pull `ref`, or None when no registry answers within `timeout` seconds.

    The pull runs in a daemon thread: an engine whose DNS times out (a lab node in a
    namespace) would otherwise hold the stage for its full resolver timeout.
    """
    repo, tag = _split_ref(ref)
    outcome: dict = {}

    def pull() -> None:
        try:
            outcome["image"] = client.images.pull(repo, tag=tag)
        except Exception as e:  # noqa: BLE001 - any failure means "no registry": debootstrap
            outcome["error"] = e

    t = threading.Thread(target=pull, name=f"hubops-pull-{ref}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        log.info("pull of %s gave no answer within %.0f s; bootstrapping instead", ref, timeout)
        return None
    if "error" in outcome:
        log.info("pull of %s failed (%s); bootstrapping instead", ref, _one_line(outcome["error"]))
        return None
    return outcome.get("image")


def _debootstrap_import(client: docker.DockerClient, *, name: str, suite: str, mirror: str) -> str:
    """debootstrap a minimal tree in a temp dir on this machine, import it as `name`."""
    exe = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None)
    if exe is None:
        raise HubopsError(
            f"cannot make base image {name}: no registry answered and debootstrap is missing; "
            "install debootstrap: apt-get install debootstrap")
    tmp = Path(tempfile.mkdtemp(prefix="hubops-base-"))
    root = tmp / "rootfs"
    try:
        cmd = [exe, "--variant=minbase", suite, str(root), mirror]
        log.info("bootstrapping %s: %s", name, " ".join(cmd))
        with progress_step(f"debootstrap {suite} for {name} (about 40 s)"):
            proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-20:])
            raise HubopsError(
                f"debootstrap of {suite} from {mirror} failed (exit {proc.returncode}); check "
                f"the mirror is reachable over http from this machine. Last output:\n{tail}")
        _trim_rootfs(root, suite=suite, mirror=mirror)
        tarball = tmp / "rootfs.tar"
        # GNU tar keeps device nodes, hard links and numeric owners as they are.
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        repo, tag = _split_ref(name)
        log.info("importing %s (%d MB)", name, tarball.stat().st_size // 2**20)
        try:
            client.api.import_image(
                src=str(tarball), repository=repo, tag=tag,
                changes=["ENV LANG=C.UTF-8", 'CMD ["bash"]'])
        except docker.errors.APIError as e:
            raise DockerOpError(f"importing base image {name} failed: {_one_line(e)}") from e
        return client.images.get(name).id
    finally:
        _umount_below(root)
        shutil.rmtree(tmp, ignore_errors=True)


def _trim_rootfs(root: Path, *, suite: str, mirror: str) -> None:
    """Drop apt caches and add the suite's updates (and security, on Debian's mirror)."""
    for d in (root / "var/cache/apt/archives", root / "var/lib/apt/lists"):
        for p in d.glob("*"):
            if p.is_file():
                p.unlink()
    sources = [f"deb {mirror} {suite} main", f"deb {mirror} {suite}-updates main"]
    if mirror.rstrip("/") == "http://deb.debian.org/debian":
        sources.append(f"deb http://deb.debian.org/debian-security {suite}-security main")
    (root / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    # As in Debian's official images: no .deb files left behind by apt in image layers.
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n')


def _umount_below(root: Path) -> None:
    """Unmount anything a failed debootstrap left mounted (proc, sys) before removing the dir."""
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    prefix = str(root.resolve()) + "/"
    for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


# --------------------------------------------------------------------------------------
# hub and single-user images
# --------------------------------------------------------------------------------------
def image_ref(kind: str, *, images_dir: Path | str, base_id: str, extra_ca_digest: str | None,
              extras: dict[str, Path] | None = None) -> str:
    """The tag `hubops-<kind>:<12 hex>` for a build of `images_dir/<kind>`.

    The digest covers every file of the context (sorted relative paths, executable bits and
    contents), hubops's own code added to it (`extras`, by default CONTEXT_EXTRAS[kind]), the
    base image ID and the extra CA bundle's digest: the same inputs give the same tag, so an
    image with that tag never needs rebuilding.
    """
    ctx = Path(images_dir) / kind
    if not (ctx / "Dockerfile").is_file():
        raise HubopsError(f"no Dockerfile in {ctx}: is images_dir the project's images/ folder?")
    h = hashlib.sha256()
    for rel, path in _context_files(ctx, CONTEXT_EXTRAS.get(kind, {}) if extras is None else extras):
        data = path.read_bytes()
        h.update(f"file\0{rel}\0{os.access(path, os.X_OK):d}\0{len(data)}\0".encode())
        h.update(data)
    h.update(f"base\0{base_id}\0extra-ca\0{extra_ca_digest or 'none'}\0".encode())
    return f"hubops-{kind}:{h.hexdigest()[:12]}"


def _context_files(ctx: Path, extras: dict[str, Path]) -> list[tuple[str, Path]]:
    """Every file a build of `ctx` sends, as (path in the context, file), sorted: the folder's own
    and each extra folder's, under its place in the context (no Python caches)."""
    import fnmatch

    def files(root: Path, under: str) -> list[tuple[str, Path]]:
        out = []
        for path in root.rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and not any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in _NOT_CONTEXT):
                out.append(((Path(under) / rel).as_posix() if under else rel.as_posix(), path))
        return out

    found = files(ctx, "")
    for under, root in sorted(extras.items()):
        if not root.is_dir():
            raise HubopsError(f"{root} is missing: the {ctx.name} image needs it at {under}/ of its build context")
        if (ctx / under).exists():
            raise HubopsError(f"{ctx / under} is in the way: hubops adds {root} there when it builds {ctx.name}")
        found += files(root, under)
    return sorted(found)


def ensure_image_built(
    client: docker.DockerClient,
    kind: str,
    *,
    images_dir: Path | str,
    base: str = BASE_IMAGE,
    extra_ca_bundle: Path | str | None = None,
    deployment: str,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    build_timeout: int = 3600,
) -> Result:
    """Make sure the engine has the `kind` image ("hub", "singleuser") for the current context.

    Changes on the engine: nothing when `hubops-<kind>:<digest>` exists; else builds it from
    `images_dir/<kind>` on `base`, labelled for `deployment`. `extra_ca_bundle` (PEM) is
    trusted by pip in the build stage only; it never reaches the final image.
    """
    res = Result(f"{kind} image", dry_run=dry_run)
    base_img = image_or_none(client, base)
    if base_img is None:
        raise HubopsError(f"base image {base} is missing on the engine: run ensure_base_image first")
    ca_bytes = b""
    if extra_ca_bundle is not None:
        try:
            ca_bytes = Path(extra_ca_bundle).read_bytes()
        except OSError as e:
            raise HubopsError(f"extra CA bundle {extra_ca_bundle} is unreadable: {e}") from e
    ca_digest = hashlib.sha256(ca_bytes).hexdigest() if ca_bytes else None
    ref = image_ref(kind, images_dir=images_dir, base_id=base_img.id, extra_ca_digest=ca_digest)
    res.facts["ref"] = ref

    existing = image_or_none(client, ref)
    if existing is not None:
        res.facts["id"] = existing.id
        return res.keep(ref, "an image with this context digest exists")
    if dry_run:
        res.facts["id"] = None
        return res.change("create", ref, f"would build from {Path(images_dir) / kind}")

    t0 = time.monotonic()
    image_id = _build(client, kind, ref=ref, ctx=Path(images_dir) / kind, base=base,
                      ca_bytes=ca_bytes, deployment=deployment, progress=progress,
                      timeout=build_timeout)
    secs = round(time.monotonic() - t0, 1)
    res.facts.update(id=image_id, seconds=secs)
    return res.change("create", ref, f"built in {secs} s")


def _build(client: docker.DockerClient, kind: str, *, ref: str, ctx: Path, base: str,
           ca_bytes: bytes, deployment: str, progress: Callable[[str], None] | None,
           timeout: int) -> str:
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    image_id = None
    with tempfile.TemporaryDirectory(prefix=f"hubops-ctx-{kind}-") as tmp, \
            progress_step(f"build {ref}", unit="steps") as bar:
        # A temp copy: the CA bundle must never be written into the project's images/ dir.
        work = Path(tmp) / kind
        shutil.copytree(ctx, work, symlinks=False, ignore=shutil.ignore_patterns(*_NOT_CONTEXT))
        for under, root in CONTEXT_EXTRAS.get(kind, {}).items():  # hubops's own code the image runs
            shutil.copytree(root, work / under, symlinks=False, ignore=shutil.ignore_patterns(*_NOT_CONTEXT))
        (work / EXTRA_CA_NAME).write_bytes(ca_bytes)
        log.info("building %s from %s on %s", ref, ctx, base)
        try:
            stream = client.api.build(
                path=str(work), tag=ref, buildargs={"BASE": base},
                labels=labels(deployment, IMAGES_STAGE, image_kind=kind),
                rm=True, forcerm=True, pull=False, decode=True, timeout=timeout)
            for chunk in stream:
                if "error" in chunk or "errorDetail" in chunk:
                    msg = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "")
                    tail.append(msg)
                    raise ImageBuildError(_build_failure(kind, ref, msg, tail))
                if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                text = chunk.get("stream") or chunk.get("status") or ""
                for line in _ANSI.sub("", text).splitlines():
                    if not line.strip():
                        continue
                    tail.append(line)
                    log.log(logging.INFO if line.startswith("Step ") else logging.DEBUG,
                            "%s build: %s", kind, line)
                    if progress is not None:
                        progress(line)
                    numbered = _STEP.match(line)
                    if numbered:  # "Step 3/12 : RUN …": steps 1 and 2 are done
                        bar.update(int(numbered[1]) - 1, total=int(numbered[2]), note=line[:80])
        except ImageBuildError:
            raise
        except (docker.errors.DockerException, OSError) as e:
            raise ImageBuildError(_build_failure(kind, ref, _one_line(e), tail)) from e
    img = image_or_none(client, ref)
    if img is None:
        raise ImageBuildError(_build_failure(kind, ref, "the build ended without an image", tail))
    if image_id and image_id != img.id:
        log.warning("build of %s reported %s but the tag points at %s", ref, image_id, img.id)
    return img.id


def _build_failure(kind: str, ref: str, msg: str, tail) -> str:
    lines = "\n".join(f"  | {line}" for line in tail)
    return (f"building the {kind} image {ref} failed: {msg}\n"
            f"last {len(tail)} build log lines:\n{lines}")


# --------------------------------------------------------------------------------------
# delivery to nodes
# --------------------------------------------------------------------------------------
def ensure_images_on_nodes(
    clients: dict[str, docker.DockerClient],
    refs: list[str],
    *,
    source: docker.DockerClient,
    dry_run: bool = False,
    max_workers: int = 4,
    per_node: dict[str, list[str]] | None = None,
) -> Result:
    """Make sure every node has each image in `refs` (or the refs `per_node` names for it), the
    same as on `source` (same ID, or same layers and configuration: see content_id).

    Changes on the nodes: streams each missing or different image from `source`
    (`docker save | docker load` through the API), several nodes at once. Nodes that already
    have the image, including `source` itself, are left alone.
    """
    res = Result("images on nodes", dry_run=dry_run)
    want: dict[str, Any] = {}
    for ref in refs:
        img = image_or_none(source, ref)
        if img is None:
            raise DockerOpError(f"image {ref} is missing on the source engine: build it first")
        want[ref] = img

    todo: dict[str, list[str]] = {}
    for node, c in clients.items():
        for ref, wimg in want.items():
            if per_node is not None and ref not in per_node.get(node, refs):
                continue
            have = _image_or_error(c, node, ref)
            if same_image(have, wimg):
                res.keep(f"{node}: {ref}", "same image as on the source" + (
                    "" if have.id == wimg.id else " (same layers and configuration; this engine's image "
                                                  "store gives it another ID)"))
            else:
                todo.setdefault(node, []).append(ref)
                why = "missing" if have is None else f"has {have.id[:19]}, source has {wimg.id[:19]}"
                res.change("create" if have is None else "update", f"{node}: {ref}",
                           f"load from source ({why})")
    res.facts.update(nodes=len(clients), images=len(refs),
                     loads=sum(len(v) for v in todo.values()))
    if dry_run or not todo:
        return res

    t0 = time.monotonic()
    # One bar for the whole delivery, made here (the cell's thread) and fed by the loaders' threads.
    sizes = {ref: source.images.get(ref).attrs.get("Size") or 0 for ref in want}
    total = sum(sizes[ref] for node_refs in todo.values() for ref in node_refs)
    sent = [0]
    lock = threading.Lock()

    with progress_step(f"load {len(want)} image(s) onto {', '.join(todo)}", total=total or None, unit="B") as bar:
        def count(n: int, note: str) -> None:
            with lock:
                sent[0] += n
                bar.update(sent[0], note=note)

        def deliver(node: str) -> None:
            for ref in todo[node]:
                _stream_image(source, clients[node], node, ref, on_chunk=count)

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo))),
                                thread_name_prefix="hubops-load") as pool:
            futures = {node: pool.submit(deliver, node) for node in todo}
            errors = []
            for node, fut in futures.items():
                try:
                    fut.result()
                except HubopsError as e:
                    errors.append(e)
            if errors:
                raise errors[0]
    res.facts["seconds"] = round(time.monotonic() - t0, 1)

    for node, node_refs in todo.items():
        for ref in node_refs:
            got = _image_or_error(clients[node], node, ref)
            if not same_image(got, want[ref]):
                raise DockerOpError(
                    f"node {node}: image {ref} has ID {got.id if got else None} after loading, but the source "
                    f"has {want[ref].id} (and other layers or configuration); remove it on {node} "
                    f"(docker rmi {ref}) and run again")
    return res


def content_id(img: Any) -> str:
    """An image's identity across engines and image stores: its layers (uncompressed digests) and
    configuration. The ID itself is not: an engine with the containerd image store (the default of
    new Docker 29 installs, an option of 24 to 28) names a loaded image by its manifest's digest,
    not by its configuration's, and leaves out the legacy `Image` field of the configuration."""
    a = img.attrs
    config = {k: v for k, v in (a.get("Config") or {}).items() if k != "Image" and v not in (None, "", [], {})}
    doc = {"layers": (a.get("RootFS") or {}).get("Layers") or [], "config": config, "os": a.get("Os"),
           "architecture": a.get("Architecture"), "created": a.get("Created")}
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def same_image(have: Any, want: Any) -> bool:
    """Whether a node's image is the source's: the same ID, or the same layers and configuration."""
    return have is not None and (have.id == want.id or content_id(have) == content_id(want))


LOAD_TIMEOUT = 900  # seconds a node may take to answer an image load (read timeout of that one call)


def _stream_image(source: docker.DockerClient, target: docker.DockerClient, node: str,
                  ref: str, on_chunk: Callable[[int, str], None] | None = None) -> None:
    """Stream `ref` from the source engine into `target` without a file in between."""
    t0 = time.monotonic()
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for chunk in source.api.get_image(ref):
            sent += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk), f"{ref} → {node}")
            yield chunk

    log.info("loading %s onto %s", ref, node)
    # A node writes the layers of a big image before it answers: on a slow disk or a busy node that
    # takes longer than the engine client's usual read timeout (60 s; seen on a loaded 2-core lab).
    saved_timeout = target.api.timeout
    target.api.timeout = max(saved_timeout or 0, LOAD_TIMEOUT)
    try:
        for msg in target.api.load_image(chunks(), quiet=True):
            if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
                detail = msg.get("error") or msg["errorDetail"].get("message", "")
                raise DockerOpError(f"node {node}: loading image {ref} failed: {detail}")
    except docker.errors.DockerException as e:
        raise DockerOpError(f"node {node}: loading image {ref} failed: {_one_line(e)}") from e
    except requests.exceptions.RequestException as e:  # the connection to the node (or its ssh tunnel) dropped
        raise DockerOpError(f"node {node}: loading image {ref} failed: the connection to its engine was lost "
                            f"({_one_line(e)}); when the node answers again, run the stage again (--resume)") from e
    finally:
        target.api.timeout = saved_timeout
    log.info("loaded %s onto %s: %d MB in %.1f s", ref, node, sent // 2**20,
             time.monotonic() - t0)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def image_or_none(client: docker.DockerClient, ref: str):
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:
        raise DockerOpError(f"inspecting image {ref} failed: {_one_line(e)}") from e


def _image_or_error(client: docker.DockerClient, node: str, ref: str):
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as e:
        raise DockerOpError(f"node {node}: inspecting image {ref} failed: {_one_line(e)}") from e


def _split_ref(ref: str) -> tuple[str, str]:
    """"repo:tag" -> (repo, tag); the colon of a registry port is not a tag separator."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def _one_line(e: object) -> str:
    return " ".join(str(e).split())[:500]


# --------------------------------------------------------------------------------------
# 60-images: the stage, on the parameters. Images are built on the hub's manager (the
# "source") and delivered from it to every other node.
# --------------------------------------------------------------------------------------
KINDS = ("hub", "singleuser")
PROJECT_IMAGES = IMAGES


def images_dir(p) -> Path:
    """The folder with hub/ and singleuser/ build contexts (parameter images.dir, else the project's);
    with images.jupyterhub_version, a copy of it with that JupyterHub pinned (see pinned.py)."""
    src = p.path(p.images.dir) if p.images.dir else PROJECT_IMAGES
    if getattr(p.images, "jupyterhub_version", None):
        from hubops.stages.pinned import pinned_images_dir

        return pinned_images_dir(src, p.images.jupyterhub_version)
    return src


CA_ENV = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def extra_ca(p) -> Path | None:
    """The CA bundle image builds trust: images.extra_ca_bundle, else (with images.trust_host_ca)
    the bundle this machine's own pip trusts, so that a build behind the same TLS-intercepting
    proxy reaches PyPI as the operator's pip does."""
    if p.images.extra_ca_bundle:
        return p.path(p.images.extra_ca_bundle)
    if p.images.trust_host_ca:
        for var in CA_ENV:
            value = os.environ.get(var)
            if value and Path(value).is_file():
                return Path(value)
    return None


_BUILDERS: dict[str, docker.DockerClient] = {}


def builder(p, clients) -> docker.DockerClient:
    """The engine images are built on: images.build_engine, else the hub's manager."""
    url = p.images.build_engine
    if not url:
        return clients.manager
    if url not in _BUILDERS:
        _BUILDERS[url] = docker.DockerClient(base_url=url, timeout=120)
    return _BUILDERS[url]


def ensure_base(p, clients, *, dry_run: bool = False) -> Result:
    """The Debian base image on the building engine (pulled, or bootstrapped with debootstrap)."""
    return ensure_base_image(builder(p, clients), name=p.images.base, dry_run=dry_run)


def ensure_built(p, clients, kind: str, *, dry_run: bool = False) -> Result:
    """The `kind` image ("hub" or "singleuser") built on the building engine if its context changed."""
    if dry_run and image_or_none(builder(p, clients), p.images.base) is None:
        return Result(f"{kind} image", dry_run=True).change("create", f"hubops-{kind}", "would build on the new base image")
    r = ensure_image_built(builder(p, clients), kind, images_dir=images_dir(p), base=p.images.base,
                           extra_ca_bundle=extra_ca(p), deployment=p.deployment, dry_run=dry_run)
    r.facts["build_trusts"] = str(extra_ca(p) or "the base image's CA certificates only")
    return r


def desired_refs(p, client: docker.DockerClient) -> dict[str, str]:
    """The tags the current build contexts give, e.g. {"hub": "hubops-hub:3f2a…", ...}."""
    base = image_or_none(client, p.images.base)
    if base is None:
        raise ImageNotBuilt(f"base image {p.images.base} is missing on {p.hub_host.name}: run 60-images first")
    ca = extra_ca(p)
    ca_digest = hashlib.sha256(ca.read_bytes()).hexdigest() if ca and ca.read_bytes() else None
    return {k: image_ref(k, images_dir=images_dir(p), base_id=base.id, extra_ca_digest=ca_digest) for k in KINDS}


def ensure_delivered(p, clients, *, dry_run: bool = False) -> Result:
    """The images on the nodes that run them, with the same image ID as on the building engine:
    the single-user image on every node (users' servers, 70-storage's probes), the hub image on
    the managers only (the hub service runs on a manager; workers never run it)."""
    source = builder(p, clients)
    if dry_run and image_or_none(source, p.images.base) is None:
        return Result("images on nodes", dry_run=True).change("create", "images on every node", "after they are built")
    by_kind = desired_refs(p, source)
    refs = list(by_kind.values())
    if dry_run and any(image_or_none(source, r) is None for r in refs):
        return Result("images on nodes", dry_run=True).change(
            "create", "images on every node", f"{', '.join(refs)} once built")
    managers = {h.name for h in p.hosts.managers}
    per_node = {h.name: [ref for kind, ref in by_kind.items() if kind != "hub" or h.name in managers]
                for h in p.hosts.all}
    return ensure_images_on_nodes(clients.all(), refs, source=source, dry_run=dry_run, per_node=per_node)




# --------------------------------------------------------------------------------------
# spawn profiles (parameter profiles:): each profile's image built FROM the single-user image and
# delivered only to the nodes its placement (labels, spawner.placement, generic resources) allows.
# --------------------------------------------------------------------------------------
def profile_images_dir(p) -> Path:
    """Where profiles' folders are: images.dir, else the project's images/ (never the pinned copy, which
    holds hub/ and singleuser/ only; a profile's JupyterHub is the single-user image's it is built FROM)."""
    return p.path(p.images.dir) if p.images.dir else PROJECT_IMAGES


def profile_refs(p, client: docker.DockerClient, singleuser_ref: str) -> dict[str, str]:
    """Profile name -> the tag its folder gives (`hubops-<folder>:<digest>`, the digest over the folder, the
    single-user image's ID and the extra CA), for the profiles built from images/FOLDER."""
    folders = {pr.name: pr.image_folder for pr in p.profiles if pr.image_folder}
    if not folders:
        return {}
    su = image_or_none(client, singleuser_ref)
    if su is None:
        raise ImageNotBuilt(f"single-user image {singleuser_ref} is missing: run 60-images first")
    ca = extra_ca(p)
    ca_digest = hashlib.sha256(ca.read_bytes()).hexdigest() if ca and ca.read_bytes() else None
    return {name: image_ref(folder, images_dir=profile_images_dir(p), base_id=su.id, extra_ca_digest=ca_digest, extras={})
            for name, folder in folders.items()}


def profile_nodes(p, clients, prof) -> list[str]:
    """The hosts that may run `prof`'s servers: its placement labels and spawner.placement, and, when it asks
    for generic resources, the hosts whose engine advertises each kind (docker info's GenericResources)."""
    from hubops.core.profiles import eligible_hosts

    hosts = [h.name for h in eligible_hosts(p, prof)]
    if prof.generic_resources:
        hosts = [h for h in hosts if all(advertised(clients[h]).get(k, 0) >= n
                                         for k, n in prof.generic_resources.items())]
    return hosts


def advertised(client: docker.DockerClient) -> dict[str, int]:
    """The generic resources an engine advertises (dockerd --node-generic-resource, daemon.json
    node-generic-resources): kind -> how many."""
    from hubops.stages.profiles import count, generic_resources

    return {k: count(v) for k, v in generic_resources(client.info()).items()}


def ensure_profile_images(p, clients, *, dry_run: bool = False) -> Result:
    """Each profile's image built (from images/FOLDER, FROM the single-user image) if its context changed,
    then put on the nodes its placement allows, and only those, with the same ID as on the building
    engine. A profile that names an existing image reference: delivered from the building engine when it
    holds it, else every allowed node must already have it."""
    res = Result("profile images", dry_run=dry_run)
    if not p.profiles:
        return res.keep("profiles", "none in the parameters: every server runs the single-user image")
    source = builder(p, clients)
    if image_or_none(source, p.images.base) is None:
        if dry_run:
            return res.change("create", "profile images", "after the base and single-user images are built")
        raise ImageNotBuilt(f"base image {p.images.base} is missing: run 60-images first")
    su_ref = desired_refs(p, source)["singleuser"]
    if image_or_none(source, su_ref) is None:
        if dry_run:
            return res.change("create", "profile images", f"built FROM {su_ref} once it is built")
        raise ImageNotBuilt(f"single-user image {su_ref} is missing: run 60-images first")
    refs = profile_refs(p, source, su_ref)
    ca = extra_ca(p)
    per_node: dict[str, list[str]] = {}
    deliver: list[str] = []
    for i, prof in enumerate(p.profiles):
        nodes = profile_nodes(p, clients, prof)
        ref = refs.get(prof.name) or prof.image or su_ref
        res.facts[f"profile {prof.name}"] = f"{ref} on {', '.join(nodes) or 'no node'}"
        if prof.name in refs:
            built = ensure_image_built(source, prof.image_folder, images_dir=profile_images_dir(p), base=su_ref,
                                       extra_ca_bundle=ca, deployment=p.deployment, dry_run=dry_run)
            for c in built.changes:
                res.change(c.action, f"{prof.name}: {c.target}", c.detail)
            if not built.changes:
                res.keep(f"{prof.name}: {ref}", "an image with this context digest exists")
        elif image_or_none(source, ref) is None:
            absent = [n for n in nodes if _image_or_error(clients[n], n, ref) is None]
            if absent:
                raise ImageNotBuilt(f"{p.source}: profiles[{i}] ({prof.name}).image: {ref} is on neither the building "
                                    f"engine nor the node(s) {', '.join(absent)} its placement allows; load it there "
                                    "(docker load) or build it from a folder: image: images/FOLDER")
            res.keep(f"{prof.name}: {ref}", f"already on {', '.join(nodes)}")
            continue
        if dry_run and image_or_none(source, ref) is None:
            continue
        if ref not in deliver:
            deliver.append(ref)
        for n in nodes:
            per_node.setdefault(n, []).append(ref)
    if deliver:
        delivered = ensure_images_on_nodes({n: clients[n] for n in per_node}, deliver, source=source,
                                           dry_run=dry_run, per_node=per_node)
        res.items += delivered.items
    return res
