"""Where usage comes from: the usage-source interface and the registry of sources.

A source measures mailboxes and knows the limit the mail store itself holds; the sync,
``--show`` and the daemon use only this interface. ``mailboxes.source`` names one of
:data:`REGISTRY`; a new source is one module with a :class:`UsageSource` subclass named
``Source`` plus its line here (docs/contract.md §10).
"""

import importlib
from typing import Dict, List

from ldapquota.settings import Config
from ldapquota.sources.base import ChangeFeed, FeedChanges, Measurement, UsageSource

__all__ = ["REGISTRY", "ChangeFeed", "FeedChanges", "Measurement", "UsageSource", "names", "open_source"]

#: ``mailboxes.source`` → the module holding its ``Source`` class (imported on use, so a
#: source's dependencies are loaded only where it is configured).
REGISTRY: Dict[str, str] = {
    "maildir": "ldapquota.sources.maildir",
    "cyrus": "ldapquota.sources.cyrus",
    "dovecot": "ldapquota.sources.dovecot",
}


def names() -> List[str]:
    return list(REGISTRY)


def open_source(config: Config) -> UsageSource:
    """The configured source (it opens what it needs lazily, on first use)."""
    module = importlib.import_module(REGISTRY[config.mailboxes.source])
    source: UsageSource = module.Source(config)
    return source
