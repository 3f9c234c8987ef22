"""What `check` tells an admin, in the admin's words, tested on the functions behind it and on
checks that send nothing (the whole command against a live server is tests/unit/test_check.py)."""

from __future__ import annotations

import locale
import sys
import types
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted

from synapse_http_antispam.check import EXIT_CONFIG, EXIT_OK, Options, run_check, synapse_info
from synapse_http_antispam.check.homeserver import (
    LEGACY_CLASS,
    MODULE_CLASS,
    CheckError,
    Entry,
    doubled,
    entry_problems,
    format_config_error,
    read_config,
    read_config_files,
    shared_labels,
)
from synapse_http_antispam.check.installed import refusals_text
from synapse_http_antispam.check.judge import judge
from synapse_http_antispam.check.rows import Row, row_for
from synapse_http_antispam.config import Config, parse_config
from synapse_http_antispam.synapse_compat import BOOLS_ONLY, Capabilities, ConfigError
from synapse_http_antispam.verdict import (
    ALLOW,
    NOT_IMPLEMENTED,
    Failure,
    Outcome,
    Verdict,
    failed,
)


def test_the_synapse_line_says_what_users_see_of_a_refusal() -> None:
    """Not the version layer's "NOT_SPAM/Codes; (Codes, dict)": what reaches the user."""
    eras = [
        BOOLS_ONLY,
        Capabilities((1, 62, 0), gates_take_codes=True),
        Capabilities((1, 63, 0), gates_take_codes=True, tuples=True),
    ]
    texts = [refusals_text(caps) for caps in eras]
    assert texts == [
        "refusals show users Synapse's own M_FORBIDDEN, without the antispam server's errcode "
        "(Synapse 1.63 shows its errcode and message)",
        "refusals show users the antispam server's errcode (for messages, its message "
        "instead); Synapse 1.63 shows both",
        "refusals show users the antispam server's errcode, message and extra fields",
    ]
    for text in texts:
        assert "NOT_SPAM" not in text and "Codes" not in text


def _draupnir_rows(config: Config) -> list[Row]:
    """Draupnir's answers to the default config: its three routes served, the rest a 404."""
    served = ("check_event_for_spam", "user_may_join_room", "user_may_invite")
    return [
        row_for(
            n, config, ALLOW if n in served else attrs.evolve(NOT_IMPLEMENTED, http_status=404)
        )
        for n in (
            "check_event_for_spam",
            "user_may_join_room",
            "user_may_invite",
            "user_may_create_room",
        )
    ]


@pytest.mark.parametrize(
    "raw, rest",
    [
        (
            {},
            ". Draupnir's docs also set fail_open: {user_may_join_room: true, user_may_invite: "
            'true} and async: {check_event_for_spam: true} (docs/peers.md, "With Draupnir")',
        ),
        (
            {"fail_open": {"user_may_invite": True}, "async": {"check_event_for_spam": True}},
            ". Draupnir's docs also set fail_open: {user_may_join_room: true} "
            '(docs/peers.md, "With Draupnir")',
        ),
        (
            {
                "fail_open": {"user_may_invite": True, "user_may_join_room": True},
                "async": {"check_event_for_spam": True},
            },
            "",
        ),
        (  # what the admin wrote stays theirs, even failing closed
            {
                "fail_open": {"user_may_invite": False, "user_may_join_room": False},
                "async": {"check_event_for_spam": True},
            },
            "",
        ),
    ],
)
def test_the_suggestion_behind_draupnir_keeps_its_documented_policy(
    raw: dict[str, Any], rest: str
) -> None:
    """A list of callbacks alone would leave invites and joins failing closed and messages
    waiting; the suggestion names what Draupnir's docs set and this config lacks."""
    config = parse_config({"base_url": "http://localhost:8080/api/1/spam_check/", **raw})
    _, [warning] = judge(config, False, None, _draupnir_rows(config))
    suggested = (
        "set enabled_callbacks: [check_event_for_spam, user_may_join_room, user_may_invite]"
    )
    assert warning.endswith(suggested + rest)


