"""The version layer: what the running Synapse understands, and the values it wants back.

Both doors hand a neutral `Verdict` to `to_synapse`, which returns the richest value this
Synapse release accepts for that callback family. What the release accepts is found out once,
at startup, by looking at Synapse itself: the keywords its register_spam_checker_callbacks
takes, whether NOT_SPAM and an Enum `Codes` import, and the return types its callback type
aliases declare. The version number is only the fallback where no capability shows.

Every fact used here is in docs/ or the reference sheets with its source; the short version:
before 1.62 the `user_may_*` family only knows True/False, 1.62 adds NOT_SPAM (checked by
identity) and `Codes`, 1.63 adds `(Codes, dict)`; `user_may_send_state_event` takes a bare
`Codes` only; `check_username_for_spam` and `should_drop_federated_event` are truthiness.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any, Callable, TypeVar

import attrs

from twisted.internet import defer

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.verdict import Verdict

T = TypeVar("T")

__all__ = ["BOOLS_ONLY", "Capabilities", "ConfigError", "sniff", "to_synapse"]

try:  # Synapse 1.37+
    from synapse.module_api.errors import ConfigError
except ImportError:  # pragma: no cover - older Synapse, or no Synapse at all
    try:
        from synapse.config._base import ConfigError  # type: ignore[no-redef,unused-ignore]
    except ImportError:

        class ConfigError(Exception):  # type: ignore[no-redef]
            """Stands in for Synapse's ConfigError where Synapse is not installed."""


def _parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def synapse_version_string() -> str:
    try:
        import synapse

        return str(synapse.__version__)
    except ImportError:
        return "unknown"


@attrs.frozen
class Capabilities:
    version: tuple[int, int, int] | None
    # The NOT_SPAM object to return by identity; None before 1.60.
    not_spam: Any = None
    # The Codes Enum (1.60+); None where Codes is a plain class of strings.
    codes: Any = None
    # 1.62+: user_may_* and media take NOT_SPAM and Codes instead of bools.
    gates_take_codes: bool = False
    # 1.63+: rejections may carry (Codes, dict) with extra fields for the client.
    tuples: bool = False
    registration_behaviour: Any = None

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version)) if self.version else "unknown"


# What a Synapse release looks like when no capability can be sniffed (no Synapse installed).
BOOLS_ONLY = Capabilities(version=None)


def _callback_type_alias() -> str | None:
    """The declared return type of user_may_invite callbacks, as text, if Synapse has one."""
    for module_name in (
        "synapse.module_api.callbacks.spamchecker_callbacks",  # 1.82+
        "synapse.events.spamcheck",  # 1.37 - 1.81
    ):
        try:
            module = __import__(module_name, fromlist=["USER_MAY_INVITE_CALLBACK"])
        except ImportError:
            continue
        alias = getattr(module, "USER_MAY_INVITE_CALLBACK", None)
        if alias is not None:
            return repr(alias)
    return None


def sniff() -> Capabilities:
    """Find out, once, which return values the installed Synapse understands."""
    try:
        import synapse  # noqa: F401
    except ImportError:
        return BOOLS_ONLY
    version = _parse_version(synapse_version_string())
    try:
        from synapse.module_api import NOT_SPAM as not_spam
    except ImportError:
        not_spam = None
    from synapse.api.errors import Codes

    codes = Codes if isinstance(Codes, type) and issubclass(Codes, enum.Enum) else None
    try:
        from synapse.spam_checker_api import RegistrationBehaviour as registration
    except ImportError:  # before 1.20: no registration callback at all
        registration = None

    declared = _callback_type_alias()
    if declared is not None:
        gates_take_codes = "Codes" in declared
        tuples = gates_take_codes and bool(re.search(r"[Tt]uple\[", declared))
    else:
        at_least = version or (0, 0, 0)
        gates_take_codes = at_least >= (1, 62, 0)
        tuples = at_least >= (1, 63, 0)
    # Without NOT_SPAM and an Enum Codes the richer forms cannot be expressed at all.
    gates_take_codes = gates_take_codes and not_spam is not None and codes is not None
    return Capabilities(
        version=version,
        not_spam=not_spam,
        codes=codes,
        gates_take_codes=gates_take_codes,
        tuples=tuples and gates_take_codes,
        registration_behaviour=registration,
    )


