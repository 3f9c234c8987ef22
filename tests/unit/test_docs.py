"""The README cannot drift from the code: every config key, every callback, the generated table.

Run `UPDATE_DOCS=1 pytest tests/unit/test_docs.py` to rewrite the generated part.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.config import BREAKER_KEYS, KEYS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BEGIN, END = "<!-- BEGIN callback table (generated) -->", "<!-- END callback table -->"


def render_callback_table() -> str:
    rows = [
        "| callback | Synapse | door | fails open by default | what it guards |",
        "|---|---|---|---|---|",
    ]
    for cb in CALLBACKS.values():
        door = "both" if cb.legacy else "`modules:` only"
        since = f"{cb.since}+" if cb.since[0].isdigit() else cb.since
        fails_open = "yes" if cb.fail_open else "no"
        rows.append(f"| `{cb.name}` | {since} | {door} | {fails_open} | {cb.summary} |")
    return "\n".join(rows)


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def test_generated_callback_table_is_current() -> None:
    text = README.read_text()
    table = render_callback_table()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    if os.environ.get("UPDATE_DOCS"):
        text = text[:start] + "\n" + table + "\n" + text[end:]
        README.write_text(text)
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    assert text[start:end].strip() == table


def test_config_reference_names_every_key() -> None:
    reference = section(README.read_text(), "Configuration reference")
    for key in (*KEYS, *BREAKER_KEYS):
        assert f"`{key}`" in reference, key


def test_protocol_reference_documents_every_callback() -> None:
    protocol = section(README.read_text(), "Wire protocol")
    for name in CALLBACKS:
        assert f"### `{name}`" in protocol, name


def _yaml_block(text: str) -> dict[str, object]:
    import yaml

    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match
    [entry] = yaml.safe_load(match.group(1))["modules"]
    assert entry["module"] == "synapse_http_antispam.HTTPAntispam"
    config: dict[str, object] = entry["config"]
    return config


def test_meowlnir_and_draupnir_sections_show_the_tested_configs() -> None:
    """The configs the README gives are the ones tests/integration/test_peers.py boots."""
    from tests.support.peers import DraupnirModel, MeowlnirModel

    text = README.read_text()
    with MeowlnirModel() as meowlnir, DraupnirModel() as draupnir:
        tested_configs = {
            "With Meowlnir": meowlnir.module_config(),
            "With Draupnir": draupnir.module_config(),
        }
    for heading, tested in tested_configs.items():
        shown = _yaml_block(section(text, heading))
        for placeholder in ("base_url", "authorization"):
            shown.pop(placeholder)
            tested.pop(placeholder)
        assert shown == tested, heading


def test_several_servers_section_shows_the_tested_config() -> None:
    """The two entries the README gives are the ones tests/integration/test_several_servers.py
    boots (through modules:), placeholders aside."""
    import yaml

    from tests.integration.test_several_servers import several_servers_config

    text = section(README.read_text(), "Several servers")
    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match
    shown = yaml.safe_load(match.group(1))["modules"]
    tested = several_servers_config("<url>", "<secret>", "<url>", "<secret>", "modules")
    for entries in (shown, tested):
        for entry in entries:
            entry["config"].pop("base_url")
            entry["config"].pop("authorization")
    assert shown == tested
