"""The homeserver fragments in compat/ stay true: real YAML, a real class, a valid config,
exactly the config the peer-model tests (tests/integration/test_peers.py) boot behind Meowlnir
and Draupnir, with each server's real port and path, and one `check` passes without a word
against a live model of its server."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import yaml

from synapse_http_antispam import HTTPAntispam, LegacyHTTPAntispam
from synapse_http_antispam.check import EXIT_OK, Options, render_text, run_check, synapse_info
from synapse_http_antispam.config import parse_config
from tests.support.doors import for_door
from tests.support.peers import DraupnirModel, MeowlnirModel

COMPAT = Path(__file__).resolve().parents[2] / "compat"
DOORS = {"modules": HTTPAntispam, "spam_checker": LegacyHTTPAntispam}
# fragment -> (door, the peer model whose tested config it shows, the real server's port)
FRAGMENTS: dict[str, tuple[str, type[MeowlnirModel] | type[DraupnirModel], int]] = {
    "homeserver-meowlnir.yaml": ("modules", MeowlnirModel, 29339),
    "homeserver-draupnir.yaml": ("modules", DraupnirModel, 8080),
    "homeserver-spam_checker.yaml": ("spam_checker", DraupnirModel, 8080),
}
PLACEHOLDER = re.compile(r"<[^>]*>")


def entries(section: Any) -> list[dict[str, Any]]:
    # Synapse takes `spam_checker:` as a list or as one mapping; `modules:` only as a list.
    return [section] if isinstance(section, dict) else list(section)


def fragment_config(name: str) -> dict[str, Any]:
    door = FRAGMENTS[name][0]
    loaded = yaml.safe_load((COMPAT / name).read_text())
    assert list(loaded) == [door]
    [entry] = entries(loaded[door])
    module_path, _, class_name = entry["module"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), class_name)
    assert cls is DOORS[door]
    config: dict[str, Any] = entry["config"]
    return config


def test_the_fragments_are_the_tested_ones() -> None:
    assert sorted(p.name for p in COMPAT.glob("homeserver-*.yaml")) == sorted(FRAGMENTS)


@pytest.mark.parametrize("name", list(FRAGMENTS))
def test_fragment_is_a_valid_config_once_filled_in(name: str) -> None:
    config = fragment_config(name)
    filled = {
        **config,
        "base_url": PLACEHOLDER.sub("!room:example.org", config["base_url"]),
        "authorization": "secret",
    }
    assert parse_config(filled).base_url.startswith("http://localhost:")


@pytest.mark.parametrize("name", list(FRAGMENTS))
def test_fragment_is_what_the_peer_tests_boot(name: str) -> None:
    """Same keys and values as the model's module_config(), and a base_url with the real
    server's port and the path the model (and the real server) serves."""
    door, model_class, port = FRAGMENTS[name]
    shown = fragment_config(name)
    with model_class() as model:
        tested = for_door(model.module_config(), door)
        model_path = urlsplit(model.base_url).path
    url = urlsplit(shown.pop("base_url"))
    assert (url.scheme, url.hostname, url.port) == ("http", "localhost", port)
    if model_class is MeowlnirModel:
        assert url.path == f"{MeowlnirModel.PREFIX}/<management room ID>"
        assert model_path.startswith(f"{MeowlnirModel.PREFIX}/")
    else:
        assert url.path == model_path
    assert PLACEHOLDER.fullmatch(shown.pop("authorization"))
    tested.pop("base_url")
    tested.pop("authorization")
    assert shown == tested


@pytest.mark.parametrize("name", list(FRAGMENTS))
@pytest_twisted.ensureDeferred
async def test_check_passes_the_fragment_cleanly(name: str, tmp_path: Path) -> None:
    """Copied as the fragment says (only the placeholders filled in, pointing at a live model
    of the server it is for), `check` exits 0 with no warning: the admin's first run after
    pasting it must not raise a doubt the fragment itself caused."""
    door, model_class, _ = FRAGMENTS[name]
    info = synapse_info()
    if door == "modules" and info is not None and info.modules is None:
        pytest.skip(f"Synapse {info.version} has no modules: section")
    text = (COMPAT / name).read_text()
    with model_class() as model:
        url = urlsplit(model.base_url)
        text = re.sub(r"http://localhost:\d+", f"http://{url.hostname}:{url.port}", text)
        if model_class is MeowlnirModel:
            text = text.replace("<management room ID>", model.management_room)
        text = PLACEHOLDER.sub(model.secret, text)
        path = tmp_path / "homeserver.yaml"
        path.write_text(f"server_name: test.local\n{text}")
        report = await run_check(Options((str(path),)))
    # An older Synapse may lack a callback the fragment names (joins before 1.59): that is
    # the release's limit, which the fragment's comments state, not the fragment's mistake.
    warnings = [w for w in report.warnings if "not registered by this Synapse" not in w]
    assert (report.exit_code, report.problems, warnings) == (EXIT_OK, [], []), render_text(report)
