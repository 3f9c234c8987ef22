"""The homeserver fragments in compat/ stay loadable: real YAML, a real class, a valid config."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_http_antispam import HTTPAntispam, LegacyHTTPAntispam
from synapse_http_antispam.config import parse_config

COMPAT = Path(__file__).resolve().parents[2] / "compat"
DOORS = {"modules": HTTPAntispam, "spam_checker": LegacyHTTPAntispam}


def entries(section: Any) -> list[dict[str, Any]]:
    # Synapse takes `spam_checker:` as a list or as one mapping; `modules:` only as a list.
    return [section] if isinstance(section, dict) else list(section)


def test_there_is_a_fragment_for_each_door() -> None:
    names = sorted(p.name for p in COMPAT.glob("homeserver-*.yaml"))
    assert names == ["homeserver-modules.yaml", "homeserver-spam_checker.yaml"]


@pytest.mark.parametrize("door", list(DOORS))
def test_fragment_names_the_right_class_with_a_valid_config(door: str) -> None:
    loaded = yaml.safe_load((COMPAT / f"homeserver-{door}.yaml").read_text())
    assert list(loaded) == [door]
    [entry] = entries(loaded[door])
    module_path, _, class_name = entry["module"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), class_name)
    assert cls is DOORS[door]
    config = parse_config(entry["config"])
    assert config.base_url.startswith("http")
