"""Every verdict, for every callback family, means the intended thing to every Synapse era.

`interpret` below encodes how Synapse reads a callback's return value in each era (see
shared reference synapse-compat.md, read from the tagged Synapse sources). The version layer
must produce values that each era reads as the intended allow/deny, never as "invalid", and
carry the errcode and message to the client wherever the era can.
"""

from __future__ import annotations

import enum
import inspect
import sys
import types
from collections.abc import Awaitable, Callable
from typing import Any, Union

import pytest

from twisted.internet.defer import Deferred

from synapse_http_antispam.catalogue import CALLBACKS, Kind
from synapse_http_antispam.synapse_compat import (
    BOOLS_ONLY,
    Capabilities,
    _callback_type_alias,
    _logcontext_helpers,
    installed_register_function,
    sniff,
    synapse_version_string,
    to_synapse,
)
from synapse_http_antispam.verdict import (
    ALLOW,
    BACKGROUND,
    Failure,
    Outcome,
    Verdict,
    failed,
    rejection,
)


class Codes(str, enum.Enum):
    FORBIDDEN = "M_FORBIDDEN"
    UNKNOWN = "M_UNKNOWN"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"


class RegistrationBehaviour(enum.Enum):
    ALLOW = "allow"
    SHADOW_BAN = "shadow_ban"
    DENY = "deny"


# Synapse checks NOT_SPAM by identity; a fresh string object with the same text must not pass.
NOT_SPAM = "".join(["NOT_", "SPAM"])

ERAS = {
    # Only the spam_checker: door (before 1.37); sniff() finds what it finds on 1.37.
    (1, 25): Capabilities((1, 25, 0), registration_behaviour=RegistrationBehaviour),
    (1, 30): Capabilities((1, 30, 0), registration_behaviour=RegistrationBehaviour),
    (1, 37): Capabilities((1, 37, 1), registration_behaviour=RegistrationBehaviour),
    (1, 60): Capabilities(
        (1, 60, 0), not_spam=NOT_SPAM, codes=Codes, registration_behaviour=RegistrationBehaviour
    ),
    (1, 62): Capabilities(
        (1, 62, 0),
        not_spam=NOT_SPAM,
        codes=Codes,
        gates_take_codes=True,
        registration_behaviour=RegistrationBehaviour,
    ),
}
# From 1.63 the return values Synapse understands stay the same; the eras where a callback
# family first appears are listed too, so that every family is checked on every era it exists
# in (the login and state-event families exist only from 1.87 and 1.132).
for _era in ((1, 63), (1, 87), (1, 132)):
    ERAS[_era] = Capabilities(
        (*_era, 0),
        not_spam=NOT_SPAM,
        codes=Codes,
        gates_take_codes=True,
        tuples=True,
        registration_behaviour=RegistrationBehaviour,
    )
# Callback families that only exist from an era on (media: absent from 1.25's SpamChecker,
# there in 1.30's).
FAMILY_SINCE = {Kind.STATE: (1, 132), Kind.LOGIN: (1, 87), Kind.MEDIA: (1, 30)}


