"""Certificates from an ACME server (RFC 8555: Let's Encrypt, its staging, Pebble, any other CA),
through certbot's `acme` library; hubops writes no protocol code of its own.

What changes where:
- on the ACME server: an account (key generated once, or `tls.acme.account_key`) and an order
  per issuance;
- on the cluster, for the length of one validation only: a Swarm service
  ``hubops-DEPLOYMENT-acme-responder`` on the hub's node (the hub image running
  ``python3 -m http.server 80``) that publishes port 80 in host mode, and one Swarm config per
  challenge file mounted at ``/srv/acme/.well-known/acme-challenge/TOKEN``; both are removed
  after validation, also when it fails;
- in the operator folder (0600): ``acme-account-key.pem`` (when generated), ``tls-key.pem``,
  ``tls-cert.pem`` and ``acme.json`` (directory, account URL; no secret), so that a re-run with a
  certificate that has more than `renew_days` left makes no ACME call at all.

Wrong inputs stop the issuance before anything lasting changes: a public name that does not
resolve to the hub node's address, an ACME server that does not answer or is not trusted, an
ACME error (the server's own message is shown, e.g. a rate limit), and port 80 of the hub node
not reachable (probed from this machine with a known file before the challenge is answered).

Challenges are answered by a `ChallengeSolver` chosen by `tls.acme.challenge` from `SOLVERS`.
HTTP-01 (`Http01Solver`, the responder above) and DNS-01 (`Dns01Solver`: RFC 2136 dynamic updates
signed with a TSIG key, in tls_dns01.py) ship with hubops. Another DNS provider (a cloud API) is
another solver whose `answering` publishes each challenge's `validation` as the TXT record
``_acme-challenge.NAME``, waits until the authoritative servers serve it, yields, and removes the
records also on failure; register it in `SOLVERS` and accept its name in `params.TLSAcme`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets as _random
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import docker
import docker.errors
import docker.types
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hubops.hub import running
from hubops.core import labels as L, operator, secrets
from hubops.core import certs
from hubops.core.engine import Clients, docker_op
from hubops.core.errors import ConflictError, TLSError, ImageNotBuilt
from hubops.core.params import Loaded
from hubops.core.result import Result

log = logging.getLogger("hubops")

ACCOUNT_KEY = "acme-account-key.pem"
STATE = "acme.json"
CERT = "tls-cert.pem"
KEY = "tls-key.pem"
CHALLENGE_DIR = "/srv/acme"
WELL_KNOWN = "/.well-known/acme-challenge/"
RESPONDER_STAGE = "acme-responder"
ISSUE_TIMEOUT = 180  # seconds for validation and finalization together
START_TIMEOUT = 90  # seconds for the responder's task to run (the image is on the node)
PROBE_TIMEOUT = 30  # seconds the probe keeps trying to fetch its file through port 80


@dataclass
class Issued:
    fullchain: bytes
    key: bytes
    info: certs.CertInfo


# -- answering challenges -----------------------------------------------------------------
@dataclass
class Challenge:
    """One challenge to answer: its name, the token and the key authorization `validation`
    (HTTP-01: the file's content; DNS-01: what the TXT record must be derived from)."""

    name: str
    token: str
    validation: str
    challb: Any  # acme.messages.ChallengeBody
    response: Any  # acme.challenges.ChallengeResponse


class ChallengeSolver:
    """How one ACME challenge type is answered; see the module docstring for adding DNS-01."""

    typ: str = ""  # the ACME challenge type, e.g. "http-01"

    def answering(self, p: Loaded, clients: Clients, r: Result, challenges: list[Challenge]):
        """A context manager: every challenge is answerable while the block runs (the ACME server
        is told to validate inside it), and nothing of it is left after, also on failure. Checks
        that can fail (reachability, propagation) belong before the `yield`, with a TLSError
        saying what to fix."""
        raise NotImplementedError


class Http01Solver(ChallengeSolver):
    """HTTP-01: a short-lived responder service serving the files on port 80 of the hub's node."""

    typ = "http-01"

    def answering(self, p: Loaded, clients: Clients, r: Result, challenges: list[Challenge]):
        return _responder(p, clients, r, {c.token: c.validation for c in challenges})


class Dns01Solver(ChallengeSolver):
    """DNS-01: TXT records published by RFC 2136 dynamic updates with a TSIG key (tls_dns01.py)."""

    typ = "dns-01"

    def answering(self, p: Loaded, clients: Clients, r: Result, challenges: list[Challenge]):
        from hubops.stages import tls_dns01

        return tls_dns01.answering(p, r, challenges)


# tls.acme.challenge -> its solver. params.TLSAcme accepts exactly these names.
SOLVERS: dict[str, ChallengeSolver] = {"http-01": Http01Solver(), "dns-01": Dns01Solver()}


# -- reading what is there ----------------------------------------------------------------
def read_state(p: Loaded) -> dict[str, Any]:
    raw = operator.read(p, STATE)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def due(p: Loaded, cert: bytes | None, key: bytes | None, *, min_days: float | None = None) -> str | None:
    """None when the kept certificate can stay; else why a new one is needed."""
    acme = p.tls.acme
    reason = certs.needs_reissue(cert, names=p.cert_names, ca_pem=None,
                               min_days=acme.renew_days if min_days is None else min_days)
    if reason is not None:
        return reason
    if key is None:
        return "its key is missing"
    try:
        certs.check_pair(cert, key, name=p.hub.public_name, source="kept certificate")
    except TLSError:
        return "the kept key does not match the kept certificate"
    issued_by = read_state(p).get("directory_url")
    if issued_by != acme.directory_url:
        return f"issued by another ACME directory ({issued_by or 'unknown'})"
    if acme.ca_bundle is not None:
        try:
            certs.chain_verifies(cert, p.path(acme.ca_bundle).read_bytes(), p.hub.public_name)
        except TLSError:
            return "does not chain to a CA in tls.acme.ca_bundle"
    return None


def account_key_pem(p: Loaded) -> bytes | None:
    """The ACME account key: the referenced one, else the one kept in the operator folder."""
    ref = p.tls.acme.account_key
    if ref is not None:
        return p.resolve_secret(ref, "tls.acme.account_key").encode() + b"\n"
    return operator.read(p, ACCOUNT_KEY)


# -- the stage's part (40-tls) ------------------------------------------------------------
def ensure_certificate(p: Loaded, clients: Clients, r: Result, *, dry_run: bool = False
                       ) -> tuple[bytes | None, bytes | None]:
    """The kept certificate while it is good for more than renew_days (no ACME call), else a
    new one from the ACME server. Returns (fullchain, key); (None, None) in a plan with none."""
    cert, key = operator.read(p, CERT), operator.read(p, KEY)
    reason = due(p, cert, key)
    names = ", ".join(p.cert_names)
    if reason is None:
        info = certs.cert_info(cert)  # type: ignore[arg-type]
        r.keep(f"certificate for {names}",
               f"issued by {info.issuer_cn} through {p.tls.acme.directory_url}; {info.days_left():.0f} days left, "
               f"renewal due at {p.tls.acme.renew_days}: no ACME call")
        r.facts["acme_call"] = False
        return cert, key
    r.change("create", f"certificate for {names}", f"from ACME {p.tls.acme.directory_url}: {reason}")
    if dry_run:
        # A plan still catches wrong inputs that reading can find: the names, the ACME server.
        check_names(p, clients, r)
        _directory(p)
        r.check(f"ACME directory {p.tls.acme.directory_url}", "answers")
        return (cert, key) if cert and key else (None, None)
    issued = issue(p, clients, r)
    r.facts["acme_call"] = True
    return issued.fullchain, issued.key


def ensure_account_secret(p: Loaded, client: docker.DockerClient, r: Result, *, stage: str) -> None:
    """The ACME account key as a Swarm secret (versioned like the others; not mounted anywhere)."""
    pem = account_key_pem(p)
    if pem is None:  # a plan before the first issuance
        return
    secrets.ensure_versioned(client, p, r, role="acme-account-key", value=pem, stage=stage,
                             what="ACME account key" + (f" (from {p.tls.acme.account_key.describe()})"
                                                        if p.tls.acme.account_key else ""))


# -- checks before any change -------------------------------------------------------------
def expected_addr(p: Loaded, clients: Clients) -> str | None:
    """The address the public name must resolve to: tls.acme.public_addr, else the hub host's
    advertise_addr, else the swarm's address of the hub's node (None before the swarm exists)."""
    if p.tls.acme.public_addr:
        return p.tls.acme.public_addr
    if p.hub_host.advertise_addr:
        return p.hub_host.advertise_addr
    try:
        return clients.manager.info().get("Swarm", {}).get("NodeAddr") or None
    except (docker.errors.DockerException, requests.RequestException):
        return None


def check_names(p: Loaded, clients: Clients, r: Result) -> None:
    """Every certificate name resolves, to the hub node's address. Raises TLSError otherwise."""
    want = expected_addr(p, clients)
    for name in p.cert_names:
        try:
            found = sorted({ai[4][0] for ai in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)})
        except socket.gaierror as e:
            raise TLSError(
                f"{name} does not resolve ({e.strerror}): the ACME server validates the name through DNS; "
                f"add an A record pointing at the hub's node{f' ({want})' if want else ''} and run the stage again"
            ) from None
        if want is not None and want not in found:
            raise TLSError(
                f"{name} resolves to {', '.join(found)}, not to the hub's node {p.hub_host.name} ({want}): the ACME "
                f"server would validate another machine. Point the name's A record at {want}, or, when the node "
                "is reached through NAT, set tls.acme.public_addr to the address the name resolves to"
            )
        r.check(f"DNS {name}", f"resolves to {want or ', '.join(found)}"
                + ("" if want else " (hub node's address not known yet: not compared)"))


