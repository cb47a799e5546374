"""A provider/consumer pair of private slapds: OpenLDAP syncrepl, refreshAndPersist.

The provider is a :class:`~servers.slapd.Slapd` with the syncprov overlay on its
database; the consumer replicates the whole suffix from it and refers writes to it
(``olcUpdateRef``), as a read-only replica beside an MX does. Both load the shipped
schema and ACL (cn=config is not replicated: each server has its own). The consumer
binds to the provider as the provider's root DN, and every identity (cn=ldapquota,
cn=exim) has the provider's passwords on both, since the entries are replicated.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from servers.slapd import Slapd, SlapdError


class ProviderSlapd(Slapd):
    """A slapd whose database carries the syncprov overlay."""

    def _global_ldif(self) -> str:
        text = super()._global_ldif()
        if "olcModuleLoad: back_mdb\n" in text:
            return text.replace("olcModuleLoad: back_mdb\n", "olcModuleLoad: back_mdb\nolcModuleLoad: syncprov\n")
        return text  # modules built in

    def _databases_ldif(self) -> str:
        return (
            super()._databases_ldif()
            + "olcDbIndex: entryUUID eq\n"
            + "\ndn: olcOverlay=syncprov,olcDatabase={1}mdb,cn=config\n"
            "objectClass: olcOverlayConfig\n"
            "objectClass: olcSyncProvConfig\n"
            "olcOverlay: syncprov\n"
            "olcSpCheckpoint: 100 1\n"
        )


class ConsumerSlapd(Slapd):
    """A read-only replica of ``provider`` (syncrepl refreshAndPersist)."""

    #: Seconds to wait for the first refresh to bring the base tree.
    refresh_timeout = 30.0

    def __init__(self, workdir: Path, provider: Slapd) -> None:
        self.provider = provider
        super().__init__(workdir)
        # The replicated entries carry the provider's passwords.
        for name in ("root", "ldapquota", "exim", "limited"):
            setattr(self, f"{name}_pw", getattr(provider, f"{name}_pw"))
            setattr(self, f"{name}_pw_file", getattr(provider, f"{name}_pw_file"))
        self._password_files = dict(provider._password_files)

    def _databases_ldif(self) -> str:
        provider = self.provider
        return (
            super()._databases_ldif()
            + "olcDbIndex: entryUUID eq\n"
            + f"olcSyncrepl: rid=001 provider={provider.uri} bindmethod=simple binddn=\"{provider.root_dn}\" "
            f"credentials={provider.root_pw} searchbase=\"{provider.suffix}\" scope=sub type=refreshAndPersist "
            "retry=\"1 +\" timeout=3 network-timeout=3 schemachecking=off\n"
            f"olcUpdateRef: {provider.uri}\n"
        )

    def _seed(self) -> None:
        """The base tree arrives by replication: wait for it instead of adding it."""
        wait_for(lambda: self.get_entry(self.ldapquota_dn, ("cn",)) is not None,
                 self.refresh_timeout, f"the consumer to replicate {self.ldapquota_dn}")


def wait_for(condition: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Raises SlapdError."""
    started = time.monotonic()
    last: Optional[BaseException] = None
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except (SlapdError, RuntimeError) as exc:
            last = exc
        time.sleep(step)
    raise SlapdError(f"timed out after {timeout:g}s waiting for {what}" + (f" ({last})" if last else ""))