def interpret(era: tuple[int, int], kind: Kind, value: Any) -> tuple[str, dict[str, Any] | None]:
    """("allow" | "deny" | "invalid", client error body where Synapse builds one from value)."""

    def client_error(code: Any, fields: dict[str, Any]) -> dict[str, Any]:
        assert "msg" not in fields and "code" not in fields, "would crash cs_error"
        return {"error": "(synapse default)", "errcode": str(code.value), **fields}

    def coded(v: Any) -> tuple[str, dict[str, Any] | None] | None:
        if isinstance(v, Codes):
            return "deny", client_error(v, {})
        if era >= (1, 63) and isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], Codes):
            return "deny", client_error(v[0], v[1])
        return None

    if kind is Kind.FLAG:
        return ("deny" if value else "allow"), None
    if kind is Kind.REGISTRATION:
        if not isinstance(value, RegistrationBehaviour):
            return "invalid", None
        return ("deny" if value is RegistrationBehaviour.DENY else "allow"), None
    if kind in (Kind.STATE, Kind.LOGIN):
        if value is NOT_SPAM:
            return "allow", None
        if kind is Kind.STATE and isinstance(value, Codes):
            return "deny", client_error(value, {})
        if kind is Kind.LOGIN and coded(value):
            return coded(value)  # type: ignore[return-value]
        return "invalid", None
    if kind is Kind.EVENT:
        if era < (1, 37):
            # SpamChecker.check_event_for_spam returns True for any truthy value: the client
            # gets Synapse's "Spam is not permitted here", never the module's message.
            return ("deny" if value else "allow"), None
        if era < (1, 60):
            return ("deny" if value else "allow"), (
                {"error": value} if isinstance(value, str) else None
            )
        if value is False or value == "NOT_SPAM":
            return "allow", None
        if value is True:
            return "deny", None
        result = coded(value)
        if result:
            return result
        if isinstance(value, str):
            return "deny", {"error": value, "errcode": "M_FORBIDDEN"}
        return "invalid", None
    if kind is Kind.MEDIA and era < (1, 62):
        return ("deny" if value else "allow"), None
    # GATE (and MEDIA from 1.62)
    if era < (1, 62):
        return ("deny" if value is False else "allow"), None
    if value is NOT_SPAM or (kind is Kind.GATE and value is True):
        return "allow", None
    if (value is False and kind is Kind.GATE) or (kind is Kind.MEDIA and value is True):
        return "deny", None
    return coded(value) or ("invalid", None)


VERDICTS = {
    "allowed": ALLOW,
    "background": BACKGROUND,
    "failed_open": failed(Failure.TIMEOUT, True),
    "failed_closed": failed(Failure.CONNECT, False),
    "rejected_standard": rejection({"errcode": "M_LIMIT_EXCEEDED", "error": "Slow down"}),
    "rejected_custom": rejection(
        {"errcode": "ORG_EXAMPLE_BLOCKED", "error": "Blocked by policy", "policy": "spam"}
    ),
    "rejected_bare": rejection({}),
}

CASES = [
    (era, kind, label)
    for era in ERAS
    for kind in Kind
    for label in VERDICTS
    if era >= FAMILY_SINCE.get(kind, (0, 0))
]


def test_every_family_is_checked_on_every_era_it_exists_in() -> None:
    """A family missing from CASES would never have its branch of the version layer run."""
    newest = max(ERAS)
    for kind in Kind:
        assert {k for era, k, _ in CASES if era == newest} >= {kind}, kind
        since = FAMILY_SINCE.get(kind, min(ERAS))
        assert since in ERAS, f"{kind} is not checked on {since}, the era it appeared in"


@pytest.mark.parametrize(
    "era, kind, label", CASES, ids=[f"{e[0]}.{e[1]}-{k.value}-{v}" for e, k, v in CASES]
)
def test_every_era_reads_the_intended_verdict(
    era: tuple[int, int], kind: Kind, label: str
) -> None:
    verdict = VERDICTS[label]
    value = to_synapse(kind, verdict, ERAS[era])
    meaning, client = interpret(era, kind, value)
    assert meaning == ("allow" if verdict.allowed else "deny"), (era, kind, value)
    if client is None or verdict.allowed:
        return
    # Where Synapse builds the client error from our value, what it carries is exact.
    if (
        verdict.message is not None
        and "error" in client
        and client["error"] != "(synapse default)"
    ):
        assert client["error"] == verdict.message
    if era >= (1, 63) and kind is not Kind.STATE:
        assert client["errcode"] == verdict.errcode
        for key, extra in verdict.fields.items():
            assert client[key] == extra
        if verdict.message is not None:
            assert client["error"] == verdict.message