def test_other_servers_get_the_list_alone() -> None:
    config = parse_config({"base_url": "http://localhost:8081/antispam"})
    _, [warning] = judge(config, False, None, _draupnir_rows(config))
    assert warning.endswith("user_may_join_room, user_may_invite]")


def test_entries_sharing_a_label_are_named_with_the_reason() -> None:
    def entry(i: int, **raw: Any) -> tuple[Entry, Config]:
        e = Entry("modules", ("modules", f"<item {i}>"), "synapse_http_antispam.HTTPAntispam", raw)
        return e, parse_config(raw)

    a = entry(0, base_url="http://a/x", name="policy")
    b = entry(1, base_url="http://b/y", name="policy")
    c = entry(2, base_url="http://a/x")
    d = entry(3, base_url="http://a/x/")
    assert shared_labels([a, c]) == []
    [same_name] = shared_labels([a, b])
    assert same_name.startswith("modules.<item 0> and modules.<item 1> have the same `name`")
    [same_url] = shared_labels([a, c, d])
    assert same_url.startswith(
        "modules.<item 2> and modules.<item 3> have the same base_url and no `name`, so they "
        "share one label, 'http://a/x'"
    )


def _conf_d(tmp_path: Path, main: list[str], extra: list[str]) -> tuple[Path, Path, Path]:
    """homeserver.yaml and conf.d/ as Debian lays them out, each with a `modules:` list."""
    import yaml

    def entries(names: list[str]) -> list[dict[str, Any]]:
        return [{"module": n, "config": {"base_url": "http://127.0.0.1:9"}} for n in names]

    conf_d = tmp_path / "conf.d"
    conf_d.mkdir(parents=True)
    main_file, extra_file = tmp_path / "homeserver.yaml", conf_d / "modules.yaml"
    main_file.write_text(yaml.safe_dump({"server_name": "x", "modules": entries(main)}))
    extra_file.write_text(yaml.safe_dump({"modules": entries(extra)}))
    return main_file, conf_d, extra_file


@pytest_twisted.ensureDeferred
async def test_a_conf_d_modules_list_replacing_another_is_named_with_both_files(
    tmp_path: Path,
) -> None:
    """Synapse merges files key by key: the later `modules:` list replaces the earlier one."""
    main_file, conf_d, extra_file = _conf_d(tmp_path, ["other.Module"], [MODULE_CLASS])
    report = await run_check(Options((str(main_file), str(conf_d)), network=False))
    info = synapse_info()
    # (Before Synapse 1.37, `modules:` itself is the configuration error.)
    assert report.exit_code == (EXIT_CONFIG if info and info.modules is None else EXIT_OK)
    [warning] = report.warnings
    assert warning.startswith(
        f"{extra_file} has a `modules:` section, which replaces the whole `modules:` of "
        f"{main_file}"
    )
    assert "so Synapse does not load other.Module." in warning

    # The reverse: this module in homeserver.yaml, another module's file in conf.d.
    main_file, conf_d, extra_file = _conf_d(tmp_path / "b", [MODULE_CLASS], ["other.Module"])
    report = await run_check(Options((str(main_file), str(conf_d)), network=False))
    assert report.exit_code == EXIT_CONFIG
    assert "is not configured" in report.fatal[0]
    [warning] = report.warnings
    assert str(extra_file) in warning and str(main_file) in warning
    assert f"so Synapse does not load {MODULE_CLASS} (this module)" in warning


def test_the_same_modules_listed_again_lose_nothing(tmp_path: Path) -> None:
    main_file, _, extra_file = _conf_d(tmp_path, [MODULE_CLASS], ["other.Module", MODULE_CLASS])
    assert read_config([str(main_file), str(extra_file)])[2] == []