# -- talking to the ACME server -----------------------------------------------------------
def _verify(p: Loaded) -> str | bool:
    return str(p.path(p.tls.acme.ca_bundle)) if p.tls.acme.ca_bundle is not None else True


def _jwk(key_pem: bytes):
    import josepy as jose

    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.JWKRSA(key=key), jose.RS256
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": jose.ES256, "secp384r1": jose.ES384, "secp521r1": jose.ES512}.get(key.curve.name)
        if alg is not None:
            return jose.JWKEC(key=key), alg
    raise TLSError("tls.acme.account_key: use an RSA or an EC P-256/P-384/P-521 key")


def _network(p: Loaded, key_pem: bytes | None = None):
    from acme import client as acme_client

    from hubops import __version__

    jwk, alg = _jwk(key_pem) if key_pem else (None, None)
    kwargs = {"alg": alg} if alg else {}
    net = acme_client.ClientNetwork(jwk, verify_ssl=_verify(p), user_agent=f"hubops/{__version__}", timeout=30,
                                    **kwargs)
    return net


def _directory(p: Loaded, net=None):
    """Fetch the ACME directory; TLSError saying what to fix when it cannot be had."""
    from acme import client as acme_client

    url = p.tls.acme.directory_url
    net = net or _network(p)
    try:
        return acme_client.ClientV2.get_directory(url, net)
    except requests.exceptions.SSLError as e:
        raise TLSError(
            f"ACME server {url}: its HTTPS certificate does not verify against "
            f"{_verify(p) if _verify(p) is not True else 'the system CAs'} ({e}); for a test CA set tls.acme.ca_bundle"
        ) from None
    except requests.RequestException as e:
        raise TLSError(f"ACME server {url} does not answer ({e.__class__.__name__}: {e}); "
                       "check tls.acme.directory_url and this machine's network") from None
    except Exception as e:  # noqa: BLE001 - acme raises several kinds for a bad directory
        raise TLSError(f"ACME server {url}: not an ACME directory ({_acme_message(e)}); check tls.acme.directory_url") from None