def test_failed_closed_names_the_antispam_server_not_a_connection() -> None:
    verdict = failed(Failure.HTTP_STATUS, False)
    assert verdict.errcode == "M_UNKNOWN"
    assert verdict.message is not None and "antispam server" in verdict.message
    assert "connect" not in verdict.message.lower()


@pytest.mark.parametrize("errcode", ["M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_USER_DEACTIVATED"])
def test_session_ending_errcodes_become_forbidden(errcode: str) -> None:
    verdict = rejection({"errcode": errcode, "error": "nope", "soft_logout": True})
    assert verdict.errcode == "M_FORBIDDEN"
    assert verdict.message == "nope"
    assert "soft_logout" not in verdict.fields


def test_fields_that_crash_synapse_error_builder_are_dropped() -> None:
    verdict = rejection({"errcode": "M_FORBIDDEN", "msg": "x", "code": 1, "keep": 2})
    assert dict(verdict.fields) == {"keep": 2}


def test_non_string_errcode_and_message_fall_back() -> None:
    verdict = rejection({"errcode": 5, "error": ["x"]})
    assert verdict.outcome is Outcome.REJECTED
    assert verdict.errcode == "M_FORBIDDEN" and verdict.message is None


def test_event_message_never_equals_not_spam() -> None:
    # 1.60-1.62 compare event results to "NOT_SPAM" with ==; that text must not allow.
    verdict = Verdict(Outcome.REJECTED, message="NOT_SPAM")
    value = to_synapse(Kind.EVENT, verdict, ERAS[(1, 60)])
    assert interpret((1, 60), Kind.EVENT, value)[0] == "deny"


def test_shadow_ban_reaches_registration() -> None:
    verdict = Verdict(Outcome.ALLOWED, shadow_ban=True)
    for caps in ERAS.values():
        assert to_synapse(Kind.REGISTRATION, verdict, caps) is RegistrationBehaviour.SHADOW_BAN


def test_every_catalogue_kind_is_covered() -> None:
    assert {cb.kind for cb in CALLBACKS.values()} == set(Kind)


def test_sniff_matches_the_installed_synapse() -> None:
    """On the real Synapse in this environment, capabilities agree with its release notes."""
    synapse = pytest.importorskip("synapse")
    caps = sniff()
    assert caps.version is not None, synapse.__version__
    assert (caps.not_spam is not None) == (caps.version >= (1, 60, 0))
    assert caps.gates_take_codes == (caps.version >= (1, 62, 0))
    assert caps.tuples == (caps.version >= (1, 63, 0))
    if caps.not_spam is not None:
        from synapse.module_api import NOT_SPAM as real_not_spam

        assert to_synapse(Kind.GATE, ALLOW, caps) is real_not_spam


def test_the_callback_alias_is_read_from_the_installed_synapse() -> None:
    """The declared return type of user_may_invite callbacks, where sniff() looks first:
    absent before 1.37 (1.25 and 1.30 have synapse.events.spamcheck, without the alias), in
    synapse.events.spamcheck until 1.81, then in synapse.module_api.callbacks."""
    synapse = pytest.importorskip("synapse")
    caps = sniff()
    assert caps.version is not None, synapse.__version__
    declared = _callback_type_alias()
    if caps.version < (1, 37, 0):
        assert declared is None
        return
    assert declared is not None
    assert ("Codes" in declared) == (caps.version >= (1, 62, 0)), declared
    assert ("uple[" in declared) == (caps.version >= (1, 63, 0)), declared


class Codes162(enum.Enum):
    FORBIDDEN = "M_FORBIDDEN"


ALIAS_1_37 = Callable[[str, str, str], Awaitable[bool]]
ALIAS_1_63 = Callable[[str, str, str], Awaitable[Union[Codes162, tuple[Codes162, dict], bool]]]
NEW = "synapse.module_api.callbacks.spamchecker_callbacks"  # 1.82+
OLD = "synapse.events.spamcheck"  # 1.37 - 1.81 (and before 1.37, without the alias)


