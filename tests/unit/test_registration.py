"""The modern door registers exactly what each Synapse era's ModuleApi accepts.

Each fake ModuleApi below has a register_spam_checker_callbacks with the era's exact keyword
list and no **kwargs, like the real one, so an unknown name raises TypeError here just as it
kills Synapse's startup there.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest

from synapse_http_antispam import HTTPAntispam, LegacyHTTPAntispam
from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES
from synapse_http_antispam.synapse_compat import describe, sniff
from tests.support.module_api import FakeModuleApi

BASE_1_37 = (
    "check_event_for_spam",
    "user_may_invite",
    "user_may_create_room",
    "user_may_create_room_alias",
    "user_may_publish_room",
    "check_username_for_spam",
    "check_registration_for_spam",
    "check_media_file_for_spam",
)
ERA_KEYWORDS: dict[str, tuple[str, ...]] = {
    "1.37": BASE_1_37,
    "1.44": (*BASE_1_37, "user_may_create_room_with_invites"),
    "1.45": (
        *BASE_1_37,
        "user_may_create_room_with_invites",
        "user_may_join_room",
        "user_may_send_3pid_invite",
    ),
    "1.53": (*BASE_1_37, "user_may_join_room", "user_may_send_3pid_invite"),
    "1.60": (
        *BASE_1_37,
        "user_may_join_room",
        "user_may_send_3pid_invite",
        "should_drop_federated_event",
    ),
}
ERA_KEYWORDS["1.87"] = (*ERA_KEYWORDS["1.60"], "check_login_for_spam")
ERA_KEYWORDS["1.132"] = (*ERA_KEYWORDS["1.87"], "user_may_send_state_event")
ERA_KEYWORDS["1.134"] = (*ERA_KEYWORDS["1.132"], "federated_user_may_invite")
ERA_KEYWORDS["fork"] = (*ERA_KEYWORDS["1.134"], "accept_make_join")


def release(era: str) -> tuple[int, ...]:
    """An era's release as a comparable version ("fork" is newer than every release)."""
    return (1, 1_000_000) if era == "fork" else tuple(int(part) for part in era.split("."))


def config(**extra: Any) -> dict[str, Any]:
    return {"base_url": "http://127.0.0.1:9", **extra}


@pytest.mark.parametrize("era", ERA_KEYWORDS)
def test_default_config_registers_every_known_callback_and_nothing_else(era: str) -> None:
    keywords = ERA_KEYWORDS[era]
    api = FakeModuleApi(keywords, keyword_only=release(era) >= (1, 53))
    HTTPAntispam(HTTPAntispam.parse_config(config()), api)
    assert set(api.registered) == set(keywords) & set(CALLBACKS)


def test_asked_for_but_unknown_to_this_synapse_is_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = FakeModuleApi(ERA_KEYWORDS["1.60"])
    with caplog.at_level(logging.WARNING):
        HTTPAntispam(
            HTTPAntispam.parse_config(
                config(enabled_callbacks=["user_may_invite", "user_may_send_state_event"])
            ),
            api,
        )
    assert set(api.registered) == {"user_may_invite"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"[{config()['base_url']}] Callback user_may_send_state_event is not supported by this "
        "Synapse release; skipped"
    ]


def test_callbacks_have_the_parameter_counts_synapse_counts() -> None:
    api = FakeModuleApi(ERA_KEYWORDS["1.134"])
    HTTPAntispam(HTTPAntispam.parse_config(config()), api)
    # Synapse passes room_config / requester_id only to callbacks with exactly 2 parameters.
    assert len(inspect.signature(api.registered["user_may_create_room"]).parameters) == 2
    assert len(inspect.signature(api.registered["check_username_for_spam"]).parameters) == 2
    for name, callback in api.registered.items():
        assert inspect.iscoroutinefunction(callback), name
        assert callback.__qualname__ == f"HTTPAntispam.{name}"


def test_legacy_class_has_legacy_shapes() -> None:
    # Synapse 1.30-1.36 and 1.37+ (bridge) accept check_registration_for_spam with 3 or 4
    # parameters, anything else is a startup error.
    instance = LegacyHTTPAntispam(LegacyHTTPAntispam.parse_config(config()))
    method = instance.check_registration_for_spam  # type: ignore[attr-defined]
    assert len(inspect.signature(method).parameters) == 4
    assert "api" in inspect.getfullargspec(LegacyHTTPAntispam).args
    for name in LEGACY_NAMES:
        assert inspect.iscoroutinefunction(getattr(LegacyHTTPAntispam, name)), name


def test_legacy_bridge_sees_only_enabled_methods() -> None:
    api = FakeModuleApi(ERA_KEYWORDS["1.134"])
    instance = LegacyHTTPAntispam(
        LegacyHTTPAntispam.parse_config(config(enabled_callbacks=["user_may_invite"])), api
    )
    present = {name for name in LEGACY_NAMES if getattr(instance, name, None) is not None}
    assert present == {"user_may_invite"}


