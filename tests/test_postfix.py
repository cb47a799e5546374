"""examples/postfix/ldap-overquota.cf, queried by Postfix's own ``postmap -q`` against the
test slapd.

Debian's postfix conflicts with the exim4 packages the other tests need, so Postfix is not
installed: the ``postfix`` and ``postfix-ldap`` packages are unpacked (``apt-get download``
+ ``dpkg-deb -x``) into a cache directory and their ``postmap`` runs with a private config
directory (``-c``) and ``LD_LIBRARY_PATH`` pointing at the unpacked libraries. A Postfix
that is installed (``postconf -m`` lists ldap) is used as it is. ``POSTFIX_ROOT`` may name
an unpacked tree prepared beforehand (CI can do that once).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Dict, Optional

import pytest
from helpers import REPO

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "postfix" / "ldap-overquota.cf"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ldapquota-tests" / "postfix"


class Postmap:
    """``postmap -q KEY ldap:TABLE`` from an installed or an unpacked Postfix."""

    def __init__(self, binary: str, confdir: Path, env: Dict[str, str]) -> None:
        self.binary = binary
        self.confdir = confdir
        self.env = env

    def query(self, key: str, table: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, "-c", str(self.confdir), "-q", key, f"ldap:{table}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )


def _installed() -> Optional[str]:
    postconf = shutil.which("postconf", path="/usr/sbin:/usr/bin")
    postmap = shutil.which("postmap", path="/usr/sbin:/usr/bin")
    if postconf and postmap:
        maps = subprocess.run([postconf, "-m"], capture_output=True, text=True).stdout.split()
        if "ldap" in maps:
            return postmap
    return None


def _unpacked() -> Optional[Path]:
    """A directory holding usr/sbin/postmap and usr/lib/postfix/postfix-ldap.so."""
    for root in filter(None, [os.environ.get("POSTFIX_ROOT"), str(CACHE / "root")]):
        if (Path(root) / "usr/sbin/postmap").exists() and (Path(root) / "usr/lib/postfix/postfix-ldap.so").exists():
            return Path(root)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    download = CACHE / "debs"
    download.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run(
        ["apt-get", "download", "postfix", "postfix-ldap"], cwd=download, capture_output=True, text=True, timeout=300
    )
    debs = sorted(download.glob("postfix*.deb"))
    if fetched.returncode != 0 or len(debs) < 2:
        return None
    root = CACHE / "root"
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    return root


@pytest.fixture(scope="module")
def postmap(tmp_path_factory) -> Postmap:
    confdir = tmp_path_factory.mktemp("postfix-conf")
    installed = _installed()
    if installed:
        (confdir / "main.cf").write_text("compatibility_level = 3.6\n")
        return Postmap(installed, confdir, dict(os.environ))
    root = _unpacked()
    if root is None:
        message = "Postfix with LDAP: neither installed nor unpackable (apt-get download postfix postfix-ldap)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    libs = root / "usr/lib/postfix"
    shutil.copy(root / "usr/share/postfix/dynamicmaps.cf", confdir / "dynamicmaps.cf")
    # Postfix insists that its users exist and differ: mail_owner must not be
    # default_privs (nobody), and setgid_group must be neither's group.
    group = next(g for g in ("postdrop", "daemon", "adm", "sys") if _group_exists(g))
    (confdir / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        f"shlib_directory = {libs}\n"
        f"meta_directory = {confdir}\n"
        f"daemon_directory = {libs / 'sbin'}\n"
        "mail_owner = mail\n"
        f"setgid_group = {group}\n"
    )
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs))
    return Postmap(str(root / "usr/sbin/postmap"), confdir, env)


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def table_for(slapd, tmp_path: Path, server: Optional[str] = None) -> Path:
    """The shipped table, pointed at the test slapd with the test's password."""
    text = EXAMPLE.read_text()
    replacements = {
        "server_host": server or slapd.uri,
        "bind_dn": slapd.exim_dn,
        "bind_pw": slapd.exim_pw,
        "search_base": slapd.people_dn,
    }
    for key, value in replacements.items():
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert count == 1, key
    table = tmp_path / "ldap-overquota.cf"
    table.write_text(text)
    return table


@pytest.fixture
def accounts(ldap):
    ldap.add_account("full@example.org", extra={"isOverQuota": "TRUE"})
    ldap.add_account("bob@example.org", extra={"isOverQuota": "TRUE"})
    ldap.add_account("fine@example.org", extra={"isOverQuota": "FALSE", "quotaFreeBytes": 1000})
    ldap.add_account("plain@example.org")
    return ldap


def test_the_table_refuses_only_over_quota_accounts(accounts, postmap, tmp_path):
    table = table_for(accounts, tmp_path)
    for key in ("full@example.org", "FULL@Example.ORG", "bob@example.org"):
        result = postmap.query(key, table)
        assert (result.returncode, result.stdout.strip()) == (0, "452 4.2.2 Mailbox full"), (key, result.stderr)
    for key in ("fine@example.org", "plain@example.org", "nobody@example.org", "example.org", "full@other.test"):
        result = postmap.query(key, table)
        assert (result.returncode, result.stdout) == (1, ""), (key, result.stderr)
        assert "fatal" not in result.stderr and "warning" not in result.stderr, (key, result.stderr)


def test_the_address_is_escaped_in_the_filter(accounts, postmap, tmp_path):
    table = table_for(accounts, tmp_path)
    for key in ("b*@example.org", "*@example.org", "x)(mail=*@example.org", "bob@example.org)(mail=*", "b\\2a@example.org"):
        result = postmap.query(key, table)
        assert (result.returncode, result.stdout) == (1, ""), (key, result.stdout, result.stderr)
        assert "fatal" not in result.stderr, (key, result.stderr)


def test_a_directory_outage_is_a_lookup_error_not_a_miss(accounts, postmap, tmp_path):
    """smtpd turns a table error into 451 4.3.0 (fail closed); postmap reports it as fatal."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"ldap://127.0.0.1:{sock.getsockname()[1]}"
    result = postmap.query("full@example.org", table_for(accounts, tmp_path, server=dead))
    assert result.returncode != 0 and result.stdout == ""
    assert "query error" in result.stderr or "fatal" in result.stderr, result.stderr
    assert accounts.exim_pw not in result.stderr