def _acme_message(e: BaseException) -> str:
    """The server's own words for an ACME error (problem document), else the exception's."""
    from acme import messages

    if isinstance(e, messages.Error):
        kind = (e.typ or "").rsplit(":", 1)[-1]
        return f"{e.detail or e.title or kind} [{kind}]" if kind else str(e.detail or e)
    return f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__


def _acme_error(url: str, what: str, e: BaseException) -> TLSError:
    from acme import messages

    hint = "see the server's message above"
    if isinstance(e, messages.Error) and (e.typ or "").endswith("rateLimited"):
        hint = ("the ACME server's rate limit was hit: wait until it lifts (the message says when), and use "
                "letsencrypt-staging while testing")
    elif isinstance(e, messages.Error) and (e.typ or "").endswith(("rejectedIdentifier", "caa")):
        hint = "the CA will not issue for this name: check hub.public_name and the domain's CAA records"
    return TLSError(f"ACME server {url} refused to {what}: {_acme_message(e)}; {hint}")


def issue(p: Loaded, clients: Clients, r: Result, *, stage: str = "40-tls") -> Issued:
    """A new certificate (and a new key) for p.cert_names from the ACME server, validated by
    the challenge tls.acme.challenge names (HTTP-01 on port 80 of the hub's node, or DNS-01 through
    RFC 2136). Writes it to the operator folder; not to Swarm."""
    from acme import crypto_util, errors as acme_errors, messages

    acme = p.tls.acme
    url = acme.directory_url
    if acme.challenge == "http-01":  # DNS-01 proves control of the zone; the name may point anywhere
        check_names(p, clients, r)

    key_pem = account_key_pem(p)
    generated = key_pem is None
    if generated:
        key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    net = _network(p, key_pem)
    directory = _directory(p, net)
    from acme import client as acme_client

    client = acme_client.ClientV2(directory, net)
    r.check(f"ACME directory {url}", "answers" + (" (verified with tls.acme.ca_bundle)" if acme.ca_bundle else ""))

    # The account: made once per key; asking again with the same key finds the same account.
    try:
        regr = client.new_account(messages.NewRegistration.from_data(email=acme.email, terms_of_service_agreed=True))
    except acme_errors.ConflictError as e:  # servers answering 409 for a known key
        regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
        net.account = regr
    except (messages.Error, acme_errors.Error) as e:
        raise _acme_error(url, f"register the account for {acme.email}", e) from None
    except requests.RequestException as e:
        raise TLSError(f"ACME server {url} stopped answering while registering ({e})") from None
    state = read_state(p)
    if state.get("account_url") != regr.uri or state.get("directory_url") != url:
        r.change("create" if generated else "update", f"ACME account {regr.uri}", f"contact {acme.email}")
    else:
        r.keep(f"ACME account {regr.uri}", "registered earlier")
    if generated:
        operator.folder(p)
        operator.write_private(p.operator_path / ACCOUNT_KEY, key_pem)

    cert_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    csr = crypto_util.make_csr(cert_key, p.cert_names)
    try:
        order = client.new_order(csr)
    except (messages.Error, acme_errors.Error) as e:
        raise _acme_error(url, f"open an order for {', '.join(p.cert_names)}", e) from None

    # Each name's authorization: a challenge of the configured type (tls.acme.challenge), unless
    # the server still holds a valid authorization.
    solver = SOLVERS[acme.challenge]
    answers: list[Challenge] = []
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            r.check(f"authorization {authz.body.identifier.value}", "still valid at the ACME server")
            continue
        offered = [c for c in authz.body.challenges if c.chall.typ == solver.typ]
        if not offered:
            raise TLSError(f"ACME server {url} offers no {solver.typ} challenge for {authz.body.identifier.value} "
                           f"(only {', '.join(c.chall.typ for c in authz.body.challenges)})")
        challb = offered[0]
        response, validation = challb.response_and_validation(net.key)
        answers.append(Challenge(authz.body.identifier.value, challb.chall.encode("token"), validation,
                                 challb, response))
    deadline = dt.datetime.now() + dt.timedelta(seconds=ISSUE_TIMEOUT)
    try:
        if answers:
            with solver.answering(p, clients, r, answers):
                for ch in answers:
                    client.answer_challenge(ch.challb, ch.response)
                order = client.poll_and_finalize(order, deadline)
        else:
            order = client.finalize_order(order, deadline)
    except acme_errors.ValidationError as e:
        problems = []
        for authz in e.failed_authzrs:
            for c in authz.body.challenges:
                if c.error is not None:
                    problems.append(f"{authz.body.identifier.value}: {_acme_message(c.error)}")
        how = (f"it looked up TXT _acme-challenge.NAME through its own resolvers: they must reach the zone's "
               f"authoritative servers, which must serve what {acme.dns.server} was given" if acme.challenge == "dns-01"
               else f"it fetched http://NAME{WELL_KNOWN}TOKEN from port 80 of what the name resolves to: open port 80 "
               "of the hub's node to the ACME server")
        raise TLSError(f"ACME server {url} could not validate {'; '.join(problems) or 'the names'}; {how}") from None
    except acme_errors.TimeoutError:
        raise TLSError(f"ACME server {url} did not finish the order within {ISSUE_TIMEOUT} s; run the stage again") from None
    except (messages.Error, acme_errors.Error) as e:
        raise _acme_error(url, "issue the certificate", e) from None

    fullchain = order.fullchain_pem.encode()
    info = certs.check_pair(fullchain, cert_key, name=p.hub.public_name, source=f"certificate from {url}")
    if acme.ca_bundle is not None:
        certs.chain_verifies(fullchain, p.path(acme.ca_bundle).read_bytes(), p.hub.public_name,
                           source=f"certificate from {url}")
    operator.folder(p)
    operator.write_private(p.operator_path / KEY, cert_key)
    operator.write_private(p.operator_path / CERT, fullchain)
    operator.write_private(p.operator_path / STATE, json.dumps({
        "directory_url": url, "account_url": regr.uri, "email": acme.email,
        "issued": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "not_after": info.not_after.isoformat(), "fingerprint_sha256": info.fingerprint_sha256,
    }).encode() + b"\n")  # one line: the redactor reads it as one value
    log.info("ACME %s issued a certificate for %s, valid until %s", url, ", ".join(p.cert_names), info.not_after)
    r.facts.update({"acme_directory": url, "acme_account": regr.uri})
    return Issued(fullchain, cert_key, info)


