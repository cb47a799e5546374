"""The quick-start demo: a throwaway slapd, mail store and Exim, a real sync, the result.

Everything lives in a temporary directory and on 127.0.0.1 (free ports); nothing on the
machine is changed. Run through ``scripts/demo``, which installs what is needed first.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import config_dict, maildirsize_text, make_maildir, write_config  # noqa: E402
from servers.exim import Exim, give_to, secret_for_exim  # noqa: E402
from servers.slapd import Slapd  # noqa: E402

from ldapquota.exim import replace_blocks, split_blocks  # noqa: E402

MB = 1000 * 1000

# address → (mailQuota attribute or None, how the mailbox is filled, what to expect)
ACCOUNTS = {
    "alice@example.org": ("10000000", "maildirsize: 2 MB used", "under quota"),
    "bob@example.org": ("5000000", "maildirsize: 6 MB used", "over quota (bytes)"),
    "carol@example.org": ("100000000S,20C", "20 messages, no maildirsize (walked)", "over quota (message count)"),
    "dave@example.org": (None, "no mailQuota: default_quota 1GB applies", "under quota"),
    "erin@example.org": ("100000000", "maildirsize: 95 MB used", "near full: quotaFreeBytes published"),
}


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(argv, **kw) -> subprocess.CompletedProcess:
    shown = " ".join(str(a) for a in argv)
    print(f"$ {shown}", flush=True)
    result = subprocess.run([str(a) for a in argv], text=True, capture_output=True, **kw)
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    print(f"(exit {result.returncode})", flush=True)
    return result


def fill_mailboxes(root: Path) -> None:
    make_maildir(root, "alice@example.org", maildirsize=maildirsize_text("10000000S", (2 * MB, 40)))
    make_maildir(root, "bob@example.org", maildirsize=maildirsize_text("5000000S", (6 * MB, 120)))
    make_maildir(root, "carol@example.org", messages=[(f"17000000{n:02d}.M1P1.demo,S=1500:2,S", 1500) for n in range(20)])
    make_maildir(root, "dave@example.org", maildirsize=maildirsize_text("0S", (30 * MB, 300)))
    make_maildir(root, "erin@example.org", maildirsize=maildirsize_text("100000000S", (95 * MB, 900)))


def start_exim(slapd: Slapd, workdir: Path, root: Path, config: Path, ldapquota: list, env: dict) -> Exim:
    """A real Exim (exim4-daemon-heavy) on a free loopback port: examples/exim/exim4.conf
    with the three blocks that `ldapquota --exim-config` prints for this config."""
    banner("ldapquota --exim-config (the blocks pasted into examples/exim/exim4.conf)")
    secret = secret_for_exim(slapd.exim_pw)
    with open(config, "a") as handle:
        handle.write(f"mta:\n  bind_dn: {slapd.exim_dn}\n  bind_password_file: {secret}\n")
    blocks = run(ldapquota + ["--exim-config"], env=env, cwd=REPO).stdout
    aliases = workdir / "aliases"
    aliases.write_text("postmaster@example.org: bob@example.org\n")
    workdir.chmod(0o755)
    aliases.chmod(0o644)
    for path in [root, *root.rglob("*")]:
        give_to(path, "mail")
    macros = {
        "MAIL_DOMAINS": "example.org",
        "LDAP_SERVER": slapd.uri,
        "LDAP_BASE": slapd.people_dn,
        "LDAP_BIND": 'user="%s" pass=${quote:${readfile{%s}{}}}' % (slapd.exim_dn, secret),
        "ALIAS_FILE": str(aliases),
        "VMAIL_ROOT": str(root),
        "VMAIL_USER": "mail",
    }
    exim = Exim(replace_blocks((REPO / "examples/exim/exim4.conf").read_text(), split_blocks(blocks)), macros, name="demo-exim")
    exim.start()
    print(f"Exim listening on 127.0.0.1:{exim.port}")
    return exim


def smtp_dialogue(exim: Exim) -> None:
    """One SMTP session per recipient (Exim caches lookups within a session)."""
    banner("SMTP: an over-quota recipient is refused at RCPT TO, before any data is sent")
    tries = [
        ("alice@example.org", None, "under quota"),
        ("bob@example.org", None, "over quota"),
        ("postmaster@example.org", None, "an alias of bob: checked after alias expansion"),
        ("carol@example.org", None, "over its message count"),
        ("erin@example.org", 1_000_000, "near full: 1 MB declared, 5 MB free"),
        ("erin@example.org", 6_000_000, "near full: 6 MB declared, only 5 MB free"),
    ]
    for recipient, size, why in tries:
        client = exim.smtp()
        try:
            options = [f"SIZE={size}"] if size else []
            client.mail("sender@client.test", options)
            code, text = client.rcpt(recipient)
        finally:
            client.close()
        declared = f" SIZE={size}" if size else ""
        print(f"C: MAIL FROM:<sender@client.test>{declared}")
        print(f"C: RCPT TO:<{recipient}>        ({why})")
        print(f"S: {code} {text.decode()}\n")


def main() -> int:
    keep = "--keep" in sys.argv
    workdir = Path(tempfile.mkdtemp(prefix="ldapquota-demo-"))
    slapd = Slapd(workdir / "slapd")
    try:
        banner("a private slapd on 127.0.0.1 with the shipped schema (schema/ldapquota.ldif)")
        slapd.start()
        print(f"slapd listening on {slapd.uri}, data in {workdir}")
        for address, (quota, filling, expected) in ACCOUNTS.items():
            slapd.add_account(address, quota=quota)
            print(f"  {address:20s} mailQuota={quota or '-':16s} {filling:42s} -> expect {expected}")

        banner("sample maildirs under a throwaway mail root")
        root = workdir / "vmail"
        fill_mailboxes(root)
        config = write_config(
            workdir / "ldapquota.yaml",
            config_dict(slapd, root, accounts={"default_quota": "1GB"}, policy={"max_changes": "50%", "free_margin": "10MB"}),
        )
        print(config.read_text())

        ldapquota = [sys.executable, "-m", "ldapquota", "-c", config]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        banner("ldapquota --check-config")
        run(ldapquota + ["--check-config"], env=env, cwd=REPO)
        banner("ldapquota --sync --dry-run (writes nothing)")
        run(ldapquota + ["--sync", "--dry-run"], env=env, cwd=REPO)
        banner("ldapquota --sync")
        run(ldapquota + ["--sync"], env=env, cwd=REPO)

        banner("what the directory now says (ldapsearch, the MTA's view)")
        run(
            ["ldapsearch", "-LLL", "-x", "-H", slapd.uri, "-D", slapd.exim_dn, "-y", slapd.exim_pw_file,
             "-b", slapd.people_dn, "(mail=*)", "mail", "isOverQuota", "quotaFreeBytes"]
        )
        banner("ldapquota --show bob@example.org")
        run(ldapquota + ["--show", "bob@example.org"], env=env, cwd=REPO)
        banner("a second --sync: nothing changed, so no account is written")
        run(ldapquota + ["--sync"], env=env, cwd=REPO)

        exim = start_exim(slapd, workdir, root, config, ldapquota, env)
        try:
            smtp_dialogue(exim)
        finally:
            exim.cleanup()
        return 0
    finally:
        slapd.stop()
        if keep:
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
