"""The account refresh works in the LDAP server's time, whatever this host's clock says."""

import subprocess
import sys

import pytest
from helpers import REPO, config_dict, write_config
from test_daemon import FAST, mailbox, wait_flag, wait_until

pytestmark = pytest.mark.integration

# Run the daemon with its clock shifted (the host ahead of, or behind, the LDAP server).
SHIFTED = (
    "import sys, time, runpy; offset = float(sys.argv.pop(1)); real = time.time; "
    "time.time = lambda: real() + offset; sys.argv[0] = 'ldapquota'; "
    "runpy.run_module('ldapquota', run_name='__main__')"
)


@pytest.mark.parametrize("offset", [400.0, -400.0])
def test_new_accounts_are_picked_up_with_the_host_clock_off_by_minutes(ldap, mail_root, tmp_path, offset):
    ldap.add_account("first@example.org", quota="100000")
    mailbox(mail_root, "first@example.org", 0, 10)
    daemon = dict(FAST, pidfile=str(tmp_path / "ldapquota.pid"))
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root, daemon=daemon))
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SHIFTED, str(offset), "-c", str(path), "--foreground"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO),
        )
    try:
        wait_until(lambda: "ready:" in log_path.read_text(), 30, "the daemon to be ready")
        # A new account whose mailbox is already full: only the account refresh finds it.
        mailbox(mail_root, "new@example.org", 0, 5000)
        ldap.add_account("new@example.org", quota="1000")
        try:
            wait_flag(ldap, "new@example.org", "TRUE", timeout=10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()}") from None
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0
