"""The daemon's inside, in parts a reader can name.

* :mod:`~ldapquota.service.control` — stopping: what a SIGTERM may cut short, what it waits for;
* :mod:`~ldapquota.service.table` — the account table (what events need of each account);
* :mod:`~ldapquota.service.pending` — writes LDAP has not had yet, and the flip budget;
* :mod:`~ldapquota.service.link` — the loop's store connection, reconnecting with backoff;
* :mod:`~ldapquota.service.refresher` — new, changed and removed accounts between full syncs;
* :mod:`~ldapquota.service.fullsync` — the daemon's full sync, interleaved with events;
* :mod:`~ldapquota.service.loop` — the thin loop that turns them, and config reloads.

The process around it (pidfile, detaching, signals) is :mod:`ldapquota.daemon`.
"""
