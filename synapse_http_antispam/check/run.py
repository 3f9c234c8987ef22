"""Runs the check: the config read, then the ping, then one synthetic request per callback."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs

from twisted.internet import defer

from synapse_http_antispam import __version__
from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES, NAMES
from synapse_http_antispam.check.homeserver import (
    LEGACY_CLASS,
    CheckError,
    entry_problems,
    find_config_files,
    find_entries,
    read_config_files,
    validate,
)
from synapse_http_antispam.check.installed import synapse_info, would_send
from synapse_http_antispam.check.judge import Row, judge, row_for
from synapse_http_antispam.check.report import Report
from synapse_http_antispam.check.synthetic import (
    CHECK_HEADER,
    CHECK_HEADER_VALUE,
    synthetic_payload,
)
from synapse_http_antispam.config import BreakerConfig, Config
from synapse_http_antispam.forwarder import Forwarder
from synapse_http_antispam.synapse_compat import (
    synapse_version_string,
)
from synapse_http_antispam.verdict import Verdict


@attrs.frozen
class Options:
    config_paths: tuple[str, ...]
    probe: bool = True
    network: bool = True


def _check_config(probe_config: Config) -> Config:
    """The config the check's forwarder runs with: the module's, minus what would let one
    answer hide the others (the breaker) or queue the probes behind each other."""
    return attrs.evolve(
        probe_config,
        breaker=BreakerConfig(failure_threshold=0),
        max_concurrency=max(probe_config.max_concurrency, len(CALLBACKS) + 1),
    )


def prepare(options: Options) -> tuple[Report, Config | None]:
    """Everything before the network: read, find, validate, ask Synapse. Pure but for files."""
    report = Report()
    try:
        report.files, notes = find_config_files(options.config_paths)
        report.notes.extend(notes)
        merged, notes = read_config_files(report.files)
        report.notes.extend(notes)
    except CheckError as e:
        report.fatal.append(str(e))
        return report, None
    report.entries = find_entries(merged)
    fatal, warnings = entry_problems(report.entries)
    report.fatal.extend(fatal)
    report.warnings.extend(warnings)
    config: Config | None = None
    for entry in report.entries:
        if entry.door is None:
            continue
        result = validate(entry)
        if isinstance(result, str):
            report.config_errors.append(result)
        elif config is None:
            report.entry, config = entry, result
    report.synapse = synapse_info()
    report.synapse_checked = True
    if config is None or report.entry is None:
        return report, None
    info = report.synapse
    if report.entry.door == "modules" and info is not None and info.modules is None:
        report.fatal.append(
            f"Synapse {info.version} has no `modules:` section (it arrived in 1.37): use "
            f"{LEGACY_CLASS} under `spam_checker:`"
        )
    send, unsupported = would_send(report.entry, config, info)
    report.door_callbacks = send
    report.not_enabled = [n for n in CALLBACKS if not config.is_enabled(n)]
    for name in unsupported:
        why = ""
        if report.entry.door == "spam_checker" and name not in LEGACY_NAMES:
            why = "the spam_checker: door cannot carry it"
        report.rows.append(row_for(name, config, None, "not_registered", why))
    return report, config


async def probe(report: Report, config: Config, options: Options, reactor: Any = None) -> None:
    """Ping, then one synthetic request per callback the module would send."""
    forwarder = Forwarder(
        _check_config(config),
        reactor=reactor,
        user_agent=f"synapse-http-antispam/{__version__} Synapse/{synapse_version_string()}",
        extra_headers={CHECK_HEADER: CHECK_HEADER_VALUE},
    )
    report.base_url = forwarder.url
    names = report.door_callbacks or []
    try:
        ping = await forwarder.ping_once()
        report.ping = {
            "outcome": ping.outcome,
            "http_status": ping.http_status,
            "seconds": round(ping.seconds, 4),
            "id": ping.ping_id,
        }
        if not options.probe:
            rows = [row_for(n, config, None, "not_probed") for n in names]
        else:
            now_ms = int(time.time() * 1000)

            async def one(name: str) -> Verdict:
                payload = await synthetic_payload(name, config, now_ms)
                spec = CALLBACKS[name]
                return await forwarder.check(name, spec.kind, payload, report=False)

            if ping.reachable:
                # One at a time, over the one pooled connection, as under light load: the
                # latency shown is the server's own, not a queue this check made.
                verdicts = [await one(n) for n in names]
            else:
                # Nothing answers: waiting for each deadline in turn would only add them up.
                verdicts = await defer.gatherResults(
                    [defer.ensureDeferred(one(n)) for n in names], consumeErrors=True
                )
            rows = [row_for(n, config, v) for n, v in zip(names, verdicts)]
    finally:
        await forwarder.close()
    report.rows = in_catalogue_order([*report.rows, *rows])


def in_catalogue_order(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: NAMES.index(r.callback))


async def run_check(options: Options, reactor: Any = None) -> Report:
    """The whole check. Never raises for anything the admin can fix: it all goes in the report."""
    report, config = prepare(options)
    if config is None or report.entry is None:
        return report
    if options.network:
        await probe(report, config, options, reactor)
    else:
        report.base_url = config.base_url
        report.rows = in_catalogue_order(
            [
                *report.rows,
                *(
                    row_for(n, config, None, "not_probed", "not sent (--offline)")
                    for n in report.door_callbacks or []
                ),
            ]
        )
    problems, warnings = judge(
        config, config.enabled_callbacks is not None, report.ping, report.rows
    )
    report.problems.extend(problems)
    report.warnings.extend(warnings)
    return report