# -- the HTTP-01 responder ----------------------------------------------------------------
def responder_service(p: Loaded) -> str:
    return f"{p.prefix}-acme-responder"


def _responder_image(p: Loaded, clients: Clients, r: Result) -> str:
    """The hub image on the hub's node: the one images/hub gives, else the one the hub runs now
    (a renewal does not wait for a build). 40-tls runs before 60-images: on a first deploy the
    image is built and delivered here (60-images then finds it already there)."""
    from hubops.stages import images

    src = images.builder(p, clients)
    try:
        wanted = images.desired_refs(p, src)["hub"]
    except ImageNotBuilt:
        wanted = None
    for ref in (wanted, running.running_image(p, clients)):
        if ref is None:
            continue
        try:
            clients.manager.images.get(ref)
            return ref
        except docker.errors.ImageNotFound:
            pass
    for res in (images.ensure_base(p, clients), images.ensure_built(p, clients, "hub")):
        r.items += res.items
    ref = images.desired_refs(p, src)["hub"]
    res = images.ensure_images_on_nodes({p.hub_host.name: clients.manager}, [ref], source=src)
    r.items += res.items
    return ref


def _find_service(c: docker.DockerClient, name: str):
    with docker_op(f"look up service {name}"):
        return next((s for s in c.services.list(filters={"name": name}) if s.name == name), None)


