"""What the installed Synapse would register through each door, for the check's table."""

from __future__ import annotations

import types

import attrs

from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES
from synapse_http_antispam.check.homeserver import (
    Entry,
)
from synapse_http_antispam.config import Config
from synapse_http_antispam.synapse_compat import (
    Capabilities,
    describe,
    installed_register_function,
    registrable_callbacks,
    sniff,
    synapse_version_string,
)


@attrs.frozen
class SynapseInfo:
    version: str
    # The version layer's own description of the return values this release understands.
    return_forms: str
    # Callbacks register_spam_checker_callbacks accepts; None before 1.37 (no `modules:`).
    modules: frozenset[str] | None
    # Methods of the legacy door this release calls.
    spam_checker: frozenset[str]
    # What a refusal shows the user on this release, in an admin's words.
    refusals: str = ""


def refusals_text(caps: Capabilities) -> str:
    """What users see of a refusal on this release: the version layer's return forms
    ("NOT_SPAM/Codes; (Codes, dict)") are Synapse's internals, not what an admin asks."""
    if caps.tuples:
        return "refusals show users the antispam server's errcode, message and extra fields"
    if caps.gates_take_codes:
        return (
            "refusals show users the antispam server's errcode (for messages, its message "
            "instead); Synapse 1.63 shows both"
        )
    return (
        "refusals show users Synapse's own M_FORBIDDEN, without the antispam server's "
        "errcode (Synapse 1.63 shows its errcode and message)"
    )


def synapse_info() -> SynapseInfo | None:
    """What the Synapse in this Python would register; None where Synapse is not importable."""
    try:
        import synapse.module_api  # noqa: F401
    except ImportError:
        return None
    register = installed_register_function()
    if register is None:
        # Before 1.37 the legacy SpamChecker calls the methods it has, unconditionally.
        from synapse.events.spamcheck import SpamChecker

        legacy = frozenset(n for n in LEGACY_NAMES if hasattr(SpamChecker, n))
        modules = None
    else:
        # The version layer's own reading of the signature, on a stand-in holding the function.
        accepted = registrable_callbacks(
            types.SimpleNamespace(register_spam_checker_callbacks=register)
        )
        modules = frozenset(accepted & set(CALLBACKS))
        legacy = frozenset(n for n in LEGACY_NAMES if n in modules)
    caps = sniff()
    forms = describe(caps).split("; ", 1)[-1]
    version = caps.version_string if caps.version else synapse_version_string()
    return SynapseInfo(version, forms, modules, legacy, refusals_text(caps))


def would_send(
    entry: Entry, config: Config, info: SynapseInfo | None
) -> tuple[list[str], list[str]]:
    """(callbacks the module would forward, enabled callbacks it would not: this Synapse, or
    the door, lacks them). Without Synapse, every callback the door has counts as registered.
    """
    enabled = [n for n in CALLBACKS if config.is_enabled(n)]
    if entry.door == "spam_checker":
        accepted: frozenset[str] = frozenset(LEGACY_NAMES) if info is None else info.spam_checker
    elif info is None:
        accepted = frozenset(CALLBACKS)
    else:
        accepted = info.modules or frozenset()
    return [n for n in enabled if n in accepted], [n for n in enabled if n not in accepted]
