"""SIGHUP: re-read the config file. A file that is refused is logged and the running
configuration kept; what only a restart can change is said so."""

import logging
from typing import TYPE_CHECKING

from ldapquota import log as logsetup
from ldapquota.config import load_config
from ldapquota.errors import ConfigError
from ldapquota.service.table import make_layout

if TYPE_CHECKING:
    from ldapquota.service.loop import Service

log = logging.getLogger(__name__)


def reload_config(service: "Service") -> None:
    path = service.config_path
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload: %s; keeping the running configuration", exc)
        return
    old = service.config
    try:
        handler = logsetup.make_handler(new.logging.target)
    except OSError as exc:
        log.error("reload: logging.target %s: %s; keeping the current log target", new.logging.target, exc)
    else:
        logsetup.configure(new.logging.target, new.logging.level, service.verbosity, handler=handler)
    for key in ("pidfile", "user", "group"):
        if getattr(new.daemon, key) != getattr(old.daemon, key):
            log.warning("reload: daemon.%s changed; that takes a restart", key)
    if new.metrics.listen != old.metrics.listen:
        log.warning("reload: metrics.listen changed; that takes a restart")
    service.config = new
    now = service.clock()
    if new.ldap != old.ldap:
        service.link.reset(service.new_store)
    # The sources' own settings (cyrus:, dovecot:) decide measurements too.
    measuring = (new.ldap, new.accounts, new.mailboxes, new.policy, new.cyrus, new.dovecot)
    if measuring != (old.ldap, old.accounts, old.mailboxes, old.policy, old.cyrus, old.dovecot):
        service.evaluator.close()
        service.evaluator = service.new_evaluator(new)
        service.table.layout = make_layout(service.evaluator.attributes)
        service.pending.max_changes = new.policy.max_changes
        service.full_sync.soon(now)
    daemon = new.daemon
    service.debouncer.delay = daemon.debounce
    service.full_sync.change_interval(daemon.interval, now)
    if service.refresh.due_at != float("inf"):
        service.refresh.change_interval(daemon.account_refresh, now)
    else:
        service.refresh.interval = daemon.account_refresh
    service.recheck.change_interval(daemon.over_recheck, now)
    service.trust.change_interval(daemon.account_refresh, now)
    if (daemon.watch, daemon.poll_interval, new.mailboxes, new.cyrus) != (
        old.daemon.watch, old.daemon.poll_interval, old.mailboxes, old.cyrus
    ):
        # Start over with the new way of noticing changes; the full sync follows every mailbox.
        assert service.feed is not None
        service.feed.close()
        service.feed = service.evaluator.source.feed(daemon)
        service.table.feed = service.feed
        service.table.refollow_all()
        service.full_sync.soon(now)
    log.info("configuration reloaded from %s", path)