@contextmanager
def _responder(p: Loaded, clients: Clients, r: Result, files: dict[str, str]) -> Iterator[None]:
    """Serve `files` (token -> key authorization) on port 80 of the hub's node while the block
    runs, after proving from this machine that port 80 of every name reaches it. Removed after,
    also on failure."""
    c = clients.manager
    name = responder_service(p)
    old = _find_service(c, name)
    if old is not None:
        if not L.owned_by(old.attrs["Spec"].get("Labels"), p.deployment):
            raise ConflictError(f"service {name} exists but was not created by hubops for deployment {p.deployment}; "
                                "remove or rename it")
        _remove_responder(p, c, r, old, note="left over from an interrupted issuance")
    image = _responder_image(p, clients, r)
    probe_token, probe_value = f"hubops-probe-{_random.token_hex(8)}", _random.token_urlsafe(24)
    served = {**files, probe_token: probe_value}
    made: list = []
    svc = None
    try:
        refs = []
        for token, content in served.items():
            cname = f"{p.prefix}-acme-{hashlib.sha256(token.encode()).hexdigest()[:16]}"
            with docker_op(f"create config {cname}", p.hub_host.name):
                cfg = c.configs.create(name=cname, data=content.encode(),
                                       labels=L.labels(p.deployment, RESPONDER_STAGE, role="acme-challenge"))
            made.append(cfg)
            refs.append(docker.types.ConfigReference(cfg.id, cname, filename=f"{CHALLENGE_DIR}{WELL_KNOWN}{token}",
                                                     uid="0", gid="0", mode=0o444))
        spec = docker.types.ContainerSpec(
            image=image, command=["python3", "-m", "http.server", "80", "--directory", CHALLENGE_DIR],
            configs=refs, labels=L.labels(p.deployment, RESPONDER_STAGE, role="acme-responder"),
            stop_grace_period=1_000_000_000,
        )
        task = docker.types.TaskTemplate(
            container_spec=spec,
            restart_policy=docker.types.RestartPolicy(condition="none"),
            placement=docker.types.Placement(constraints=[f"node.labels.{p.hub_node_label}==true"]),
        )
        r.change("create", f"service {name}",
                 f"temporary HTTP-01 responder on port 80 of {p.hub_host.name} ({len(files)} challenge file(s))")
        with docker_op(f"create service {name}", p.hub_host.name):
            c.api.create_service(
                task, name=name, labels=L.labels(p.deployment, RESPONDER_STAGE, role="acme-responder"),
                endpoint_spec=docker.types.EndpointSpec(mode=p.network.endpoint_mode,
                                                        ports={80: (80, "tcp", "host")}),
                mode=docker.types.ServiceMode("replicated", replicas=1),
            )
        svc = _find_service(c, name)
        _wait_running(p, svc)
        for n in p.cert_names:
            _probe(p, n, probe_token, probe_value)
            r.check(f"http://{n}{WELL_KNOWN}", "port 80 answers with hubops's probe file (fetched from this machine)")
        yield
    finally:
        svc = svc or _find_service(c, name)
        _remove_responder(p, c, r, svc, configs=made)