def fake_module(name: str, alias: Any = None) -> types.ModuleType:
    module = types.ModuleType(name)
    if alias is not None:
        module.USER_MAY_INVITE_CALLBACK = alias  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    "new, old, expected",
    [
        (None, fake_module(OLD), None),  # 1.25, 1.30: the module, no alias
        (None, None, None),  # no Synapse at all
        (None, fake_module(OLD, ALIAS_1_37), repr(ALIAS_1_37)),  # 1.37 - 1.61
        (None, fake_module(OLD, ALIAS_1_63), repr(ALIAS_1_63)),  # 1.63 - 1.81
        (fake_module(NEW, ALIAS_1_63), fake_module(OLD), repr(ALIAS_1_63)),  # 1.82+
    ],
    ids=["1.25", "none", "1.37", "1.63", "1.82"],
)
def test_the_callback_alias_is_looked_for_where_each_era_keeps_it(
    monkeypatch: pytest.MonkeyPatch, new: Any, old: Any, expected: str | None
) -> None:
    """Every era's layout, whichever Synapse this environment has (None in sys.modules: the
    module cannot be imported)."""
    monkeypatch.setitem(sys.modules, NEW, new)
    monkeypatch.setitem(sys.modules, OLD, old)
    assert _callback_type_alias() == expected


# ---- what sniff() makes of other releases, faked on whichever Synapse is installed ----------


def test_sniff_without_not_spam_codes_an_enum_or_registration_behaviour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release without NOT_SPAM (before 1.60), whose Codes is a plain class of strings
    (before 1.60) and without RegistrationBehaviour (before 1.20): none of them is used, and
    the gates get bools even where the callback alias names Codes."""
    pytest.importorskip("synapse")
    import synapse.api.errors
    import synapse.module_api
    import synapse.spam_checker_api

    class PlainCodes:
        FORBIDDEN = "M_FORBIDDEN"

    monkeypatch.delattr(synapse.module_api, "NOT_SPAM", raising=False)
    monkeypatch.delattr(synapse.spam_checker_api, "RegistrationBehaviour")
    monkeypatch.setattr(synapse.api.errors, "Codes", PlainCodes)
    monkeypatch.setitem(sys.modules, NEW, fake_module(NEW, ALIAS_1_63))
    caps = sniff()
    assert caps.not_spam is None
    assert caps.codes is None
    assert caps.registration_behaviour is None
    assert (caps.gates_take_codes, caps.tuples) == (False, False)
    assert to_synapse(Kind.GATE, ALLOW, caps) is True


def test_without_synapse_the_version_is_unknown_and_log_contexts_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside Synapse (the benchmarks, the check command on a host without it): the
    User-Agent says Synapse/unknown, and Deferreds are awaited as they are."""
    monkeypatch.setitem(sys.modules, "synapse", None)
    monkeypatch.setitem(sys.modules, "synapse.logging.context", None)
    assert synapse_version_string() == "unknown"
    assert sniff() == BOOLS_ONLY
    preserve, yieldable = _logcontext_helpers()
    d: Deferred[int] = Deferred()
    with preserve():
        assert yieldable(d) is d


def test_register_spam_checker_callbacks_as_a_property_is_read_from_spam_checker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Synapse 1.37-1.47: ModuleApi.register_spam_checker_callbacks is a property returning
    SpamChecker.register_callbacks, whose keywords are what the release accepts."""
    pytest.importorskip("synapse")
    from synapse.module_api import ModuleApi

    class SpamChecker:
        def register_callbacks(self, *, user_may_invite: Any = None) -> None:
            pass

    module = fake_module(OLD)
    module.SpamChecker = SpamChecker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, OLD, module)
    monkeypatch.setattr(
        ModuleApi,
        "register_spam_checker_callbacks",
        property(lambda self: SpamChecker().register_callbacks),
        raising=False,
    )
    real = installed_register_function()
    assert real is SpamChecker.register_callbacks
    assert "user_may_invite" in inspect.signature(real).parameters
