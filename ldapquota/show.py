"""``--show ADDRESS``: one account explained: limit, usage, stored flag, decision and why."""

from typing import List, Tuple

from ldapquota.errors import EX_OK, EX_PARTIAL
from ldapquota.evaluation import Evaluation, Evaluator
from ldapquota.flagstore import FlagStore
from ldapquota.quota import QuotaState
from ldapquota.settings import Config


def describe_accounts(config: Config, directory: FlagStore, address: str) -> Tuple[List[str], int]:
    """Lines to print and the exit code (1 when no account, several, or an error)."""
    evaluator = Evaluator(config)
    try:
        return _describe_accounts(config, directory, address, evaluator)
    finally:
        evaluator.close()


def _describe_accounts(config: Config, directory: FlagStore, address: str, evaluator: Evaluator) -> Tuple[List[str], int]:
    entries = directory.find_accounts(address, evaluator.attributes)
    if not entries:
        shown = address if address.isprintable() else repr(address)
        where = f"under {config.ldap.base_dn} matching {config.ldap.filter}"
        return [f"no account with {config.accounts.address_attribute}={shown} {where}"], EX_PARTIAL
    lines: List[str] = []
    code = EX_OK
    if len(entries) > 1:
        lines.append(f"warning: {len(entries)} accounts have {config.accounts.address_attribute}={address}; "
                     "an MTA lookup that expects one entry will defer mail to it (4xx)")
        code = EX_PARTIAL
    for entry in entries:
        evaluation = evaluator.evaluate(entry)
        if lines:
            lines.append("")
        lines.extend(_describe(evaluation))
        if evaluation.error:
            code = EX_PARTIAL
    return lines, code


def _state(state: QuotaState) -> str:
    free = "absent" if state.free_bytes is None else str(state.free_bytes)
    return f"isOverQuota {'TRUE' if state.over else 'FALSE'}, quotaFreeBytes {free}"


def _describe(evaluation: Evaluation) -> List[str]:
    account, measurement = evaluation.account, evaluation.measurement
    lines = [f"account:  {evaluation.entry.dn}", f"address:  {evaluation.address}"]
    if account:
        source = account.limit_source
        if measurement:
            lines.append(f"limit:    {measurement.limit} (from {source})")
            lines.append(f"mailbox:  {measurement.path}")
            lines.append(f"usage:    {measurement.usage.bytes} bytes, {measurement.usage.messages} messages ({measurement.method})")
        else:
            lines.append(f"limit:    {account.limit or 'from the ' + source} (from {source})")
            lines.append(f"mailbox:  {account.mailbox}")
    stored = evaluation.entry.values("isOverQuota")
    lines.append(f"stored:   {_state(evaluation.old)}{'' if stored else ' (isOverQuota not set: reads as FALSE)'}")
    if evaluation.error:
        lines.append(f"error:    {evaluation.error}")
        lines.append(f"decision: keep {_state(evaluation.old)}")
        return lines
    assert evaluation.decision is not None
    verb = "change to" if evaluation.changed else "keep"
    lines.append(f"decision: {verb} {_state(evaluation.new)}")
    lines.append(f"why:      {evaluation.decision.reason}")
    return lines
