"""What a failure verdict tells the logs and `check`: the HTTP status seen and the server's own
error text, and nothing made up where there was no answer."""

from __future__ import annotations

import json

import pytest_twisted

from synapse_http_antispam.catalogue import Kind
from synapse_http_antispam.config import parse_config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.verdict import Failure, Outcome, Verdict
from tests.support.antispam_server import AntispamServer, Behaviour, free_port

INVITE = {"inviter": "@a:x", "invitee": "@b:x", "room_id": "!r:x"}


async def invite(url: str) -> Verdict:
    f = Forwarder(parse_config({"base_url": url, "timeout": 1.0}))
    try:
        return await f.check("user_may_invite", Kind.GATE, INVITE)
    finally:
        await f.close()


@pytest_twisted.ensureDeferred
async def test_a_server_error_keeps_its_status_and_words(server: AntispamServer) -> None:
    body = json.dumps({"errcode": "M_UNKNOWN", "error": "database is down"}).encode()
    server.set("user_may_invite", Behaviour(status=503, body=body))
    verdict = await invite(server.base_url)
    assert (verdict.outcome, verdict.failure) == (Outcome.FAILED_CLOSED, Failure.HTTP_STATUS)
    assert (verdict.http_status, verdict.detail) == (503, "M_UNKNOWN: database is down")


@pytest_twisted.ensureDeferred
async def test_no_answer_has_no_status_and_no_words() -> None:
    verdict = await invite(f"http://127.0.0.1:{free_port()}")
    assert verdict.failure is Failure.CONNECT
    assert (verdict.http_status, verdict.detail) == (None, "")
