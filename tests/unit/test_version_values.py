"""The exact values the version layer hands each Synapse era, and its startup summary.

test_version_layer.py checks that every era reads each verdict as intended; these pin down the
value itself where two values would read alike to that check but not to a client or an admin
(which Codes member a rejection carries, False rather than None for an allowed event).
"""

from __future__ import annotations

import enum
from typing import Any

import pytest

from synapse_http_antispam import synapse_compat
from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.synapse_compat import (
    BOOLS_ONLY,
    Capabilities,
    describe,
    sniff,
    to_synapse,
)
from synapse_http_antispam.verdict import ALLOW, rejection
from tests.unit.test_version_layer import NOT_SPAM, Codes

LIMITED = rejection({"errcode": "M_LIMIT_EXCEEDED", "error": "Slow down"})
CUSTOM = rejection({"errcode": "ORG_EXAMPLE_SPAM", "error": "Looks like spam"})
ERA_1_62 = Capabilities((1, 62, 0), not_spam=NOT_SPAM, codes=Codes, gates_take_codes=True)
ERA_1_63 = Capabilities(
    (1, 63, 0), not_spam=NOT_SPAM, codes=Codes, gates_take_codes=True, tuples=True
)


def test_a_known_errcode_is_its_own_codes_member() -> None:
    assert to_synapse(Kind.GATE, LIMITED, ERA_1_62) is Codes.LIMIT_EXCEEDED
    assert to_synapse(Kind.STATE, LIMITED, ERA_1_63) is Codes.LIMIT_EXCEEDED
    # With (Codes, dict) the dict carries only what the Codes member does not say already.
    assert to_synapse(Kind.GATE, LIMITED, ERA_1_63) == (
        Codes.LIMIT_EXCEEDED,
        {"error": "Slow down"},
    )
    assert to_synapse(Kind.LOGIN, LIMITED, ERA_1_63) == (
        Codes.LIMIT_EXCEEDED,
        {"error": "Slow down"},
    )


def test_an_unknown_errcode_rides_in_the_dict_over_forbidden() -> None:
    assert to_synapse(Kind.GATE, CUSTOM, ERA_1_62) is Codes.FORBIDDEN
    assert to_synapse(Kind.EVENT, CUSTOM, ERA_1_63) == (
        Codes.FORBIDDEN,
        {"error": "Looks like spam", "errcode": "ORG_EXAMPLE_SPAM"},
    )


def test_an_allowed_event_before_not_spam_is_false() -> None:
    assert to_synapse(Kind.EVENT, ALLOW, BOOLS_ONLY) is False
    assert to_synapse(Kind.EVENT, ALLOW, ERA_1_62) is NOT_SPAM


def test_the_startup_summary() -> None:
    """The line the module logs at startup (and `check` prints): release, forms, callbacks."""
    assert describe(BOOLS_ONLY) == "Synapse unknown; bool results"
    assert describe(ERA_1_62, {}) == "Synapse 1.62.0; NOT_SPAM/Codes; 0 callbacks: "
    assert describe(ERA_1_63, {"user_may_invite": None, "check_event_for_spam": None}) == (
        "Synapse 1.63.0; NOT_SPAM/Codes; (Codes, dict); "
        "2 callbacks: check_event_for_spam, user_may_invite"
    )


# ---- sniff: the declared callback type decides, the version number only without one --------

synapse = pytest.importorskip("synapse")


def _rich_forms_expressible() -> bool:
    """NOT_SPAM and an Enum Codes exist (Synapse 1.62+): only then can a declared type or a
    version number unlock the richer return forms these tests are about."""
    try:
        from synapse.module_api import NOT_SPAM  # noqa: F401
    except ImportError:
        return False
    from synapse.api.errors import Codes as RealCodes

    return isinstance(RealCodes, type) and issubclass(RealCodes, enum.Enum)


needs_rich_forms = pytest.mark.skipif(
    not _rich_forms_expressible(),
    reason="this Synapse has no NOT_SPAM or Enum Codes: only bools can be returned",
)


def sniffed(
    monkeypatch: pytest.MonkeyPatch, version: str, declared: str | None
) -> tuple[tuple[int, int, int] | None, bool, bool]:
    monkeypatch.setattr(synapse, "__version__", version)
    monkeypatch.setattr(synapse_compat, "_callback_type_alias", lambda: declared)
    caps = sniff()
    return caps.version, caps.gates_take_codes, caps.tuples


@needs_rich_forms
@pytest.mark.parametrize(
    "version, expected",
    [
        ("1.61.9", ((1, 61, 9), False, False)),
        ("1.62.0", ((1, 62, 0), True, False)),
        ("1.62.5rc1", ((1, 62, 5), True, False)),
        ("1.63.0", ((1, 63, 0), True, True)),
        ("2.0.0", ((2, 0, 0), True, True)),
        ("unknown", (None, False, False)),
    ],
)
def test_without_a_declared_type_the_version_decides(
    monkeypatch: pytest.MonkeyPatch, version: str, expected: Any
) -> None:
    assert sniffed(monkeypatch, version, None) == expected


@needs_rich_forms
@pytest.mark.parametrize(
    "declared, expected",
    [
        ("typing.Callable[..., typing.Awaitable[bool]]", (False, False)),
        ("Callable[..., Awaitable[Union[Literal['NOT_SPAM'], Codes]]]", (True, False)),
        ("Callable[..., Awaitable[Union[NOT_SPAM, Codes, Tuple[Codes, dict]]]]", (True, True)),
        ("Callable[..., Awaitable[NOT_SPAM | Codes | tuple[Codes, dict]]]", (True, True)),
    ],
    ids=["bools", "codes", "Tuple", "tuple"],
)
def test_a_declared_type_wins_over_the_version(
    monkeypatch: pytest.MonkeyPatch, declared: str, expected: tuple[bool, bool]
) -> None:
    # The version says "everything" (1.99): only the declared type can say less.
    assert sniffed(monkeypatch, "1.99.0", declared)[1:] == expected


@needs_rich_forms
def test_the_installed_synapse_declares_its_callback_type() -> None:
    declared = synapse_compat._callback_type_alias()
    assert declared is not None and "Codes" in declared
