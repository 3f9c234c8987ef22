"""The docs cannot drift from the code: every config key, every callback, the generated table;
and they hold together: every relative link and anchor resolves, every YAML example parses and
every module config in one passes the module's own parser.

Run `UPDATE_DOCS=1 pytest tests/unit/test_docs.py` to rewrite the generated part.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from synapse_http_antispam.catalogue import CALLBACKS
from synapse_http_antispam.config import BREAKER_KEYS, KEYS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
WIRE_PROTOCOL = DOCS / "wire-protocol.md"
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


def section(path: Path, heading: str, level: int = 2) -> str:
    """The text under a heading of that level, up to the next heading of the same level or a
    higher one (or the end of the file)."""
    marks = "#" * level
    match = re.search(
        rf"^{marks} {re.escape(heading)}\n(.*?)(?=^#{{1,{level}}} |\Z)",
        path.read_text(),
        re.M | re.S,
    )
    assert match, f"{path.relative_to(ROOT)} has no '{marks} {heading}' section"
    return match.group(1)


def test_generated_callback_table_is_current() -> None:
    text = WIRE_PROTOCOL.read_text()
    table = render_callback_table()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    if os.environ.get("UPDATE_DOCS"):
        text = text[:start] + "\n" + table + "\n" + text[end:]
        WIRE_PROTOCOL.write_text(text)
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    assert text[start:end].strip() == table


def test_config_reference_names_every_key() -> None:
    reference = section(DOCS / "configuration.md", "Configuration reference", level=1)
    for key in (*KEYS, *BREAKER_KEYS):
        assert f"`{key}`" in reference, key


def test_protocol_reference_documents_every_callback() -> None:
    protocol = section(WIRE_PROTOCOL, "Wire protocol", level=1)
    for name in CALLBACKS:
        assert f"\n## `{name}`\n" in protocol, name


def _yaml_block(text: str) -> dict[str, object]:
    import yaml

    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match
    [entry] = yaml.safe_load(match.group(1))["modules"]
    assert entry["module"] == "synapse_http_antispam.HTTPAntispam"
    config: dict[str, object] = entry["config"]
    return config


def test_meowlnir_and_draupnir_sections_show_the_tested_configs() -> None:
    """The configs the front page and docs/peers.md give are the ones
    tests/integration/test_peers.py boots."""
    from tests.support.peers import DraupnirModel, MeowlnirModel

    with MeowlnirModel() as meowlnir, DraupnirModel() as draupnir:
        tested_configs = {
            (DOCS / "peers.md", "With Meowlnir", 2): meowlnir.module_config(),
            (DOCS / "peers.md", "With Draupnir", 2): draupnir.module_config(),
            (README, "Meowlnir", 3): meowlnir.module_config(),
            (README, "Draupnir", 3): draupnir.module_config(),
        }
    for (path, heading, level), tested in tested_configs.items():
        shown = _yaml_block(section(path, heading, level))
        for placeholder in ("base_url", "authorization"):
            shown.pop(placeholder)
            tested.pop(placeholder)
        assert shown == tested, (path.name, heading)


def test_several_servers_section_shows_the_tested_config() -> None:
    """The two entries docs/several-servers.md gives are the ones
    tests/integration/test_several_servers.py boots (through modules:), placeholders aside."""
    import yaml

    from tests.integration.test_several_servers import several_servers_config

    text = section(DOCS / "several-servers.md", "Several servers", level=1)
    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match
    shown = yaml.safe_load(match.group(1))["modules"]
    tested = several_servers_config("<url>", "<secret>", "<url>", "<secret>", "modules")
    for entries in (shown, tested):
        for entry in entries:
            entry["config"].pop("base_url")
            entry["config"].pop("authorization")
    assert shown == tested


# --- Every document: links resolve, YAML parses, module configs pass the module's parser ---


def documents() -> list[Path]:
    """The Markdown an admin reads: the front page, the migration guide, the changelog and
    every page under docs/."""
    fronts = [ROOT / "README.md", ROOT / "MIGRATING.md", ROOT / "CHANGELOG.md"]
    return [*fronts, *sorted(DOCS.glob("*.md"))]


FENCE = re.compile(r"^ *```.*?^ *```[ \t]*$", re.M | re.S)
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (a `[x](y)` or `# x` shown as
    code is no link or heading)."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "code", text, flags=re.S)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup and punctuation dropped except `-` and `_`,
    lower-case, each space a `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 ... for repeated ones."""
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text())):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_github_slug() -> None:
    assert github_slug("Check your set-up") == "check-your-set-up"
    assert github_slug("`check_event_for_spam`") == "check_event_for_spam"
    assert github_slug("1. From `spam_checker:` to `modules:`") == "1-from-spam_checker-to-modules"
    assert github_slug("2. From the public `synapse-http-antispam` 0.5.x") == (
        "2-from-the-public-synapse-http-antispam-05x"
    )