def _ping(outcome: str, status: int | None, detail: str = "") -> dict[str, Any]:
    """A ping's result as run.probe records it."""
    return {
        "outcome": outcome,
        "http_status": status,
        "seconds": 0.003,
        "id": "x",
        "detail": detail,
    }


@pytest.mark.parametrize(
    "ping, problems, warnings",
    [
        (
            _ping("not_implemented", 404),
            [],
            [
                "ping: the server has no ping endpoint (HTTP 404); with do_ping: true the module "
                "logs a warning at startup (set do_ping: false); the health ping (every 15 s) "
                "counts the server as down and SynapseAntispamServerDown fires (set "
                "health_interval: 0)"
            ],
        ),
        (
            _ping("unexpected_answer", 200),
            [],
            [
                'ping: answered HTTP 200 but not {"id": <same>, "status": "ok"} (an older '
                "antispam server?); the module takes it as reachable"
            ],
        ),
        (  # Meowlnir's answer for a management room it does not know
            _ping("bad_response", 404, "M_NOT_FOUND: Antispam configuration issue"),
            [
                "ping: answered HTTP 404 M_NOT_FOUND: Antispam configuration issue: the server "
                "does not know what base_url names; the management room ID in base_url is "
                "probably wrong (Meowlnir)"
            ],
            [],
        ),
        (
            _ping("bad_response", 400, "M_BAD_JSON: no id"),
            ["ping: answered HTTP 400 M_BAD_JSON: no id"],
            [],
        ),
        (
            _ping("http_status", 308),
            [
                "ping: FAILED: redirect, not followed (HTTP 308, 3 ms): base_url should be the "
                "final URL (the module never follows redirects)"
            ],
            [],
        ),
        (  # Meowlnir before 0.7's answer to a wrong secret
            _ping("http_status", 500, "M_UNKNOWN: Invalid antispam secret"),
            [
                'ping: FAILED: credentials refused (HTTP 500, 3 ms) "M_UNKNOWN: Invalid '
                'antispam secret": check authorization / authorization_path against the '
                "server's secret"
            ],
            [],
        ),
    ],
    ids=["no-ping-endpoint", "unexpected", "unknown-room", "errcode", "redirect", "secret"],
)
def test_what_the_ping_tells_the_admin(
    ping: dict[str, Any], problems: list[str], warnings: list[str]
) -> None:
    """Each ping answer in the admin's words: the cause, the server's own text quoted, and
    what to do about it; a warning where the module works anyway."""
    config = parse_config({"base_url": "http://a.example", "do_ping": True})
    assert judge(config, True, ping, []) == (problems, warnings)


def test_what_the_callbacks_answers_tell_the_admin() -> None:
    """The problems and warnings word for word: a 404 rejection (with and without a message),
    one problem for the same failure on several callbacks, and with the default config the
    callbacks without an endpoint, with the list to set (every callback the server answered,
    a rejection or a failure included)."""
    config = parse_config({"base_url": "http://a.example"})
    connect = attrs.evolve(failed(Failure.CONNECT, False), seconds=0.01)
    not_found = Verdict(Outcome.REJECTED, errcode="M_NOT_FOUND", http_status=404, seconds=0.01)
    no_endpoint = attrs.evolve(NOT_IMPLEMENTED, http_status=404)
    verdicts = {
        "check_event_for_spam": ALLOW,
        "user_may_invite": attrs.evolve(not_found, message="Antispam configuration issue"),
        "user_may_join_room": not_found,
        "user_may_create_room": connect,
        "user_may_publish_room": connect,
        "check_login_for_spam": no_endpoint,
        "accept_make_join": no_endpoint,
    }
    rows = [row_for(name, config, verdict) for name, verdict in verdicts.items()]
    assert judge(config, False, None, rows) == (
        [
            'user_may_invite: rejected with HTTP 404 M_NOT_FOUND "Antispam configuration issue": '
            "the server does not know what base_url names (for Meowlnir: the management room "
            "ID)",
            "user_may_join_room: rejected with HTTP 404 M_NOT_FOUND: the server does not know "
            "what base_url names (for Meowlnir: the management room ID)",
            "user_may_create_room, user_may_publish_room: could not connect: is the server "
            "running, and are base_url's host and port right?",
        ],
        [
            "the server has no endpoint for 2 callbacks (check_login_for_spam, "
            "accept_make_join); the module allows them unchecked. To stop sending them, set "
            "enabled_callbacks: [check_event_for_spam, user_may_invite, user_may_join_room, "
            "user_may_create_room, user_may_publish_room]"
        ],
    )


