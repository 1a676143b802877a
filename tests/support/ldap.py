"""A real OpenLDAP `slapd` (Debian's) on loopback ports, configured in a temp dir for a test.

Nothing outside the directory is read or written but the schema files and modules the package
installs: the configuration is a `slapd.conf` given with `-f`, the database and the pid file
live in the temp dir, and the server listens on 127.0.0.1 only, in plain LDAP (StartTLS
offered) and in LDAPS, with a certificate from a CA made for the test.

The directory (`dc=example,dc=org`):

- `ou=people`: users `lara`, `leo`, `erin` (passwords in `PASSWORDS`);
- `ou=groups`: groupOfNames `platform-devs` (lara) and `qa-leads` (nobody but a placeholder),
  posixGroup `readers` (memberUid leo); the memberof overlay keeps users' `memberOf` current;
- `ou=services`: `cn=gateway`, the service account for search-then-bind.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .binaries import require
from .registry import free_port

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "slapd-test-admin"
SERVICE_DN = f"cn=gateway,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "gateway-service-password"
PASSWORDS = {"lara": "lara-ldap-password", "leo": "leo-ldap-password", "erin": "erin-ldap-pw"}
PLACEHOLDER = f"cn=placeholder,{SUFFIX}"  # groupOfNames needs a member


def group_dn(name: str) -> str:
    return f"cn={name},ou=groups,{SUFFIX}"


def user_dn(name: str) -> str:
    return f"uid={name},ou=people,{SUFFIX}"


CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {root}/slapd.pid
argsfile {root}/slapd.args
TLSCACertificateFile {root}/ca.pem
TLSCertificateFile {root}/server.pem
TLSCertificateKeyFile {root}/server.key

database mdb
suffix "{suffix}"
rootdn "{admin}"
rootpw {admin_password}
directory {root}/data
maxsize 16777216
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by dn.exact="{service}" read
    by self read
    by users read
    by * none
"""


def _data() -> str:
    people = "\n".join(
        f"dn: {user_dn(name)}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name.title()}\n"
        f"sn: {name.title()}\nuserPassword: {password}\n"
        for name, password in PASSWORDS.items()
    )
    return f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {PLACEHOLDER}
objectClass: organizationalRole
cn: placeholder

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: gateway
userPassword: {SERVICE_PASSWORD}

{people}
dn: {group_dn("platform-devs")}
objectClass: groupOfNames
cn: platform-devs
member: {PLACEHOLDER}
member: {user_dn("lara")}

dn: {group_dn("qa-leads")}
objectClass: groupOfNames
cn: qa-leads
member: {PLACEHOLDER}

dn: {group_dn("readers")}
objectClass: posixGroup
cn: readers
gidNumber: 5001
memberUid: leo
"""


def _certificates(root: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 and localhost, written as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slapd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (root / "ca.pem").write_bytes(ca.public_bytes(pem))
    (root / "server.pem").write_bytes(server.public_bytes(pem))
    (root / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (root / "server.key").chmod(0o600)


class SlapdStartError(RuntimeError):
    pass


@dataclass
class Slapd:
    root: Path
    port: int
    tls_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self.root / "slapd.log"

    def start(self) -> None:
        # In /usr/sbin, which a non-root PATH may lack.
        slapd = shutil.which("slapd") or shutil.which("slapd", path="/usr/sbin:/sbin")
        slapd = slapd or require("slapd", "slapd")
        urls = f"{self.url}/ {self.ldaps_url}/"
        with self.log_path.open("ab") as log:
            # -d keeps slapd in the foreground (a child we can stop); "none" logs nothing extra.
            self.process = subprocess.Popen(
                [slapd, "-f", str(self.root / "slapd.conf"), "-h", urls, "-d", "none"],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SlapdStartError(f"slapd exited: {self.log_path.read_text()[-3000:]}")
            who = self._tool("ldapwhoami", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD, check=False)
            if who.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise SlapdStartError(f"slapd did not answer: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def _tool(
        self, name: str, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        tool = require(name, "ldap-utils")
        proc = subprocess.run(
            [tool, "-x", "-H", self.url, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", "LDAPNOINIT": "1"},
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def search(
        self, dn: str, password: str, base: str, query: str, *attrs: str, check: bool = True
    ) -> int | str:
        """ldapsearch's output, or with check=False its exit status."""
        proc = self._tool(
            "ldapsearch", "-D", dn, "-w", password, "-b", base, "-LLL", query, *attrs, check=check
        )
        return proc.returncode if not check else proc.stdout

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change as the directory's administrator (ldapmodify)."""
        self._tool("ldapmodify", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD, input=ldif)

    def add(self, ldif: str) -> None:
        self._tool("ldapadd", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD, input=ldif)

    def remove_member(self, group: str, user: str) -> None:
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\ndelete: member\n"
                    f"member: {user_dn(user)}\n")  # fmt: skip

    def add_member(self, group: str, user: str) -> None:
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\nadd: member\n"
                    f"member: {user_dn(user)}\n")  # fmt: skip

    def member_of(self, user: str) -> str:
        return str(
            self.search(ADMIN_DN, ADMIN_PASSWORD, user_dn(user), "(objectClass=*)", "memberOf")
        )


def start_slapd(root: Path) -> Slapd:
    """Configure and start a slapd with the test directory above; stop it with `.stop()`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    _certificates(root)
    (root / "slapd.conf").write_text(
        CONFIG.format(
            root=root,
            suffix=SUFFIX,
            admin=ADMIN_DN,
            admin_password=ADMIN_PASSWORD,
            service=SERVICE_DN,
        )
    )
    server = Slapd(root, free_port(), free_port())
    server.start()
    try:
        server.add(_data())
    except Exception:
        server.stop()
        raise
    return server