def relative_links(path: Path) -> list[str]:
    text = prose(path.read_text())
    targets = LINK.findall(text) + LINK_DEFINITION.findall(text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    """A relative link names a file or directory of the repository, and its `#anchor` a
    heading of that file (GitHub's slug rules)."""
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or not linked.resolve().is_relative_to(ROOT):
            broken.append(f"{target}: no such file")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, broken


def test_links_are_found() -> None:
    """The link test sees links (a regex that matches nothing would pass it)."""
    assert "MIGRATING.md" in relative_links(ROOT / "README.md")
    assert "#config-values-now-checked" in relative_links(ROOT / "MIGRATING.md")


# A block that shows only some keys of a module's `config:` starts with this comment.
PARTIAL = "# in the module's config:"
PLACEHOLDER = re.compile(r"<[^<>]+>")
MODULE_CLASSES = {
    "modules": "synapse_http_antispam.HTTPAntispam",
    "spam_checker": "synapse_http_antispam.LegacyHTTPAntispam",
}


def yaml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in documents():
        text = path.read_text()
        for match in re.finditer(r"^( *)```yaml\n(.*?)^ *```", text, re.M | re.S):
            line = text[: match.start()].count("\n") + 1
            body = re.sub(rf"^{match.group(1)}", "", match.group(2), flags=re.M)
            blocks.append((f"{path.relative_to(ROOT)}:{line}", body))
    return blocks


def module_configs(block: str) -> list[tuple[str, Any]]:
    """The module configs a YAML block holds, by this rule:

    * a block with a top-level `modules:` or `spam_checker:` is a homeserver.yaml fragment:
      each entry whose `module` is in `synapse_http_antispam` must name the class of its
      section (`HTTPAntispam` under `modules:`, `LegacyHTTPAntispam` under `spam_checker:`,
      which Synapse also takes as one mapping), and its `config:` is a whole module config;
      entries of other modules are not ours;
    * a block whose first line is the comment `# in the module's config:` shows some keys of a
      module's `config:` alone: they are checked inside a config with a `base_url`;
    * any other block fails: each example must be recognisable as one of the two, so that
      none is skipped without saying so.
    """
    import yaml

    loaded = yaml.safe_load(block)
    if block.lstrip().startswith(PARTIAL):
        assert isinstance(loaded, dict), "a partial config must be a mapping of module keys"
        return [("partial", {"base_url": "http://localhost:8081/antispam", **loaded})]
    assert isinstance(loaded, dict) and set(loaded) & set(MODULE_CLASSES), (
        f"neither a homeserver fragment (modules: / spam_checker:) nor marked {PARTIAL!r}"
    )
    configs = []
    for section, cls in MODULE_CLASSES.items():
        entries = loaded.get(section) or []
        for number, entry in enumerate([entries] if isinstance(entries, dict) else entries):
            module = entry.get("module", "")
            if module.startswith("synapse_http_antispam"):
                assert module == cls, f"{section}: {module} (this section takes {cls})"
                configs.append((f"{section}.<item {number}>", entry.get("config")))
    assert configs, "a homeserver fragment without synapse_http_antispam in it"
    return configs


@pytest.fixture(scope="module")
def host_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files named in the examples exist on the admin's host, not here: a token file and a CA
    certificate stand in for them."""
    import trustme

    folder = tmp_path_factory.mktemp("host")
    token, ca = folder / "token", folder / "ca.pem"
    token.write_text("secret\n")
    ca.write_bytes(trustme.CA().cert_pem.bytes())
    return {"authorization_path": str(token), "ca_file": str(ca)}


@pytest.mark.parametrize("where,block", yaml_blocks(), ids=[w for w, _ in yaml_blocks()])
def test_every_yaml_example_is_a_valid_config(
    where: str, block: str, host_files: dict[str, str]
) -> None:
    """Every ```yaml block parses (PyYAML, as Synapse reads homeserver.yaml), and every module
    config in it passes the module's own parser (`module_configs` says which are configs).
    A placeholder in angle brackets (`<management room ID>`, `<antispam secret ...>`) is what
    the admin writes there: it is filled in with a word before parsing."""
    from synapse_http_antispam.config import parse_config

    for name, config in module_configs(block):
        assert isinstance(config, dict), f"{name}: config: is not a mapping"
        real = {key: host_files.get(key, fill_in(value)) for key, value in config.items()}
        parse_config(real)


def fill_in(value: Any) -> Any:
    if isinstance(value, str):
        return PLACEHOLDER.sub("placeholder", value)
    if isinstance(value, dict):
        return {key: fill_in(item) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_in(item) for item in value]
    return value


def test_placeholders_are_filled_in() -> None:
    url = "http://localhost:29339/_meowlnir/antispam/<management room ID>"
    assert fill_in({"base_url": url, "skip": {"x": [{"y": "<a b>"}]}}) == {
        "base_url": "http://localhost:29339/_meowlnir/antispam/placeholder",
        "skip": {"x": [{"y": "placeholder"}]},
    }


def test_yaml_examples_are_found() -> None:
    names = {where.partition(":")[0] for where, _ in yaml_blocks()}
    assert {"README.md", "MIGRATING.md"} <= names


def test_every_docs_page_says_what_it_is_for_and_is_listed() -> None:
    """Each page under docs/ opens with its title and a one-sentence paragraph saying what it
    is for, and both indexes (docs/README.md and the front page) link it."""
    index = relative_links(DOCS / "README.md")
    front = relative_links(README)
    for page in sorted(DOCS.glob("*.md")):
        title, purpose, *_ = page.read_text().split("\n\n")
        assert re.fullmatch(r"# \S.*", title), page.name
        assert not purpose.startswith(("#", "*", "|", "`" * 3)), page.name
        assert purpose.endswith(".") and purpose.count(". ") == 0, page.name
        if page.name != "README.md":
            assert page.name in index, page.name
            assert f"docs/{page.name}" in front, page.name
