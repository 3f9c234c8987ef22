"""Log lines that name the module instance (the antispam server) they are about.

With several `modules:` entries, one Synapse talks to several antispam servers; every line the
module writes starts with `[<name>]`, the instance's `name` or else its `base_url`, the same
string its metrics carry in the `server` label.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any, Union

from synapse_http_antispam.verdict import Failure, Outcome, Verdict

Log = Union[logging.Logger, "logging.LoggerAdapter[Any]"]


class InstanceLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def __init__(self, logger: logging.Logger, label: str) -> None:
        super().__init__(logger, {})
        self.label = label

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        # The label as a record attribute too, for structured (JSON) log formatters.
        kwargs["extra"] = {**(kwargs.get("extra") or {}), "antispam_server": self.label}
        return f"[{self.label}] {msg}", kwargs


def instance_log(name: str, label: str) -> InstanceLog:
    return InstanceLog(logging.getLogger(name), label)


SHOWN_CHARS = 200


def _shortened(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def masked(text: str, secrets: Iterable[str]) -> str:
    """The server's text with the tokens the module sends replaced: a server may echo them."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<token>")
    return text


def report_verdict(
    log: Log, name: str, verdict: Verdict, unenforced_because: str, secrets: Iterable[str] = ()
) -> None:
    """One WARNING per failure (callback, outcome, reason, duration, status, the server's own
    error text, request id), and one INFO per refusal not enforced (`report_only`, `async`:
    callback, errcode, message, request id). Never the token, nor the request body.

    The server's error text (`detail`) is what tells "the token is wrong" from "the room is
    wrong" without running `check`; a server could echo the token in it, so `secrets` (the
    tokens the module sends) are masked there.

    Calls skipped by an open breaker are not logged one by one; the breaker logs opening and
    closing, and metrics count them.
    """
    if verdict.outcome is Outcome.WOULD_REJECT or verdict.would_shadow_ban:
        if verdict.would_shadow_ban:
            asked = "would shadow-ban"
        else:
            message = _shortened(verdict.message or "")
            asked = f"would reject: {verdict.errcode} {message!r}"
        log.info(
            "Antispam %s %s (%s, not enforced) after %.0f ms [X-Request-ID %s]",
            name,
            asked,
            unenforced_because,
            verdict.seconds * 1000,
            verdict.request_id,
        )
    if verdict.failure is None or verdict.failure is Failure.BREAKER_OPEN:
        return
    detail = masked(verdict.detail, secrets)
    log.warning(
        "Antispam %s: %s (%s) after %.0f ms%s%s [X-Request-ID %s]",
        name,
        verdict.outcome.value,
        verdict.failure.value,
        verdict.seconds * 1000,
        f", HTTP {verdict.http_status}" if verdict.http_status is not None else "",
        f": {_shortened(detail)!r}" if detail else "",
        verdict.request_id,
    )
