"""A module config as written for one door: the legacy `spam_checker:` section cannot carry
some callbacks (`user_may_join_room`, `user_may_send_3pid_invite`, ...), so a config written for
it names only the ones it carries. The compat fragment for that door and the peer tests that
boot it through that door both use this, so the two stay equal."""

from __future__ import annotations

from typing import Any

from synapse_http_antispam.catalogue import LEGACY_NAMES


def for_door(config: dict[str, Any], door: str) -> dict[str, Any]:
    """`config` minus, for `spam_checker`, the callbacks that door cannot carry (in
    `enabled_callbacks`, `fail_open` and `async`; a map left empty is left out)."""
    if door == "modules":
        return config
    carried = set(LEGACY_NAMES)
    written = dict(config)
    if written.get("enabled_callbacks") is not None:
        written["enabled_callbacks"] = [n for n in written["enabled_callbacks"] if n in carried]
    for key in ("fail_open", "async"):
        if key in written:
            kept = {n: v for n, v in written[key].items() if n in carried}
            if kept:
                written[key] = kept
            else:
                del written[key]
    return written
