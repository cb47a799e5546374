"""``promtool check metrics``: the Prometheus project's own linter for the text format.

Debian's ``prometheus`` package carries promtool, but installing it also starts a
Prometheus server: instead its .deb is fetched with ``apt-get download`` and only
``usr/bin/promtool`` (a static binary) is unpacked into a cache directory, as
tests/test_postfix.py does for postmap. A promtool on PATH, or named by ``$PROMTOOL``,
is used as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ldapquota-tests" / "promtool"


def find_promtool() -> Optional[str]:
    for candidate in (os.environ.get("PROMTOOL"), shutil.which("promtool"), str(CACHE / "usr/bin/promtool")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return _unpack()


def _unpack() -> Optional[str]:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    download = CACHE / "debs"
    download.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run(["apt-get", "download", "prometheus"], cwd=download, capture_output=True, text=True,
                             timeout=600)
    debs = sorted(download.glob("prometheus_*.deb"))
    if fetched.returncode != 0 or not debs:
        return None
    # dpkg-deb --fsys-tarfile | tar: only the one member, not the whole server.
    tarball = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[-1])], capture_output=True, check=True,
                             timeout=300).stdout
    subprocess.run(["tar", "-x", "-C", str(CACHE), "./usr/bin/promtool"], input=tarball, check=True, timeout=300)
    for deb in debs:
        deb.unlink()
    binary = CACHE / "usr/bin/promtool"
    return str(binary) if os.access(binary, os.X_OK) else None


class Promtool:
    def __init__(self, binary: str):
        self.binary = binary

    def check(self, exposition: bytes) -> None:
        """Raise AssertionError with promtool's findings unless the exposition is clean."""
        result = subprocess.run([self.binary, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
        problems = (result.stdout + result.stderr).decode(errors="replace").strip()
        assert result.returncode == 0 and not problems, f"promtool check metrics: {problems}\n---\n{exposition.decode()}"
