"""Fixtures every suite shares: one real antispam test server per test module, reset for each
test (its scripted behaviours and the requests it recorded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.antispam_server import AntispamServer


@pytest.fixture(scope="module")
def antispam() -> Iterator[AntispamServer]:
    with AntispamServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_antispam(request: pytest.FixtureRequest) -> None:
    if "antispam" in request.fixturenames:
        server: AntispamServer = request.getfixturevalue("antispam")
        server.reset_behaviours()
        server.clear()