def _entry(section: str, index: int | None, module: str = MODULE_CLASS) -> Entry:
    path = (section,) if index is None else (section, f"<item {index}>")
    return Entry(section, path, module, {})


def test_where_the_module_is_named_word_for_word() -> None:
    """A class that is none of the package's, and HTTPAntispam under `spam_checker:` where
    this Synapse has the module API or is not importable (a warning: it works from 1.37)."""
    wrong = _entry("modules", 0, "synapse_http_antispam.HTTPAntispan")
    assert entry_problems([wrong], True) == (
        [
            "modules.<item 0>: 'synapse_http_antispam.HTTPAntispan' is no class of this "
            "package; Synapse would fail to start. Use synapse_http_antispam.HTTPAntispam under "
            "`modules:` or synapse_http_antispam.LegacyHTTPAntispam under `spam_checker:`."
        ],
        [],
    )
    warning = (
        "spam_checker.<item 0>: synapse_http_antispam.HTTPAntispam belongs under `modules:`. "
        "Under `spam_checker:` it works from Synapse 1.37 (it registers its callbacks as under "
        "`modules:`), but Synapse calls the section deprecated, and before 1.37 it fails to "
        "start: move the entry to `modules:` (or use synapse_http_antispam.LegacyHTTPAntispam "
        "for the legacy section)."
    )
    for has_modules in (True, None):
        assert entry_problems([_entry("spam_checker", 0)], has_modules) == ([], [warning])
    # The modern class under `modules:` and the legacy one under `spam_checker:`: all is well.
    right = [_entry("modules", 0), _entry("spam_checker", 0, LEGACY_CLASS)]
    assert entry_problems(right, False) == ([], [])


def test_entries_for_one_server_word_for_word() -> None:
    """Every pair of entries is compared, not only neighbours: one for another server or in
    the other section between two that clash does not hide their clash."""
    a, b, c = _entry("modules", 0), _entry("modules", 1), _entry("modules", 2)
    legacy = _entry("spam_checker", 0, LEGACY_CLASS)
    invites = frozenset({"user_may_invite"})
    twice = (
        "the module is configured twice for http://a: modules.<item 0> "
        "(synapse_http_antispam.HTTPAntispam) and modules.<item 2> "
        "(synapse_http_antispam.HTTPAntispam) both send user_may_invite, so each such check "
        "would be sent to the antispam server twice. Keep one entry, or split the callbacks "
        "between them with enabled_callbacks."
    )
    assert doubled(
        [(a, "http://a", invites), (b, "http://b", invites), (c, "http://a", invites)]
    ) == [twice]
    # Every callback both send is named, in order, comma-separated.
    rooms = frozenset({"user_may_invite", "user_may_create_room", "user_may_join_room"})
    [several] = doubled([(a, "http://a", rooms), (c, "http://a", rooms - {"user_may_join_room"})])
    assert "both send user_may_create_room, user_may_invite, so each" in several
    both_doors = (
        "the module is configured twice for http://a, under both `modules:` and "
        "`spam_checker:`: modules.<item 0> (synapse_http_antispam.HTTPAntispam) and "
        "spam_checker.<item 0> (synapse_http_antispam.LegacyHTTPAntispam). Synapse loads each "
        "entry, so every check would be sent to the antispam server twice. Keep one "
        "(`modules:` from Synapse 1.37)."
    )
    found = doubled(
        [(a, "http://a", invites), (legacy, "http://a", invites), (c, "http://a", invites)]
    )
    assert found[:2] == [both_doors, twice]


