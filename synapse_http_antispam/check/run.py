"""Runs the check: the config read, then the ping, then one synthetic request per callback."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs

from twisted.internet import defer

from synapse_http_antispam.catalogue import CALLBACKS, LEGACY_NAMES, NAMES
from synapse_http_antispam.check.homeserver import (
    LEGACY_CLASS,
    CheckError,
    Entry,
    doubled,
    entry_problems,
    find_config_files,
    find_entries,
    read_config,
    shared_labels,
    validate,
)
from synapse_http_antispam.check.installed import SynapseInfo, synapse_info, would_send
from synapse_http_antispam.check.judge import judge
from synapse_http_antispam.check.report import Instance, Report
from synapse_http_antispam.check.rows import Row, row_for
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
from synapse_http_antispam.version import __version__


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


def _instance(entry: Entry, config: Config, info: SynapseInfo | None) -> Instance:
    """An instance with everything known before the network: what it would send."""
    instance = Instance(
        entry, config.label, base_url=config.base_url, health_interval=config.health_interval
    )
    send, unsupported = would_send(entry, config, info)
    instance.door_callbacks = send
    instance.enabled = [n for n in CALLBACKS if config.is_enabled(n)]
    instance.explicit = config.enabled_callbacks is not None
    instance.not_enabled = [n for n in CALLBACKS if not config.is_enabled(n)]
    for name in unsupported:
        why = ""
        if entry.door == "spam_checker" and name not in LEGACY_NAMES:
            why = "the spam_checker: door cannot carry it"
        instance.rows.append(row_for(name, config, None, "not_registered", why))
    return instance


def prepare(options: Options) -> tuple[Report, list[tuple[Instance, Config]]]:
    """Everything before the network: read, find, validate, ask Synapse. Pure but for files.

    Returns the report so far, and each instance whose config is valid, with its config.
    """
    report = Report()
    try:
        report.files, notes = find_config_files(options.config_paths)
        report.notes.extend(notes)
        merged, notes, replaced = read_config(report.files)
        report.notes.extend(notes)
        report.general_warnings.extend(replaced)
    except CheckError as e:
        report.fatal.append(str(e))
        return report, []
    report.entries = find_entries(merged)
    info = report.synapse = synapse_info()
    report.synapse_checked = True
    has_modules = None if info is None else info.modules is not None
    fatal, warnings = entry_problems(report.entries, has_modules)
    report.fatal.extend(fatal)
    report.general_warnings.extend(warnings)
    valid: list[tuple[Instance, Config]] = []
    for entry in report.entries:
        if entry.door is None:
            continue
        result = validate(entry)
        if isinstance(result, str):
            report.instances.append(Instance(entry, entry.where, config_errors=[result]))
            continue
        instance = _instance(entry, result, info)
        report.instances.append(instance)
        valid.append((instance, result))
    # (The modern class under `spam_checker:` on such a Synapse is entry_problems' error.)
    modules = [i for i, _ in valid if i.entry.door == "modules" and i.entry.section == "modules"]
    if modules and info is not None and info.modules is None:
        report.fatal.append(
            f"Synapse {info.version} has no `modules:` section (it arrived in 1.37): use "
            f"{LEGACY_CLASS} under `spam_checker:`"
        )
    report.fatal.extend(
        doubled([(i.entry, c.base_url, frozenset(i.door_callbacks or ())) for i, c in valid])
    )
    report.general_warnings.extend(shared_labels([(i.entry, c) for i, c in valid]))
    return report, valid


async def probe(instance: Instance, config: Config, options: Options, reactor: Any = None) -> None:
    """Ping, then one synthetic request per callback the module would send."""
    forwarder = Forwarder(
        _check_config(config),
        reactor=reactor,
        user_agent=f"synapse-http-antispam/{__version__} Synapse/{synapse_version_string()}",
        extra_headers={CHECK_HEADER: CHECK_HEADER_VALUE},
    )
    names = instance.door_callbacks or []
    try:
        ping = await forwarder.ping_once()
        instance.ping = {
            "outcome": ping.outcome,
            "http_status": ping.http_status,
            "seconds": round(ping.seconds, 4),
            "id": ping.ping_id,
            "detail": ping.detail,
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
    instance.rows = in_catalogue_order([*instance.rows, *rows])


def in_catalogue_order(rows: Sequence[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: NAMES.index(r.callback))


async def run_check(options: Options, reactor: Any = None) -> Report:
    """The whole check. Never raises for anything the admin can fix: it all goes in the report."""
    report, valid = prepare(options)
    for instance, config in valid:
        if options.network:
            await probe(instance, config, options, reactor)
        else:
            offline = [
                row_for(n, config, None, "not_probed", "not sent (--offline)")
                for n in instance.door_callbacks or []
            ]
            instance.rows = in_catalogue_order([*instance.rows, *offline])
        problems, warnings = judge(config, instance.explicit, instance.ping, instance.rows)
        instance.problems.extend(problems)
        instance.warnings.extend(warnings)
    return report
