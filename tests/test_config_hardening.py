"""Hostile config files (docs/contract.md §7): a FIFO, a device, /dev/zero, a 100 MB file, a
YAML alias bomb. Each is refused with 78 at once, never read to its end, and the message
shows at most a short excerpt of a value. The CLI cases run the real program in a child
process with a timeout (a hang fails the test instead of hanging it) and a memory limit (a
runaway read ends in MemoryError, exit 70, instead of eating the machine)."""

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, alias_bomb, config_dict, make_maildir, run_cli, write_config

from ldapquota.config import load_config, parse_config
from ldapquota.config_files import CONFIG_MAX_BYTES, SECRET_MAX_BYTES
from ldapquota.errors import ConfigError
from ldapquota.quota import parse_limit_value

MINIMAL = """\
ldap:
  uri: ldap://127.0.0.1:389
  base_dn: ou=people,dc=example,dc=org
mailboxes:
  root: /var/vmail
"""

HUNDRED_MB = 100 * 1000 * 1000


def with_secret(path) -> str:
    return MINIMAL.replace("  base_dn:", f"  bind_dn: cn=ldapquota,dc=example,dc=org\n  bind_password_file: {path}\n  base_dn:")


def bytes_read() -> int:
    """What this process has read so far (the kernel's count, whatever did the reading)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def sparse_file(path: Path, head: str, size: int) -> Path:
    """A real file of ``size`` bytes on disk, ``head`` first (sparse: cheap to make)."""
    with open(path, "w") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def run_limited(args, timeout=30) -> subprocess.CompletedProcess:
    """``python -m ldapquota ARGS`` with at most 1 GiB of address space."""

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = {k: v for k, v in os.environ.items() if k != "LDAPQUOTA_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "ldapquota", *args], capture_output=True, text=True, timeout=timeout,
        env=env, cwd=str(REPO), stdin=subprocess.DEVNULL, preexec_fn=limit_memory,
    )


def refused(text: str, path="/etc/ldapquota/test.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    assert info.value.exit_code == 78
    return str(info.value)


# --------------------------------------------------------------------------- the config file


def test_a_fifo_as_the_config_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "ldapquota.yaml"
    os.mkfifo(fifo)  # no writer: opening it for reading the usual way waits for ever
    result = run_limited(["-c", str(fifo), "--check-config"], timeout=20)
    assert result.returncode == 78, result.stderr
    assert f"{fifo} is not a regular file (it is a FIFO)" in result.stderr


def test_a_100_mb_config_file_is_refused_without_being_read(tmp_path):
    big = sparse_file(tmp_path / "big.yaml", MINIMAL + "#", HUNDRED_MB)
    before = bytes_read()
    with pytest.raises(ConfigError) as info:
        load_config(str(big))
    assert bytes_read() - before < CONFIG_MAX_BYTES + 64 * 1024
    assert f"config file {big} is {HUNDRED_MB} bytes; at most {CONFIG_MAX_BYTES} are accepted" == str(info.value)
    assert info.value.exit_code == 78


def test_dev_zero_as_the_config_file_is_refused():
    result = run_limited(["-c", "/dev/zero", "--check-config"], timeout=30)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "config file /dev/zero is not a regular file (it is a character device)" in result.stderr


def test_a_config_file_reached_through_a_symlink_is_read(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text(MINIMAL)
    link = tmp_path / "ldapquota.yaml"
    link.symlink_to(real)
    assert load_config(str(link)).ldap.uris == ("ldap://127.0.0.1:389",)


def test_windows_line_ends_still_read(tmp_path):
    path = tmp_path / "crlf.yaml"
    path.write_bytes(MINIMAL.replace("\n", "\r\n").encode())
    assert load_config(str(path)).mailboxes.root == "/var/vmail"


# --------------------------------------------------------------------------- YAML aliases


def test_an_alias_bomb_is_refused_with_78_naming_line_and_key(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(MINIMAL.replace("ldap://127.0.0.1:389", alias_bomb()))
    assert len(path.read_bytes()) < 1000
    result = run_limited(["-c", str(path), "--check-config"], timeout=30)
    assert result.returncode == 78, result.stderr[-2000:]
    assert f"{path}, line 2: ldap.uri: YAML aliases expand beyond" in result.stderr
    assert len(result.stderr) < 500, result.stderr[:2000]


def test_a_recursive_alias_is_refused():
    message = refused(MINIMAL.replace("ldap://127.0.0.1:389", "&a [*a]"))  # a list that holds itself
    assert "ldap.uri: nested more than 20 levels deep" in message and "line 2" in message


def test_aliases_of_reasonable_size_are_still_allowed():
    text = MINIMAL.replace("  base_dn:", "  bind_dn: &service cn=ldapquota,dc=example,dc=org\n  base_dn:")
    text += "mta:\n  bind_dn: *service\n"
    config = parse_config(text)
    assert config.mta.bind_dn == config.ldap.bind_dn == "cn=ldapquota,dc=example,dc=org"


def test_nesting_without_end_is_refused_not_a_crash():
    # [[[[...]]]]: PyYAML's composer recurses once per level (RecursionError, exit 70, before).
    message = refused(MINIMAL.replace("ldap://127.0.0.1:389", "[" * 100_000 + "]" * 100_000))
    assert "nested too deeply" in message
    message = refused(MINIMAL.replace("ldap://127.0.0.1:389", "[" * 30 + "]" * 30))
    assert "ldap.uri: nested more than 20 levels deep" in message and "line 2" in message


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "old, new",
    [
        ("ldap://127.0.0.1:389", "x" * 100_000),  # a string: not a URI
        ("/var/vmail", "[" + ", ".join(["[1, 2]"] * 3000) + "]"),  # a list: not a path
        ("/var/vmail", "relative/" + "y" * 100_000),  # not an absolute path
        ("ou=people,dc=example,dc=org", "=" * 100_000),  # not a DN (ldap3's reason, cut)
    ],
)
def test_an_error_message_shows_only_an_excerpt_of_the_value(old, new):
    message = refused(MINIMAL.replace(old, new))
    assert len(message) < 400, message[:1000]
    assert "…" in message or "..." in message  # cut short, or reprlib's elision of a list


def test_a_long_key_name_is_shown_as_an_excerpt():
    message = refused(MINIMAL + "z" * 1000 + ": 1\n")  # YAML allows 1024 characters
    assert len(message) < 400 and "…" in message


# --------------------------------------------------------------------------- secret files


def test_a_fifo_as_the_password_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "bind.secret"
    os.mkfifo(fifo)
    config = tmp_path / "ldapquota.yaml"
    config.write_text(with_secret(fifo))
    result = run_limited(["-c", str(config), "--sync"], timeout=20)
    assert result.returncode == 78, result.stderr
    assert re.search(rf"line 4: ldap.bind_password_file: {fifo} is not a regular file \(it is a FIFO\)", result.stderr)


def test_dev_zero_as_the_password_file_is_refused_not_read_until_memory_ends(tmp_path):
    config = tmp_path / "ldapquota.yaml"
    config.write_text(with_secret("/dev/zero"))
    result = run_limited(["-c", str(config), "--sync"], timeout=30)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "line 4: ldap.bind_password_file: /dev/zero is not a regular file (it is a character device)" in result.stderr


def test_a_huge_password_file_is_refused_without_being_read(tmp_path):
    secret = sparse_file(tmp_path / "bind.secret", "s3cret\n", HUNDRED_MB)
    before = bytes_read()
    message = refused(with_secret(secret))
    assert bytes_read() - before < 64 * 1024
    assert f"ldap.bind_password_file: {secret} is {HUNDRED_MB} bytes; at most {SECRET_MAX_BYTES} are accepted" in message
    assert "s3cret" not in message


def test_a_password_file_one_byte_over_the_limit_is_refused_and_at_the_limit_read(tmp_path):
    secret = tmp_path / "bind.secret"
    secret.write_text("p" * SECRET_MAX_BYTES)
    assert parse_config(with_secret(secret)).ldap.bind_password == "p" * SECRET_MAX_BYTES
    secret.write_text("p" * (SECRET_MAX_BYTES + 1))
    assert "are accepted" in refused(with_secret(secret))


def test_a_password_file_through_a_symlink_is_read_a_symlink_to_a_fifo_refused(tmp_path):
    real = tmp_path / "secrets" / "bind"
    real.parent.mkdir()
    real.write_text("s3cret\r\n")
    link = tmp_path / "bind.secret"
    link.symlink_to(real)
    assert parse_config(with_secret(link)).ldap.bind_password == "s3cret"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link.unlink()
    link.symlink_to(fifo)
    config = tmp_path / "ldapquota.yaml"
    config.write_text(with_secret(link))
    result = run_limited(["-c", str(config), "--check-config"], timeout=20)  # a child: a hang cannot hang us
    assert result.returncode == 78, result.stderr
    assert f"{link} is not a regular file (it is a FIFO)" in result.stderr


def test_a_directory_as_the_password_file_is_refused(tmp_path):
    assert f"{tmp_path} is not a regular file (it is a directory)" in refused(with_secret(tmp_path))


def test_the_ca_file_must_be_a_regular_file(tmp_path):
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    text = MINIMAL.replace("  base_dn:", f"  ca_file: {fifo}\n  base_dn:")
    assert f"ldap.ca_file: {fifo} is not a regular file (it is a FIFO)" in refused(text)


def test_the_mta_password_file_is_checked_when_it_is_on_this_host(tmp_path):
    text = MINIMAL + "mta:\n  bind_dn: cn=exim,dc=example,dc=org\n  bind_password_file: {}\n"
    assert parse_config(text.format(tmp_path / "on-the-mx-host-only")).mta.bind_password_file
    assert "mta.bind_password_file: /dev/zero is not a regular file" in refused(text.format("/dev/zero"))


# --------------------------------------------------------------------------- quota values


def test_a_31_digit_quota_is_too_large_not_a_syntax_error():
    with pytest.raises(ValueError, match=r"^too large \(more than 30 digits\)$"):
        parse_limit_value("1" * 31, 1)
    assert parse_limit_value("1" * 30, 1).bytes == int("1" * 30)
    message = refused(MINIMAL + f"accounts:\n  default_quota: {'9' * 31}S,100C\n")
    assert f"accounts.default_quota: '{'9' * 31}S' is too large (more than 30 digits)" in message


# --------------------------------------------------------------------------- LDAP values


@pytest.mark.integration
def test_bad_quota_values_in_ldap_are_reported_by_address(ldap, mail_root, tmp_path):
    """docs/contract.md §7: messages name the account by its address; a 31-digit quota is
    "too large", not a syntax error."""
    ldap.add_account("garbage@example.org", quota="lots")
    ldap.add_account("huge@example.org", quota="1" * 31)
    ldap.add_account("fine@example.org", quota="100000")
    for address in ("garbage@example.org", "huge@example.org", "fine@example.org"):
        make_maildir(mail_root, address)
    config = write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root))

    result = run_cli(["-c", str(config), "--sync"])

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "mailQuota" in line]
    assert len(errors) == 2, result.stderr
    assert any(re.search(r"\bgarbage@example\.org: mailQuota 'lots': 'lots' is not <number>S or <number>C; flag kept", e) for e in errors), errors
    assert any(re.search(rf"\bhuge@example\.org: mailQuota '{'1' * 31}': too large \(more than 30 digits\)", e) for e in errors), errors
    assert not any("uid=" in line for line in errors), errors