def test_entries_sharing_a_label_word_for_word() -> None:
    a = (_entry("modules", 0), parse_config({"base_url": "http://a/x"}))
    b = (_entry("modules", 1), parse_config({"base_url": "http://a/x"}))
    assert shared_labels([a, b]) == [
        "modules.<item 0> and modules.<item 1> have the same base_url and no `name`, so they "
        "share one label, 'http://a/x': their metric series (server='http://a/x') add up and "
        "their log lines ([http://a/x]) look alike, so neither a dashboard nor an alert can say "
        "which entry failed. Give each entry its own `name` (for instance `name: invites` and "
        "`name: messages`)."
    ]


class _FailingModule:
    """A module whose parse_config raises what a test puts in `error`."""

    error: Exception = Exception()

    @staticmethod
    def parse_config(config: Any) -> None:
        raise _FailingModule.error


def _chained() -> Exception:
    """ValueError("outer") from KeyError("middle") from OSError("inner")."""
    try:
        try:
            raise OSError("inner")
        except OSError as inner:
            raise KeyError("middle") from inner
    except KeyError as middle:
        try:
            raise ValueError("outer") from middle
        except ValueError as outer:
            return outer


@pytest.mark.parametrize(
    "error",
    [
        # (path given as Synapse's own code gives it: positionally, so it is in .args too)
        ConfigError("expected a number", ("timeouts", "user_may_invite")),
        _chained(),
    ],
    ids=["config-error-with-path", "chained-exception"],
)
def test_a_config_error_reads_as_synapse_prints_it(error: Exception) -> None:
    """Whatever parse_config raises (a ConfigError naming a path within the module's config,
    or another exception with its causes), the text is what Synapse prints at startup."""
    loader = pytest.importorskip("synapse.util.module_loader")
    try:
        from synapse.config._base import format_config_error as synapse_format
    except ImportError:  # before Synapse 1.62 it lived beside the homeserver's main
        from synapse.app.homeserver import format_config_error as synapse_format

    entry = Entry(
        "modules", ("modules", "<item 0>"), f"{__name__}._FailingModule", {"timeouts": {}}
    )
    _FailingModule.error = error
    with pytest.raises(ConfigError) as raised:
        loader.load_module({"module": entry.module, "config": entry.raw}, entry.path)
    assert format_config_error(entry, error) == "".join(synapse_format(raised.value))


def test_config_files_as_synapse_reads_them(tmp_path: Path) -> None:
    """An empty file is skipped with a note and the files after it are still read; a file
    that cannot be read, or is not YAML, is named with the reason; `spam_checker:` lists
    replace each other like `modules:` ones; read_config_files gives the merge and notes."""
    import yaml

    empty, main, legacy = tmp_path / "00-empty.yaml", tmp_path / "10.yaml", tmp_path / "20.yaml"
    empty.write_text("")
    main.write_text(
        yaml.safe_dump({"server_name": "x", "spam_checker": [{"module": "other.Checker"}]})
    )
    legacy.write_text(yaml.safe_dump({"spam_checker": {"module": LEGACY_CLASS}}))
    merged, notes, warnings = read_config([str(empty), str(main), str(legacy)])
    assert merged == {"server_name": "x", "spam_checker": {"module": LEGACY_CLASS}}
    assert notes == [f"{empty}: empty or not a key-value map, ignored (as Synapse does)"]
    assert warnings == [
        f"{legacy} has a `spam_checker:` section, which replaces the whole `spam_checker:` of "
        f"{main} (Synapse merges config files key by key, not list by list), so Synapse does "
        "not load other.Checker. Put every entry in one `spam_checker:` list, in one of the "
        "two files."
    ]
    assert read_config_files([str(empty), str(main), str(legacy)]) == (merged, notes)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(CheckError) as raised:
        read_config([str(missing)])
    assert str(raised.value) == f"cannot read {missing}: No such file or directory"
    broken = tmp_path / "broken.yaml"
    broken.write_text("modules: [\n")
    with pytest.raises(CheckError) as raised:
        read_config([str(broken)])
    assert str(raised.value).startswith(f"{broken} is not valid YAML: ")