def registrable_callbacks(api: Any) -> frozenset[str]:
    """The keywords this Synapse's register_spam_checker_callbacks accepts.

    Registering any other name raises TypeError inside Synapse's startup, which kills it, so
    this is asked of the real signature rather than guessed from the version.
    """
    register = getattr(api, "register_spam_checker_callbacks", None)
    if register is None:
        return frozenset()
    params = inspect.signature(register).parameters.values()
    return frozenset(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def installed_register_function() -> Any:
    """The installed Synapse's register_spam_checker_callbacks as a plain function (for
    `registrable_callbacks` without a running homeserver), or None before 1.37.

    1.37-1.47 expose it as a property returning SpamChecker.register_callbacks, so the
    keywords are read from there.
    """
    from synapse.module_api import ModuleApi

    if not hasattr(ModuleApi, "register_spam_checker_callbacks"):
        return None
    real = inspect.getattr_static(ModuleApi, "register_spam_checker_callbacks")
    if not inspect.isfunction(real):
        from synapse.events.spamcheck import SpamChecker

        real = SpamChecker.register_callbacks
    return real


def _code(caps: Capabilities, errcode: str) -> tuple[Any, bool]:
    """The Codes member for errcode, and whether it is the errcode itself (not a stand-in)."""
    try:
        return caps.codes(errcode), True
    except ValueError:
        return caps.codes("M_FORBIDDEN"), False


def _with_fields(caps: Capabilities, verdict: Verdict) -> tuple[Any, dict[str, Any]]:
    """(Codes, dict) carrying errcode, message and extra fields to the client.

    Synapse builds the client error as {"error": msg, "errcode": code, **dict}, so keys in the
    dict win: that is how a non-standard errcode reaches the client.
    """
    code, exact = _code(caps, verdict.errcode)
    fields = dict(verdict.fields)
    if verdict.message is not None:
        fields["error"] = verdict.message
    if not exact:
        fields["errcode"] = verdict.errcode
    return code, fields


def _event_message(verdict: Verdict) -> str | bool:
    # Synapse 1.60-1.62 compare the result to "NOT_SPAM" with ==, so that text would allow.
    if verdict.message and verdict.message != "NOT_SPAM":
        return verdict.message
    return True


def to_synapse(kind: Kind, verdict: Verdict, caps: Capabilities) -> Any:
    """The value to return to this Synapse release for a callback of this family."""
    allowed = verdict.allowed
    if kind is Kind.FLAG:
        return not allowed
    if kind is Kind.REGISTRATION:
        behaviour = caps.registration_behaviour
        if not allowed:
            return behaviour.DENY
        return behaviour.SHADOW_BAN if verdict.shadow_ban else behaviour.ALLOW
    if kind in (Kind.STATE, Kind.LOGIN) and caps.codes is not None:
        # Only exist on releases with NOT_SPAM and Codes; the state callback takes no tuple.
        if allowed:
            return caps.not_spam
        if kind is Kind.LOGIN:
            return _with_fields(caps, verdict)
        return _code(caps, verdict.errcode)[0]
    if kind is Kind.EVENT:
        if allowed:
            return caps.not_spam if caps.not_spam is not None else False
        if caps.tuples:
            return _with_fields(caps, verdict)
        return _event_message(verdict)
    # GATE and MEDIA
    if caps.gates_take_codes:
        if allowed:
            return caps.not_spam
        return _with_fields(caps, verdict) if caps.tuples else _code(caps, verdict.errcode)[0]
    if kind is Kind.MEDIA:
        return not allowed
    return allowed


def _logcontext_helpers() -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    try:
        from synapse.logging.context import PreserveLoggingContext, make_deferred_yieldable

        return PreserveLoggingContext, make_deferred_yieldable
    except ImportError:
        import contextlib

        return contextlib.nullcontext, lambda d: d


_PRESERVE, _YIELDABLE = _logcontext_helpers()


def call_external(coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """Run our Twisted-only code from a Synapse callback without corrupting its log contexts.

    Our coroutine awaits treq Deferreds that fire from the reactor in no log context. Synapse's
    rule for such code: start it in the sentinel context, then await it through
    make_deferred_yieldable so the caller's context is restored when it completes.
    """
    with _PRESERVE():
        d = defer.ensureDeferred(coro)
    return _YIELDABLE(d)  # type: ignore[no-any-return]


def outside_log_context() -> Any:
    """A context manager for starting background work that must not inherit the caller's
    log context (it would outlive the request it belongs to)."""
    return _PRESERVE()


def instance_name(api: Any) -> str:
    """Which Synapse process this is, for the antispam server's logs (workers since 1.53)."""
    name = getattr(api, "worker_name", None)
    return str(name) if name else "master"


def homeserver_name(api: Any) -> str | None:
    """This homeserver's server_name, or None where Synapse does not show it.

    ModuleApi.server_name exists from Synapse 1.53; before, only the private `_hs.hostname`
    (1.25+) has it, which is what that property returns.
    """
    for name in (
        getattr(api, "server_name", None),
        getattr(getattr(api, "_hs", None), "hostname", None),
    ):
        if isinstance(name, str) and name:
            return name
    return None


def describe(caps: Capabilities, registered: Mapping[str, Any] | None = None) -> str:
    parts = [f"Synapse {caps.version_string}"]
    parts.append("NOT_SPAM/Codes" if caps.gates_take_codes else "bool results")
    if caps.tuples:
        parts.append("(Codes, dict)")
    if registered is not None:
        parts.append(f"{len(registered)} callbacks: {', '.join(sorted(registered))}")
    return "; ".join(parts)