def _wait_running(p: Loaded, svc) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no task yet"
    while time.monotonic() < deadline:
        svc.reload()
        tasks = svc.tasks()
        for t in tasks:
            state = t["Status"]["State"]
            if state == "running":
                return
            if state in ("failed", "rejected", "shutdown", "complete"):
                err = t["Status"].get("Err") or state
                raise TLSError(
                    f"the HTTP-01 responder could not start on {p.hub_host.name}: {err}; is port 80 of the node "
                    "already taken (another web server)? Free it for the validation, or use another challenge"
                )
            last = f"{state}: {t['Status'].get('Message', '')}"
        time.sleep(0.5)
    raise TLSError(f"the HTTP-01 responder on {p.hub_host.name} did not start within {START_TIMEOUT} s ({last})")


def _probe(p: Loaded, name: str, token: str, value: str, *, port: int = 80) -> None:
    url = f"http://{name}{'' if port == 80 else f':{port}'}{WELL_KNOWN}{token}"
    s = requests.Session()
    s.trust_env = False  # the probe goes straight to the name, like the ACME server's validation
    deadline = time.monotonic() + PROBE_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = s.get(url, timeout=5, allow_redirects=False)
            if resp.status_code == 200 and resp.text.strip() == value:
                return
            last = f"HTTP {resp.status_code}" + (" with other content" if resp.status_code == 200 else "")
        except requests.RequestException as e:
            last = f"{e.__class__.__name__}"
        time.sleep(0.5)
    raise TLSError(
        f"port 80 of {name} is not reachable: {url} answered {last or 'nothing'} within {PROBE_TIMEOUT} s, while hubops's "
        f"responder runs on {p.hub_host.name}. Open port 80 of the hub's node (firewall, security group) and check that "
        f"{name} resolves to it; nothing was issued"
    )


def _remove_responder(p: Loaded, c: docker.DockerClient, r: Result, svc, *, configs: list | None = None,
                      note: str = "validation over") -> None:
    name = responder_service(p)
    if svc is not None:
        r.change("remove", f"service {name}", note)
        with docker_op(f"remove service {name}", p.hub_host.name):
            try:
                svc.remove()
            except docker.errors.NotFound:
                pass
    # Configs of this and any earlier responder: removable once the task's container is gone.
    with docker_op("list challenge configs"):
        leftover = c.configs.list(filters={"label": [*L.selector(p.deployment), f"{L.ROLE}=acme-challenge"]})
    ids = {o.id for o in configs or []} | {o.id for o in leftover}
    deadline = time.monotonic() + 60
    for cid in ids:
        while True:
            try:
                c.configs.get(cid).remove()
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as e:
                if time.monotonic() > deadline:
                    log.warning("challenge config %s could not be removed: %s", cid, e.explanation or e)
                    break
                time.sleep(0.5)  # still in use by the stopping task
    # Port 80 is free again once the task's container is gone.
    while svc is not None and time.monotonic() < deadline:
        if not c.containers.list(all=True, filters={"label": f"com.docker.swarm.service.name={name}"}):
            break
        time.sleep(0.5)