# What the admin reads at startup: a config with something for every startup line.
STARTUP_CONFIG = config(
    health_interval=0,
    enabled_callbacks=[
        "user_may_invite",
        "user_may_join_room",
        "user_may_send_state_event",
        "federated_user_may_invite",
        "check_event_for_spam",
        "user_may_create_room",
    ],
    report_only=["user_may_invite", "user_may_send_state_event"],
    skip={
        "user_may_join_room": [{"user": "@*:x"}],
        "check_event_for_spam": [{"event.type": "m.reaction"}, {"event.type": "m.x"}],
        "user_may_send_state_event": [{"user_id": "@a:b"}],
        # Not enabled: nothing to announce.
        "user_may_publish_room": [{"user_id": "@a:b"}],
    },
)
PREFIX = f"[{config()['base_url']}] "


def startup_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("synapse_http_antispam")
    ]


@pytest.mark.parametrize("given", ["parsed", "raw"])
def test_the_modern_door_at_startup(caplog: pytest.LogCaptureFixture, given: str) -> None:
    """On Synapse 1.60: what it registers, and every line it logs about it; the same from the
    config as Synapse parses it first or from the mapping itself."""
    api = FakeModuleApi(ERA_KEYWORDS["1.60"])
    config = HTTPAntispam.parse_config(STARTUP_CONFIG) if given == "parsed" else STARTUP_CONFIG
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        HTTPAntispam(config, api)
    registered = ["check_event_for_spam", "user_may_create_room", "user_may_invite"]
    registered.append("user_may_join_room")
    assert sorted(api.registered) == registered
    callbacks = describe(sniff(), api.registered)
    assert callbacks.endswith("4 callbacks: " + ", ".join(registered))
    assert startup_log(caplog) == [
        f"WARNING {PREFIX}Callback {name} is not supported by this Synapse release; skipped"
        for name in ("federated_user_may_invite", "user_may_send_state_event")
    ] + [
        f"INFO {PREFIX}synapse-http-antispam forwarding to http://127.0.0.1:9: {callbacks}",
        f"INFO {PREFIX}Report-only mode (answers recorded, never enforced) for: user_may_invite",
        f"INFO {PREFIX}Calls matching a skip rule are allowed unasked for: "
        "check_event_for_spam (2 rules), user_may_join_room (1 rule)",
    ]


@pytest.mark.parametrize("given", ["parsed", "raw"])
@pytest.mark.parametrize("era", ["1.60", "1.25"])
def test_the_legacy_door_at_startup(
    caplog: pytest.LogCaptureFixture, era: str, given: str
) -> None:
    """What Synapse finds on the instance (1.37+ bridges only the methods it finds; 1.25-1.36
    calls every method), and every line it logs about it; the same from the config as Synapse
    parses it first or from the mapping itself."""
    api = FakeModuleApi(ERA_KEYWORDS[era]) if era in ERA_KEYWORDS else None
    config = (
        LegacyHTTPAntispam.parse_config(STARTUP_CONFIG) if given == "parsed" else STARTUP_CONFIG
    )
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        instance = LegacyHTTPAntispam(config, api)
    present = [name for name in LEGACY_NAMES if getattr(instance, name) is not None]
    # Enabled and a spam_checker: method: kept (Synapse 1.60 does not look for
    # federated_user_may_invite, hence its warning).
    enabled = [n for n in LEGACY_NAMES if n in STARTUP_CONFIG["enabled_callbacks"]]
    if api is None:
        # Every method stays: the ones not enabled allow without a request.
        assert present == list(LEGACY_NAMES)
        skipped = ["user_may_join_room", "user_may_send_state_event"]
    else:
        assert present == enabled
        skipped = ["federated_user_may_invite", "user_may_join_room", "user_may_send_state_event"]
    assert startup_log(caplog) == [
        f"WARNING {PREFIX}Callback {name} cannot be carried by the spam_checker: door on this "
        "Synapse release; skipped (list the module under modules: to use it)"
        for name in skipped
    ] + [
        f"INFO {PREFIX}Report-only mode (answers recorded, never enforced) for: user_may_invite",
        f"INFO {PREFIX}Calls matching a skip rule are allowed unasked for: "
        "check_event_for_spam (2 rules)",
    ]


def test_the_report_only_line_names_each_callback_in_the_catalogues_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Several callbacks in report-only mode: one line naming each (those registered only),
    in the order the catalogue (and the docs) list them, whatever order the config gave."""
    api = FakeModuleApi(ERA_KEYWORDS["1.60"])
    raw = config(
        health_interval=0,
        report_only=["user_may_invite", "user_may_send_state_event", "check_event_for_spam"],
    )
    with caplog.at_level(logging.INFO, logger="synapse_http_antispam"):
        HTTPAntispam(raw, api)
    names = [n for n in CALLBACKS if n in ("user_may_invite", "check_event_for_spam")]
    assert len(names) == 2
    assert f"INFO {PREFIX}Report-only mode (answers recorded, never enforced) for: " + ", ".join(
        names
    ) in startup_log(caplog)
