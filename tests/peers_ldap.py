"""A real LDAP directory for the tests: Debian's slapd (apt-get install slapd), started with its own
cn=config folder, database and ports, TLS from a test CA (ldap:// with StartTLS, and ldaps://),
binds refused without TLS (olcSecurity tls=1). A small directory: people, groups, a service account."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from hubops.core import certs as tls

SUFFIX = "dc=hubops,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
SERVICE_DN = f"cn=jupyterhub,ou=services,{SUFFIX}"


def user_dn(name: str) -> str:
    return f"uid={name},ou=people,{SUFFIX}"


def group_dn(name: str) -> str:
    return f"cn={name},ou=groups,{SUFFIX}"


class Slapd:
    """slapd on `address`: ldap://ADDRESS:PORT (StartTLS) and ldaps://ADDRESS:TLS_PORT.
    `users`: name -> password; `groups`: name -> member names."""

    def __init__(self, workdir: Path, address: str, port: int, tls_port: int, *, users: dict[str, str],
                 groups: dict[str, list[str]], service_password: str, root_password: str):
        self.dir = workdir
        self.address, self.port, self.tls_port = address, port, tls_port
        self.users, self.groups = users, groups
        self.service_password, self.root_password = service_password, root_password
        self.ca = workdir / "ldap-test-ca.pem"
        self.log = workdir / "slapd.log"
        self.url = f"ldap://{address}:{port}"
        self.ldaps_url = f"ldaps://{address}:{tls_port}"
        self.proc: subprocess.Popen | None = None

    def _config_ldif(self) -> str:
        d = self.dir
        return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {d}/slapd.pid
olcTLSCACertificateFile: {d}/ldap-test-ca.pem
olcTLSCertificateFile: {d}/cert.pem
olcTLSCertificateKeyFile: {d}/key.pem

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif
include: file:///etc/ldap/schema/nis.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {d}/db
olcDbMaxSize: 16777216
olcSuffix: {SUFFIX}
olcRootDN: {ROOT_DN}
olcRootPW: {self.root_password}
olcSecurity: tls=1
olcAccess: {{0}}to attrs=userPassword by self =w by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{SERVICE_DN}" read by users read by * none
"""

    def _data_ldif(self) -> str:
        out = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: hubops\no: hubops tests\n"]
        for ou in ("people", "groups", "services"):
            out.append(f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n")
        out.append(f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
                   f"cn: jupyterhub\nuserPassword: {self.service_password}\n")
        for name, pw in self.users.items():
            out.append(f"dn: {user_dn(name)}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name}\nsn: {name}\n"
                       f"userPassword: {pw}\n")
        for g, members in self.groups.items():
            out.append(f"dn: {group_dn(g)}\nobjectClass: groupOfNames\ncn: {g}\n"
                       + "".join(f"member: {user_dn(m)}\n" for m in members))
        return "\n".join(out)

    def start(self) -> "Slapd":
        for exe in ("/usr/sbin/slapd", "/usr/sbin/slapadd"):
            if not Path(exe).exists():
                raise RuntimeError(f"{exe} is missing: apt-get install slapd ldap-utils")
        for port in (self.port, self.tls_port):
            with socket.socket() as s:
                if s.connect_ex((self.address, port)) == 0:
                    raise RuntimeError(f"{self.address}:{port} is taken")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "db").mkdir(parents=True)
        (self.dir / "slapd.d").mkdir()
        ca, ca_key = tls.make_ca("hubops ldap test CA")
        cert, key = tls.issue_server_cert(ca, ca_key, [self.address, "localhost"], days=30)
        (self.dir / "cert.pem").write_bytes(cert)
        (self.dir / "key.pem").write_bytes(key)
        (self.dir / "key.pem").chmod(0o600)
        self.ca.write_bytes(ca)
        (self.dir / "config.ldif").write_text(self._config_ldif())
        (self.dir / "data.ldif").write_text(self._data_ldif())
        (self.dir / "data.ldif").chmod(0o600)
        for n, ldif in (("0", "config.ldif"), ("1", "data.ldif")):
            subprocess.run(["/usr/sbin/slapadd", "-n", n, "-F", str(self.dir / "slapd.d"), "-l", str(self.dir / ldif)],
                           check=True, capture_output=True, timeout=60)
        logf = open(self.log, "ab")
        # -d 256: stay in the foreground and log connections and operations (binds, searches, results).
        self.proc = subprocess.Popen(
            ["/usr/sbin/slapd", "-F", str(self.dir / "slapd.d"), "-h", f"{self.url}/ {self.ldaps_url}/", "-d", "256"],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex((self.address, self.tls_port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"slapd did not listen on {self.ldaps_url}: {self.log.read_text()[-2000:]}")

    def admin(self):
        """An ldap3 connection bound as the directory's root (over ldaps, verified)."""
        import ssl

        import ldap3

        t = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca))
        server = ldap3.Server(self.address, port=self.tls_port, use_ssl=True, tls=t)
        return ldap3.Connection(server, user=ROOT_DN, password=self.root_password, auto_bind=True)

    def remove_member(self, group: str, user: str) -> None:
        import ldap3

        with self.admin() as c:
            assert c.modify(group_dn(group), {"member": [(ldap3.MODIFY_DELETE, [user_dn(user)])]}), c.result

    def binds(self, *, ok: bool = True) -> int:
        """Bind results logged so far: successful ones (err=0), or refused ones (err=49)."""
        return self.log.read_text().count("RESULT tag=97 err=0" if ok else "RESULT tag=97 err=49")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
