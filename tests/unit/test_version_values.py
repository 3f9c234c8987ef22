"""The exact values the version layer hands each Synapse era, and its startup summary.

test_version_layer.py checks that every era reads each verdict as intended; these pin down the
value itself where two values would read alike to that check but not to a client or an admin
(which Codes member a rejection carries, False rather than None for an allowed event).
"""

from __future__ import annotations

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.synapse_compat import BOOLS_ONLY, Capabilities, describe, to_synapse
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
