"""A private, real slapd for the tests, in the spirit of python-ldap's slapdtest.

No mock directory: ldapquota's job is to get real LDAP semantics right (BOOLEAN
syntax, size limits, ACLs, the auxiliary class), and only a real slapd has them.

One :class:`Slapd` is one server in its own work directory:

- cn=config is built offline with ``slapadd -n0``: global settings, the OpenLDAP
  schemas, **the shipped ``schema/ldapquota.ldif``**, a small test-only schema
  (``mailQuota``, ``mailMessageStore``), then the databases; ``slapd -Ttest``
  checks it before the first start.
- After the first start **the shipped ``examples/slapd-acl.ldif``** is applied
  over ldapi with SASL EXTERNAL, so the ACL tests test the file users get;
  then the test-only account ``cn=limited`` (size limit 3) and the base tree.
- slapd listens on 127.0.0.1 only, on a free port, plus an ldapi socket (and
  ldaps:// with a throwaway CA when ``tls=True``); its stderr (``-d stats``)
  goes to ``workdir/slapd.log``.

The helpers that look at or change the directory run the OpenLDAP command line
tools (``ldapsearch``, ``ldapmodify``, ``slapcat``...), never ldap3: they are
the oracle the code under test is checked against, so they must not share its
client library.

Environment overrides (like slapdtest): ``SLAPD`` (the slapd binary), ``SBIN``
and ``BIN`` (directories of the server and client tools), ``SCHEMA`` (the
OpenLDAP schema directory), ``SLAPD_MODULEDIR``, ``SLAPD_LOGLEVEL`` (the
``-d`` level, default ``stats``).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The files users get; the fixture loads exactly these.
PRODUCT_SCHEMA_LDIF = REPO_ROOT / "schema" / "ldapquota.ldif"
PRODUCT_SCHEMA_FILE = REPO_ROOT / "schema" / "ldapquota.schema"
ACL_EXAMPLE_LDIF = REPO_ROOT / "examples" / "slapd-acl.ldif"

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
PEOPLE_DN = f"ou=people,{SUFFIX}"
SERVICES_DN = f"ou=services,{SUFFIX}"
LDAPQUOTA_DN = f"cn=ldapquota,{SERVICES_DN}"
EXIM_DN = f"cn=exim,{SERVICES_DN}"
LIMITED_DN = f"cn=limited,{SERVICES_DN}"

#: The OpenLDAP schemas loaded before ours, in dependency order.
OPENLDAP_SCHEMAS = ("core", "cosine", "nis", "inetorgperson")

#: Test-only schema: the quota limit and mailbox attributes a site might keep
#: in LDAP. ``mailQuota`` is an IA5 string as in postfix-book, so it can hold
#: both "10485760" and Maildir++ "10000000S,1000C". Its own OID arc, distinct
#: from the product's, so nothing here can be mistaken for shipped schema.
TEST_SCHEMA_LDIF = """\
dn: cn=ldapquotatest,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: ldapquotatest
olcObjectIdentifier: LdqTestRoot 2.25.179277272216163819080572325826293333184
olcAttributeTypes: ( LdqTestRoot:1.1 NAME 'mailQuota'
  DESC 'test only: mailbox quota, bytes or a Maildir++ spec such as 10000000S,1000C'
  EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
olcAttributeTypes: ( LdqTestRoot:1.2 NAME 'mailMessageStore'
  DESC 'test only: path of the mailbox'
  EQUALITY caseExactIA5Match SUBSTR caseExactIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
olcObjectClasses: ( LdqTestRoot:2.1 NAME 'testMailAccount'
  DESC 'test only: mail account data'
  SUP top AUXILIARY MAY ( mailQuota $ mailMessageStore ) )
"""

#: Attributes that make add_account() add an auxiliary class.
_TEST_CLASS_ATTRS = {"mailquota", "mailmessagestore"}
_PRODUCT_CLASS_ATTRS = {"isoverquota", "quotafreebytes", "quotasynctime"}

# Unix socket paths are limited to ~107 bytes (sun_path); pytest's tmp paths
# can be long, so the ldapi socket moves to a short directory if needed.
_MAX_SOCKET_PATH = 100

Values = Union[str, int, Sequence[Union[str, int]]]
Entries = dict[str, dict[str, list[str]]]


class SlapdError(RuntimeError):
    """slapd could not be configured or started; the message says why."""


class LdapToolError(RuntimeError):
    """An OpenLDAP command line tool failed.

    ``result_code`` is the LDAP result code the tool reported (e.g. 50 for
    insufficientAccessRights), which the exit status cannot always carry:
    exit statuses are 8 bits, result codes are not. ``entries`` holds what
    a failing ldapsearch did print (e.g. the entries before a size limit).
    """

    def __init__(
        self, argv: Sequence[str], proc: subprocess.CompletedProcess[str], entries: Optional[Entries] = None
    ) -> None:
        self.argv = list(argv)
        self.returncode = proc.returncode
        self.stdout = proc.stdout or ""
        self.stderr = proc.stderr or ""
        self.result_code = ldap_result_code(proc)
        self.entries: Entries = entries if entries is not None else {}
        # Secrets never reach argv (passwords are passed with -y FILE).
        super().__init__(
            f"{' '.join(self.argv)} failed: exit {self.returncode}, "
            f"LDAP result {self.result_code}\n{self.stderr.strip()}"
        )


def ldap_result_code(proc: subprocess.CompletedProcess[str]) -> int:
    """The LDAP result code reported by an OpenLDAP client tool.

    The tools print e.g. ``ldap_modify: Insufficient access (50)`` and exit
    with the code truncated to 8 bits, so the text is the reliable source.
    """
    if proc.returncode == 0:
        return 0
    text = (proc.stderr or "") + "\n" + (proc.stdout or "")
    match = re.search(r"^(?:ldap_\w+|result): .*?\((-?\d+)\)\s*$", text, re.MULTILINE)
    if match:
        return int(match.group(1))
    match = re.search(r"^result: (\d+)", text, re.MULTILINE)
    if match:
        return int(match.group(1))
    return proc.returncode


# ---------------------------------------------------------------------------
# small helpers


def find_tool(name: str) -> Optional[str]:
    """Path of an OpenLDAP binary, honouring SLAPD/SBIN/BIN; None if absent."""
    if name == "slapd" and os.environ.get("SLAPD"):
        return os.environ["SLAPD"]
    for env in ("SBIN", "BIN"):
        directory = os.environ.get(env)
        if directory and os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    # /usr/sbin is often not on a normal user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    return shutil.which(name, path=search)


def slapd_available() -> bool:
    """True when slapd, the slap* and the ldap* tools are all installed."""
    return all(find_tool(t) for t in ("slapd", "slapadd", "slapcat", "slaptest", "ldapsearch", "ldapmodify"))


def requires(available: bool, what: str) -> None:
    """In a test: skip when ``what`` is missing, but fail on CI (env CI set).

    On CI a missing server means a broken set-up, not a choice
    (python-ldap's skip_unless_ci).
    """
    import pytest  # only tests call this; the module itself stays pytest-free

    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required on CI but not installed", pytrace=False)
    pytest.skip(f"{what} not installed")


def requires_slapd() -> None:
    """In a test: skip (fail on CI) unless slapd and ldap-utils are installed."""
    requires(slapd_available(), "slapd and ldap-utils (apt-get install slapd ldap-utils)")


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise SlapdError(
            f"{name} not found; install slapd and ldap-utils, or set SLAPD/SBIN/BIN to where they are"
        )
    return path


def _schema_dir() -> Path:
    return Path(os.environ.get("SCHEMA", "/etc/ldap/schema"))


def _module_dir() -> Optional[Path]:
    """Where back_mdb.so lives, or None if slapd has mdb built in."""
    candidates = [os.environ.get("SLAPD_MODULEDIR", "")] + [
        "/usr/lib/ldap",  # Debian, Ubuntu
        "/usr/lib64/openldap",  # Fedora, RHEL
        "/usr/lib/openldap",  # Arch, Alpine
        "/usr/libexec/openldap",
        "/usr/local/libexec/openldap",
    ]
    for directory in filter(None, candidates):
        if any(Path(directory).glob("back_mdb.*")):
            return Path(directory)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    There is a window before slapd binds it; start() notices a lost race
    (slapd exits with a bind error) and retries with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssha(password: str) -> str:
    """An RFC 2307 {SSHA} hash, which every slapd accepts without modules."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def escape_rdn_value(value: str) -> str:
    """Escape a string for use as an RDN value (RFC 4514 section 2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or ch == "\0":
            out.append("\\" + ch if ch != "\0" else "\\00")
        elif (i == 0 and ch in " #") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


_SAFE_LDIF_VALUE = re.compile(r"^[\x01-\x09\x0b-\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b-\x0c\x0e-\x7f]*$")


def ldif_line(attr: str, value: Union[str, int]) -> str:
    """One ``attr: value`` LDIF line, base64 (``attr::``) where RFC 2849 requires it."""
    text = str(value)
    if text == "" or (_SAFE_LDIF_VALUE.match(text) and not text.endswith(" ")):
        return f"{attr}: {text}"
    return f"{attr}:: {base64.b64encode(text.encode()).decode()}"


def parse_ldif(text: str) -> list[tuple[str, dict[str, list[str]]]]:
    """Parse LDIF content records (as printed by ldapsearch -LLL or slapcat).

    Handles folded lines, comments, ``attr:: base64`` values and ``version:``.
    Attribute names are kept as written; values are decoded as UTF-8.
    """
    records: list[tuple[str, dict[str, list[str]]]] = []
    # Unfold first. A comment is kept as None so that its own continuation
    # lines are dropped with it instead of being glued to the line before.
    unfolded: list[Optional[str]] = []
    for raw in text.splitlines():
        if raw.startswith(" ") and unfolded:
            # Continuation: the one leading space is not part of the value.
            if unfolded[-1] is not None:
                unfolded[-1] += raw[1:]
            continue
        unfolded.append(None if raw.startswith("#") else raw)
    lines = [line for line in unfolded if line is not None]
    dn: Optional[str] = None
    attrs: dict[str, list[str]] = {}
    for line in lines + [""]:
        if line.strip() == "":
            if dn is not None:
                records.append((dn, attrs))
            dn, attrs = None, {}
            continue
        name, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"not an LDIF line: {line!r}")
        if rest.startswith(":"):
            value = base64.b64decode(rest[1:].strip()).decode("utf-8", "surrogateescape")
        elif rest.startswith("<"):
            value = rest[1:].strip()  # a URL; we never fetch it
        else:
            value = rest.lstrip(" ")
        if dn is None:
            if name.lower() == "version":
                continue
            if name.lower() != "dn":
                raise ValueError(f"LDIF record does not start with dn: {line!r}")
            dn = value
            continue
        attrs.setdefault(name, []).append(value)
    return records


# ---------------------------------------------------------------------------
# the controller


class Slapd:
    """One private slapd on 127.0.0.1, configured for ldapquota's tests.

    :param workdir: directory for config, data, log, passwords and certificates.
    :param tls: also create a throwaway CA and server certificate and listen on
        ldaps:// (StartTLS on ldap:// then works as well).
    :param schema: load ``schema/ldapquota.ldif``; ``False`` gives a directory
        without ldapquota's schema, in which case the ACL example (which names
        our attributes) cannot be loaded and a minimal read-only ACL stands in.
    """

    suffix = SUFFIX
    root_dn = ROOT_DN
    people_dn = PEOPLE_DN
    services_dn = SERVICES_DN
    ldapquota_dn = LDAPQUOTA_DN
    exim_dn = EXIM_DN
    limited_dn = LIMITED_DN
    #: The size limit (soft and hard) of ``limited_dn``.
    limited_size_limit = 3
    #: Seconds to wait for slapd to answer after it was started.
    start_timeout = 15.0
    #: Seconds to wait for slapd to exit after SIGTERM before SIGKILL.
    stop_timeout = 10.0

    def __init__(self, workdir: Path, tls: bool = False, schema: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.schema = schema
        self.config_dir = self.workdir / "slapd.d"
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "slapd.log"

        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self._socket_dir: Optional[Path] = None
        socket_path = self.workdir / "ldapi"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="lq-", dir="/tmp"))
            socket_path = self._socket_dir / "ldapi"
        self.socket_path = socket_path
        self.ldapi_uri = "ldapi://" + urllib.parse.quote(str(socket_path), safe="")

        self.ldaps_port: Optional[int] = None
        self.ldaps_uri: Optional[str] = None
        self.ca_file: Optional[Path] = None
        self.wrong_ca_file: Optional[Path] = None
        self.cert_file: Optional[Path] = None
        self.key_file: Optional[Path] = None
        if tls:
            self.ldaps_port = free_port()
            self.ldaps_uri = f"ldaps://127.0.0.1:{self.ldaps_port}"

        # Passwords are random per server and also written to files without a
        # trailing newline: `ldap* -y FILE` sends the file verbatim.
        self.root_pw, self.root_pw_file = self._secret("admin")
        self.ldapquota_pw, self.ldapquota_pw_file = self._secret("ldapquota")
        self.exim_pw, self.exim_pw_file = self._secret("exim")
        self.limited_pw, self.limited_pw_file = self._secret("limited")
        self._password_files = {
            self.root_dn.lower(): self.root_pw_file,
            self.ldapquota_dn.lower(): self.ldapquota_pw_file,
            self.exim_dn.lower(): self.exim_pw_file,
            self.limited_dn.lower(): self.limited_pw_file,
        }

        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._paused = False
        self._initialised = False
        self._write_client_conf()

    def __repr__(self) -> str:
        return f"<Slapd {self.uri} workdir={self.workdir} running={self.is_running}>"

    def __enter__(self) -> Slapd:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Like slapdtest: keep the work directory (and slapd.log) on failure.
        self.stop()
        if exc_type is None:
            self.cleanup()

    # -- lifecycle ------------------------------------------------------------

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """slapd was started by us and has not exited (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    def start(self) -> None:
        """Start slapd; the first time also build its config, ACLs and base tree.

        Later calls restart it on the same port with the same data.
        """
        if self.is_running:
            return
        if not self._initialised:
            self._write_config()
            self._test_config()
            self._launch(first=True)
            self._apply_acls()
            self._seed()
            self._initialised = True
        else:
            self._launch(first=False)

    def stop(self) -> None:
        """Stop the slapd we started: SIGTERM, then SIGKILL after stop_timeout."""
        proc = self._proc
        atexit.unregister(self.stop)
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                # A stopped process does not act on SIGTERM until continued.
                os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._paused = False
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP slapd: connections are accepted by the kernel, nothing answers.

        This is what a hung directory looks like to clients.
        """
        if not self.is_running:
            raise SlapdError("slapd is not running")
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused slapd."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def ensure_running(self) -> None:
        """Undo what an earlier test may have done: resume if paused, start if stopped."""
        if self.is_running:
            if self._paused:
                self.resume()
            return
        self.start()

    def cleanup(self) -> None:
        """Stop slapd and remove the work directory (and the socket directory)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no slapd.log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- configuration ----------------------------------------------------------

    def _secret(self, name: str) -> tuple[str, Path]:
        password = secrets.token_urlsafe(18)
        path = self.workdir / f"{name}.secret"
        path.write_text(password)
        path.chmod(0o600)
        return password, path

    def _write_client_conf(self) -> None:
        # The CLI tools must not pick up the machine's or the user's ldap.conf
        # (BASE, URI, BINDDN, TLS settings): they get ours and HOME=workdir.
        # Client-side timeouts: against a paused (SIGSTOPped) slapd the TCP
        # connect still succeeds, so only TIMEOUT stops a tool from hanging.
        conf = "TLS_REQCERT demand\nNETWORK_TIMEOUT 10\nTIMEOUT 30\n"
        if self.tls:
            self._make_tls_material()
            conf += f"TLS_CACERT {self.ca_file}\n"
        (self.workdir / "ldap.conf").write_text(conf)

    def _tool_env(self, ca_file: Optional[Path] = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LDAP")}
        env["HOME"] = str(self.workdir)
        env["LDAPCONF"] = str(self.workdir / "ldap.conf")
        if ca_file is not None:
            env["LDAPTLS_CACERT"] = str(ca_file)
        return env

    def _run(
        self, argv: Sequence[str], *, input: Optional[str] = None, timeout: float = 60.0,
        env: Optional[Mapping[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout,
            env=dict(env) if env is not None else self._tool_env(), cwd=self.workdir,
        )

    def _run_checked(self, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        proc = self._run(argv, **kw)  # type: ignore[arg-type]
        if proc.returncode != 0:
            raise SlapdError(
                f"{' '.join(map(str, argv))} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def _make_tls_material(self) -> None:
        """A throwaway CA, a server certificate it signs, and an unrelated CA.

        The unrelated CA has the same subject name as the real one, so a
        client that trusts it finds an issuer by name and must actually check
        the signature to refuse the server: the negative test is not fooled
        by a mere name mismatch.
        """
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SlapdError("openssl not found; it is needed for tls=True")
        tls_dir = self.workdir / "tls"
        tls_dir.mkdir(exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
        for name in ("ca", "wrong-ca"):
            self._run_checked(
                [openssl, "req", "-x509", *ec, "-sha256", "-days", "30",
                 "-keyout", str(tls_dir / f"{name}.key"), "-out", str(tls_dir / f"{name}.pem"),
                 "-subj", "/O=ldapquota tests/CN=ldapquota test CA", *ca_ext],
            )
        self._run_checked(
            [openssl, "req", "-new", *ec, "-keyout", str(tls_dir / "server.key"),
             "-out", str(tls_dir / "server.csr"), "-subj", "/O=ldapquota tests/CN=localhost"],
        )
        # libldap checks "localhost" against the machine's own host name (it
        # canonicalises it), so that name goes into the SAN too; other clients
        # (ldap3, openssl) check "localhost" or the IP as given.
        names = ["localhost"] + sorted({n for n in (socket.gethostname(), socket.getfqdn()) if n and n != "localhost"})
        ext = tls_dir / "server.ext"
        ext.write_text(
            "subjectAltName = IP:127.0.0.1, " + ", ".join(f"DNS:{n}" for n in names) + "\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
        )
        self._run_checked(
            [openssl, "x509", "-req", "-sha256", "-days", "30", "-in", str(tls_dir / "server.csr"),
             "-CA", str(tls_dir / "ca.pem"), "-CAkey", str(tls_dir / "ca.key"),
             "-set_serial", str(secrets.randbits(63)), "-extfile", str(ext),
             "-out", str(tls_dir / "server.pem")],
        )
        self.ca_file = tls_dir / "ca.pem"
        self.wrong_ca_file = tls_dir / "wrong-ca.pem"
        self.cert_file = tls_dir / "server.pem"
        self.key_file = tls_dir / "server.key"

    def _peercred_dn(self) -> str:
        # The identity SASL EXTERNAL over ldapi maps to: whoever runs the tests.
        return f"gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"

    def _global_ldif(self) -> str:
        tls = ""
        if self.tls:
            tls = (
                f"olcTLSCACertificateFile: {self.ca_file}\n"
                f"olcTLSCertificateFile: {self.cert_file}\n"
                f"olcTLSCertificateKeyFile: {self.key_file}\n"
            )
        module_dir = _module_dir()
        modules = ""
        if module_dir is not None:
            modules = (
                "\ndn: cn=module,cn=config\n"
                "objectClass: olcModuleList\n"
                "cn: module\n"
                f"olcModulePath: {module_dir}\n"
                "olcModuleLoad: back_mdb\n"
            )
        return (
            "dn: cn=config\n"
            "objectClass: olcGlobal\n"
            "cn: config\n"
            f"olcPidFile: {self.workdir / 'slapd.pid'}\n"
            f"olcArgsFile: {self.workdir / 'slapd.args'}\n"
            # Logging goes to stderr via -d (slapd.log); nothing to syslog.
            "olcLogLevel: none\n"
            f"{tls}"
            f"{modules}"
            "\ndn: cn=schema,cn=config\n"
            "objectClass: olcSchemaConfig\n"
            "cn: schema\n"
        )

    def _databases_ldif(self) -> str:
        # As README's "Running at scale" says to index (the daemon's account refresh asks
        # for modifyTimestamp>=...; unindexed, each one reads the whole database).
        indexes = ["objectClass eq", "mail eq", "entryCSN eq", "modifyTimestamp eq"]
        if self.schema:
            indexes.append("isOverQuota eq")
        index_lines = "".join(f"olcDbIndex: {i}\n" for i in indexes)
        peercred = self._peercred_dn()
        return (
            # The frontend's rules are appended to every database's; these are
            # Debian's defaults (rootDSE and subschema readable by all).
            "dn: olcDatabase={-1}frontend,cn=config\n"
            "objectClass: olcDatabaseConfig\n"
            "objectClass: olcFrontendConfig\n"
            "olcDatabase: {-1}frontend\n"
            f"olcAccess: {{0}}to * by dn.exact={peercred} manage by * break\n"
            'olcAccess: {1}to dn.exact="" by * read\n'
            'olcAccess: {2}to dn.base="cn=Subschema" by * read\n'
            "\n"
            "dn: olcDatabase={0}config,cn=config\n"
            "objectClass: olcDatabaseConfig\n"
            "olcDatabase: {0}config\n"
            f"olcRootDN: {peercred}\n"
            f"olcAccess: {{0}}to * by dn.exact={peercred} manage by * break\n"
            "\n"
            # {1}mdb: the DN examples/slapd-acl.ldif modifies, as on Debian.
            "dn: olcDatabase={1}mdb,cn=config\n"
            "objectClass: olcDatabaseConfig\n"
            "objectClass: olcMdbConfig\n"
            "olcDatabase: {1}mdb\n"
            f"olcSuffix: {self.suffix}\n"
            f"olcRootDN: {self.root_dn}\n"
            f"olcRootPW: {ssha(self.root_pw)}\n"
            f"olcDbDirectory: {self.data_dir}\n"
            # Sparse file; 1 GiB is plenty for benchmarks with many accounts.
            "olcDbMaxSize: 1073741824\n"
            f"{index_lines}"
        )

    def _write_config(self) -> None:
        """Build cn=config with slapadd -n0, one LDIF file at a time.

        Schemas come before the databases because an index on an attribute
        (mail, isOverQuota) needs the attribute to be defined.
        """
        if self.config_dir.exists():
            shutil.rmtree(self.config_dir)
        self.config_dir.mkdir()
        self.data_dir.mkdir(exist_ok=True)
        ldif_dir = self.workdir / "config-ldif"
        ldif_dir.mkdir(exist_ok=True)
        files: list[Path] = []
        base = ldif_dir / "00-global.ldif"
        base.write_text(self._global_ldif())
        files.append(base)
        for name in OPENLDAP_SCHEMAS:
            path = _schema_dir() / f"{name}.ldif"
            if not path.exists():
                raise SlapdError(f"{path} not found; set SCHEMA to the OpenLDAP schema directory")
            files.append(path)
        if self.schema:
            files.append(PRODUCT_SCHEMA_LDIF)  # the shipped file, as is
        test_schema = ldif_dir / "50-test-schema.ldif"
        test_schema.write_text(TEST_SCHEMA_LDIF)
        files.append(test_schema)
        databases = ldif_dir / "90-databases.ldif"
        databases.write_text(self._databases_ldif())
        files.append(databases)
        slapadd = _tool("slapadd")
        for path in files:
            self._run_checked([slapadd, "-n0", "-F", str(self.config_dir), "-l", str(path)])

    def _test_config(self) -> None:
        argv = [_tool("slapd"), "-Ttest", "-F", str(self.config_dir), "-u"]
        proc = self._run(argv)
        if proc.returncode != 0:
            raise SlapdError(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")

    # -- running ----------------------------------------------------------------

    def _listen_urls(self) -> list[str]:
        urls = [self.uri + "/", self.ldapi_uri + "/"]
        if self.ldaps_uri:
            urls.append(self.ldaps_uri + "/")
        return urls

    def _launch(self, first: bool) -> None:
        attempts = 3 if first else 1
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
                return
            except SlapdError as exc:
                lost_port_race = "Address already in use" in str(exc) or "bind(" in str(exc)
                if not (first and lost_port_race and attempt + 1 < attempts):
                    raise
                # Somebody took the port between free_port() and slapd's bind.
                self.port = free_port()
                self.uri = f"ldap://127.0.0.1:{self.port}"
                if self.tls:
                    self.ldaps_port = free_port()
                    self.ldaps_uri = f"ldaps://127.0.0.1:{self.ldaps_port}"

    def _spawn_and_wait(self) -> None:
        if self.socket_path.exists():
            self.socket_path.unlink()  # a stale socket from a killed slapd
        argv = [
            _tool("slapd"), "-F", str(self.config_dir), "-h", " ".join(self._listen_urls()),
            "-d", os.environ.get("SLAPD_LOGLEVEL", "stats"),
        ]
        with open(self.log_file, "ab") as log:
            log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._paused = False
        # Whatever happens to the test run, no slapd of ours outlives it.
        atexit.register(self.stop)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        """Poll every 0.1 s until slapd answers on every listener.

        Fails fast, with the log tail, if slapd exits; fails after
        start_timeout seconds (monotonic clock) otherwise.
        """
        assert self._proc is not None
        whoami = _tool("ldapwhoami")
        probes = [
            [whoami, "-o", "nettimeout=1", "-H", self.uri, "-x", "-D", self.root_dn, "-y", str(self.root_pw_file)],
            [whoami, "-o", "nettimeout=1", "-H", self.ldapi_uri, "-Y", "EXTERNAL", "-Q"],
        ]
        if self.ldaps_uri:
            probes.append([whoami, "-o", "nettimeout=1", "-H", self.ldaps_uri, "-x"])
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise SlapdError(f"slapd exited with status {code} before it was ready; {self.log_file}:\n{self.log_tail()}")
            try:
                for probe in probes:
                    proc = self._run(probe, timeout=5)
                    if proc.returncode != 0:
                        last = proc.stderr.strip()
                        break
                else:
                    return
            except subprocess.TimeoutExpired:
                last = "ldapwhoami timed out"
            if time.monotonic() > deadline:
                raise SlapdError(
                    f"slapd did not answer within {self.start_timeout} s ({last}); {self.log_file}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _apply_acls(self) -> None:
        if self.schema:
            # The shipped example, unchanged: the ACL tests test what users get.
            self.ldapmodify(ACL_EXAMPLE_LDIF.read_text(), external=True)
            # The test-only account with a tiny size limit, to show that a
            # truncated search is detected. Inserted as rule {1}, after the
            # example's {0} userPassword rule, so it cannot read passwords;
            # "by * break" lets everybody else fall through to the example's rules.
            self.ldapmodify(
                "dn: olcDatabase={1}mdb,cn=config\n"
                "changetype: modify\n"
                "add: olcAccess\n"
                f'olcAccess: {{1}}to dn.subtree="{self.people_dn}" by dn.exact="{self.limited_dn}" read by * break\n'
                "-\n"
                "add: olcLimits\n"
                f'olcLimits: dn.exact="{self.limited_dn}" '
                f"size.soft={self.limited_size_limit} size.hard={self.limited_size_limit} time=unlimited\n",
                external=True,
            )
        else:
            # Without our schema the example cannot load (it names our
            # attributes). Same identities, read-only, so tests can show how
            # ldapquota reports the missing schema.
            rules = [
                "to attrs=userPassword by self write by anonymous auth by * none",
                f'to dn.subtree="{self.people_dn}" by dn.exact="{self.ldapquota_dn}" read '
                f'by dn.exact="{self.exim_dn}" read by dn.exact="{self.limited_dn}" read by self read by * none',
                "to * by self read by * none",
            ]
            limits = [
                f'dn.exact="{self.ldapquota_dn}" size=unlimited time=unlimited',
                f'dn.exact="{self.exim_dn}" size=unlimited time=unlimited',
                f'dn.exact="{self.limited_dn}" size.soft={self.limited_size_limit} '
                f"size.hard={self.limited_size_limit} time=unlimited",
            ]
            self.ldapmodify(
                "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcAccess\n"
                + "".join(f"olcAccess: {{{i}}}{r}\n" for i, r in enumerate(rules))
                + "-\nadd: olcLimits\n"
                + "".join(f"olcLimits: {limit}\n" for limit in limits),
                external=True,
            )

    def _seed(self) -> None:
        services = []
        for dn, name, password, what in (
            (self.ldapquota_dn, "ldapquota", self.ldapquota_pw,
             "ldapquota service account; also its status entry (quotaSyncTime)"),
            (self.exim_dn, "exim", self.exim_pw, "MTA lookups, read-only"),
            (self.limited_dn, "limited", self.limited_pw, "test only: like ldapquota but size limit 3"),
        ):
            # applicationProcess is structural and takes the auxiliary
            # ldapQuotaStatus later, since the ldapquota entry is the status_dn.
            services.append(
                f"dn: {dn}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
                f"cn: {name}\ndescription: {what}\nuserPassword: {ssha(password)}\n"
            )
        self.ldapadd(
            f"dn: {self.suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
            f"dn: {self.people_dn}\nobjectClass: organizationalUnit\nou: people\n\n"
            f"dn: {self.services_dn}\nobjectClass: organizationalUnit\nou: services\n\n"
            + "\n".join(services)
        )

    # -- oracle: OpenLDAP command line tools ---------------------------------------

    def password_file(self, dn: str) -> Path:
        """The password file of one of the fixture's own identities."""
        try:
            return self._password_files[dn.lower()]
        except KeyError:
            raise KeyError(f"no password file known for {dn}; pass password_file=") from None

    def ldap_tool(
        self,
        tool: str,
        *args: str,
        as_dn: Optional[str] = ROOT_DN,
        password_file: Optional[Path] = None,
        external: bool = False,
        uri: Optional[str] = None,
        ca_file: Optional[Path] = None,
        input: Optional[str] = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run an ldap* client tool bound as ``as_dn`` and return the process.

        ``as_dn=None`` binds anonymously; ``external=True`` uses SASL EXTERNAL
        over ldapi (the cn=config administrator). The result is not checked.
        """
        argv = [_tool(tool)]
        if external:
            argv += ["-H", uri or self.ldapi_uri, "-Y", "EXTERNAL", "-Q"]
        else:
            argv += ["-H", uri or self.uri, "-x"]
            if as_dn is not None:
                argv += ["-D", as_dn, "-y", str(password_file or self.password_file(as_dn))]
        argv += list(args)
        return self._run(argv, input=input, timeout=timeout, env=self._tool_env(ca_file))

    def _checked(self, tool: str, *args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        proc = self.ldap_tool(tool, *args, **kw)  # type: ignore[arg-type]
        if check and proc.returncode != 0:
            raise LdapToolError([tool, *args], proc)
        return proc

    def ldapadd(self, ldif: str, *, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        """Add the entries in ``ldif`` (rootdn unless ``as_dn=``); LdapToolError if refused."""
        return self._checked("ldapadd", input=ldif, check=check, **kw)

    def ldapmodify(
        self, ldif: str, *, controls: Sequence[str] = (), check: bool = True, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Apply the change records in ``ldif``; ``controls`` are ``-e`` values
        such as ``"!noop"``. LdapToolError (with ``result_code``) if refused."""
        extra: list[str] = []
        for control in controls:
            extra += ["-e", control]
        return self._checked("ldapmodify", *extra, input=ldif, check=check, **kw)

    def ldapdelete(self, dn: str, *, recursive: bool = False, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        """Delete ``dn`` (and its subtree with ``recursive=True``)."""
        args = (["-r"] if recursive else []) + [dn]
        return self._checked("ldapdelete", *args, check=check, **kw)

    def ldapsearch(
        self,
        base: str,
        filter: str = "(objectClass=*)",
        attrs: Iterable[str] = (),
        scope: str = "sub",
        *,
        paged: Optional[int] = None,
        extra_args: Sequence[str] = (),
        **kw: object,
    ) -> Entries:
        """Search with ldapsearch and return ``{dn: {attr: [values]}}``.

        ``attrs`` may include ``+`` (operational) and ``*``; attribute names
        come back as the server spells them. ``paged=N`` uses the RFC 2696
        paged results control with page size N, without prompting. Any
        result other than success raises LdapToolError, whose ``entries``
        hold what was returned before the error (e.g. a size limit).
        """
        args = ["-LLL", "-o", "ldif-wrap=no", "-b", base, "-s", scope]
        if paged is not None:
            args += ["-E", f"pr={paged}/noprompt"]
        args += [*extra_args, filter, *attrs]
        proc = self.ldap_tool("ldapsearch", *args, **kw)  # type: ignore[arg-type]
        entries = dict(parse_ldif(proc.stdout))
        if proc.returncode != 0:
            raise LdapToolError(["ldapsearch", *args], proc, entries)
        return entries

    def get_entry(self, dn: str, attrs: Iterable[str] = ("*", "+"), **kw: object) -> Optional[dict[str, list[str]]]:
        """One entry's attributes (user and operational by default), or None if absent."""
        try:
            found = self.ldapsearch(dn, "(objectClass=*)", attrs, scope="base", **kw)
        except LdapToolError as exc:
            if exc.result_code == 32:  # noSuchObject
                return None
            raise
        return next(iter(found.values()), None)

    def slapcat(self) -> str:
        """The whole database as LDIF, read by slapcat straight from the mdb files."""
        proc = self._run([_tool("slapcat"), "-F", str(self.config_dir), "-b", self.suffix, "-o", "ldif-wrap=no"])
        if proc.returncode != 0:
            raise SlapdError(f"slapcat failed:\n{proc.stderr}")
        return proc.stdout

    def restore(self, ldif: str) -> None:
        """Restore a backup the way an operator does: stop slapd, empty the database,
        ``slapadd`` the LDIF (a slapcat, whose entryCSN and modifyTimestamp are kept as
        they are: the directory goes back in time), start slapd again on the same port."""
        self.stop()
        for name in ("data.mdb", "lock.mdb"):
            (self.data_dir / name).unlink(missing_ok=True)
        path = self.workdir / "restore.ldif"
        path.write_text(ldif)
        self._run_checked([_tool("slapadd"), "-q", "-F", str(self.config_dir), "-b", self.suffix, "-l", str(path)])
        self.start()

    # -- accounts -----------------------------------------------------------------

    def account_ldif(
        self,
        address: str,
        quota: Optional[Union[int, str]] = None,
        extra: Optional[Mapping[str, Values]] = None,
        uid: Optional[str] = None,
    ) -> tuple[str, str]:
        """``(dn, ldif)`` for an inetOrgPerson mail account under ou=people."""
        localpart = address.rpartition("@")[0] or address
        uid = uid if uid is not None else localpart
        dn = f"uid={escape_rdn_value(uid)},{self.people_dn}"
        attrs: dict[str, list[str]] = {"objectClass": ["inetOrgPerson"]}
        attrs["uid"] = [uid]
        attrs["cn"] = [address]
        attrs["sn"] = [localpart]
        attrs["mail"] = [address]
        if quota is not None:
            attrs["mailQuota"] = [str(quota)]
        for name, values in (extra or {}).items():
            if isinstance(values, (str, int)):
                values = [values]
            key = next((k for k in attrs if k.lower() == name.lower()), name)
            if key == "objectClass":
                attrs[key] += [str(v) for v in values if str(v).lower() not in {c.lower() for c in attrs[key]}]
            else:
                attrs[key] = [str(v) for v in values]
        names = {k.lower() for k in attrs}
        if names & _TEST_CLASS_ATTRS and "testmailaccount" not in {c.lower() for c in attrs["objectClass"]}:
            attrs["objectClass"].append("testMailAccount")
        if names & _PRODUCT_CLASS_ATTRS and "ldapquotastatus" not in {c.lower() for c in attrs["objectClass"]}:
            attrs["objectClass"].append("ldapQuotaStatus")
        lines = [ldif_line("dn", dn)]
        for name, values in attrs.items():
            lines += [ldif_line(name, v) for v in values]
        return dn, "\n".join(lines) + "\n"

    def add_account(
        self,
        address: str,
        quota: Optional[Union[int, str]] = None,
        extra: Optional[Mapping[str, Values]] = None,
        uid: Optional[str] = None,
    ) -> str:
        """Add a mail account (inetOrgPerson, ``mail=address``) and return its DN.

        ``uid`` defaults to the local part. ``quota`` becomes ``mailQuota``
        (test schema). ``extra`` adds attributes (a value or a list); the
        auxiliary classes ``testMailAccount`` (mailQuota, mailMessageStore)
        and ``ldapQuotaStatus`` (isOverQuota, ...) are added when needed, and
        ``extra={"objectClass": [...]}`` adds more classes.
        """
        dn, ldif = self.account_ldif(address, quota, extra, uid)
        self.ldapadd(ldif)
        return dn

    def add_accounts(
        self, addresses: Iterable[str], quota: Optional[Union[int, str]] = None,
        extra: Optional[Mapping[str, Values]] = None,
    ) -> list[str]:
        """Add many accounts with one ldapadd (fast); returns their DNs in order."""
        dns, blocks = [], []
        for address in addresses:
            dn, ldif = self.account_ldif(address, quota, extra)
            dns.append(dn)
            blocks.append(ldif)
        if blocks:
            self.ldapadd("\n".join(blocks))
        return dns

    def clear_people(self) -> None:
        """Delete every entry under ou=people (ou=people itself stays)."""
        children = self.ldapsearch(self.people_dn, "(objectClass=*)", ["1.1"], scope="one")
        if children:
            # DNs on stdin, one per line: one ldapdelete for any number of entries.
            self._checked("ldapdelete", "-r", input="\n".join(children) + "\n")

    def reset_status_entry(self) -> None:
        """Remove quotaSyncTime and the ldapQuotaStatus class from ldapquota's own entry."""
        entry = self.get_entry(self.ldapquota_dn, ["objectClass", "quotaSyncTime"]) or {}
        changes = []
        if any(k.lower() == "quotasynctime" for k in entry):
            changes.append("delete: quotaSyncTime\n-\n")
        classes = next((v for k, v in entry.items() if k.lower() == "objectclass"), [])
        if "ldapquotastatus" in {c.lower() for c in classes}:
            changes.append("delete: objectClass\nobjectClass: ldapQuotaStatus\n-\n")
        if changes:
            self.ldapmodify(f"dn: {self.ldapquota_dn}\nchangetype: modify\n" + "".join(changes))

    def reset(self) -> None:
        """Per-test isolation: empty ou=people and a pristine status entry."""
        self.clear_people()
        if self.schema:
            self.reset_status_entry()

    # -- proving what was (not) written -----------------------------------------

    def entry_meta(self, dn: str) -> dict[str, str]:
        """``entryCSN``, ``modifyTimestamp``, ``modifiersName`` of one entry.

        entryCSN changes on every successful write to the entry (microsecond
        resolution plus a counter), so equal values before and after an
        operation prove that it wrote nothing there.
        """
        entry = self.get_entry(dn, ["entryCSN", "modifyTimestamp", "modifiersName"])
        if entry is None:
            raise KeyError(dn)
        return {k: v[0] for k, v in entry.items()}

    def latest_csn(self) -> str:
        """The newest entryCSN in the database: changes whenever anything is written."""
        found = self.ldapsearch(self.suffix, "(objectClass=*)", ["entryCSN"])
        return max(v[0] for attrs in found.values() for k, v in attrs.items() if k.lower() == "entrycsn")

    def log_mark(self) -> int:
        """A position in slapd.log; pass it to writes_since()."""
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def writes_since(self, mark: int, under: Optional[str] = None) -> list[tuple[str, str]]:
        """Successful writes logged since ``mark``: ``[(op, dn)]`` in log order.

        ``op`` is ADD, MOD, DEL or MODRDN; only operations whose RESULT was
        success (err=0) count. ``under`` keeps only DNs in that subtree.
        slapd logs a RESULT just after sending it, so this first makes a
        marker request and waits until slapd has logged it: everything a
        client saw finish before the call is then in the log.
        """
        self._log_barrier()
        with open(self.log_file, "rb") as log:
            log.seek(mark)
            text = log.read().decode("utf-8", "replace")
        pending: dict[tuple[str, str], tuple[str, str]] = {}
        writes: list[tuple[str, str]] = []
        for line in text.splitlines():
            op = re.search(r'conn=(\d+) op=(\d+) (ADD|MOD|DEL|MODRDN) dn="(.*)"$', line)
            if op:
                pending[(op.group(1), op.group(2))] = (op.group(3), op.group(4))
                continue
            result = re.search(r"conn=(\d+) op=(\d+) RESULT tag=\d+ err=(\d+)", line)
            if result:
                done = pending.pop((result.group(1), result.group(2)), None)
                if done and result.group(3) == "0":
                    writes.append(done)
        if under is not None:
            suffix = "," + under.lower()
            writes = [(op, dn) for op, dn in writes if dn.lower() == under.lower() or dn.lower().endswith(suffix)]
        return writes

    def _log_barrier(self, timeout: float = 10.0) -> None:
        token = secrets.token_hex(8)
        self.ldap_tool("ldapsearch", "-LLL", "-b", "", "-s", "base", f"(description=barrier-{token})", "1.1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_file.read_bytes().decode("utf-8", "replace")
            found = re.search(rf"conn=(\d+) op=(\d+) SRCH base=.*barrier-{token}", text)
            if found and re.search(rf"conn={found.group(1)} op={found.group(2)} (SEARCH )?RESULT", text):
                return
            time.sleep(0.05)
        raise SlapdError(f"slapd did not log the barrier search within {timeout} s (is it logging stats?)")