@pytest.mark.parametrize(
    "earlier, later, lost",
    [
        # One entry as a single mapping (as `spam_checker:` may be) is the same module.
        ([{"module": LEGACY_CLASS}], {"module": LEGACY_CLASS}, None),
        ({"module": LEGACY_CLASS}, [{"module": LEGACY_CLASS}], None),
        # What names no module (Synapse would refuse it anyway) is not counted as lost.
        (["junk", {"module": 3}, {"module": "a.One"}], [], "a.One"),
    ],
    ids=["later-mapping", "earlier-mapping", "junk"],
)
def test_what_a_later_section_drops(
    tmp_path: Path, earlier: Any, later: Any, lost: str | None
) -> None:
    import yaml

    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({"spam_checker": earlier}))
    second.write_text(yaml.safe_dump({"spam_checker": later}))
    warnings = read_config([str(first), str(second)])[2]
    if lost is None:
        assert warnings == []
    else:
        [warning] = warnings
        assert f", so Synapse does not load {lost}. Put every entry" in warning


def test_several_modules_dropped_by_a_later_list_are_named_together(tmp_path: Path) -> None:
    main_file, _, extra_file = _conf_d(tmp_path, ["a.One", "b.Two", MODULE_CLASS], [MODULE_CLASS])
    [warning] = read_config([str(main_file), str(extra_file)])[2]
    assert ", so Synapse loads none of a.One, b.Two. Put every entry" in warning


def test_the_config_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """homeserver.yaml is UTF-8 (as YAML is) under an ASCII locale too, where Python would
    otherwise read it as ASCII and fail on the first accented letter."""
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: grüße.example\n", encoding="utf-8")
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        merged, _, _ = read_config([str(path)])
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert merged == {"server_name": "grüße.example"}


@pytest_twisted.ensureDeferred
async def test_without_pyyaml_the_check_says_which_python_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` fails
    report = await run_check(Options((str(tmp_path / "homeserver.yaml"),), network=False))
    assert report.fatal == [
        "PyYAML is not installed in this Python. It comes with Synapse: run this command with "
        "the Python of Synapse's environment (or `pip install pyyaml`)."
    ]


def test_what_a_synapse_before_1_37_offers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before 1.37 there is no register function: the legacy door offers the methods Synapse's
    SpamChecker calls (as that Synapse calls the ones it has), and there is no `modules:`."""
    pytest.importorskip("synapse")

    class SpamChecker:  # a 1.36-like SpamChecker, trimmed to two of its methods
        def check_event_for_spam(self, event: Any) -> None: ...

        def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> None: ...

    spamcheck = types.ModuleType("synapse.events.spamcheck")
    setattr(spamcheck, "SpamChecker", SpamChecker)  # noqa: B010
    monkeypatch.setitem(sys.modules, "synapse.events.spamcheck", spamcheck)
    monkeypatch.setattr(
        "synapse_http_antispam.check.installed.installed_register_function", lambda: None
    )
    info = synapse_info()
    assert info is not None
    assert info.modules is None
    assert info.spam_checker == {"check_event_for_spam", "user_may_invite"}


def test_a_synapse_version_the_module_cannot_parse_is_shown_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Synapse built from a branch may call itself anything: the Synapse line shows what it
    says, not "unknown" (the version layer's word for a version it cannot compare)."""
    synapse = pytest.importorskip("synapse")
    monkeypatch.setattr(synapse, "__version__", "develop")
    info = synapse_info()
    assert info is not None and info.version == "develop"
