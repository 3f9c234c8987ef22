"""`synapse-http-antispam check`: tells an admin whether the module is wired right.

Without it an admin learns of a wrong set-up from users ("I can't create rooms") or from
Synapse's log. The command reads homeserver.yaml the way Synapse does (`homeserver`), validates
the module's config with the very parser Synapse calls at startup, asks the installed Synapse
which callbacks each door would register (`installed`), then talks to the antispam server
through the module's own forwarder (`run`): a ping, and one clearly marked synthetic request
per callback the module would send (`synthetic`). Each answer becomes a row (`rows`), judged
(`judge`) into a `Report` (`report`) with one `Instance` per entry of the module, printed as
text or JSON (`render`); `cli` is the command line.

Exit codes: 0 everything the config enables works; 1 the antispam server does not work as
configured (unreachable, timeouts, refused credentials, errors, unimplemented callbacks that the
config names explicitly); 2 the configuration itself is wrong (Synapse would not start, or
would load the module wrongly: twice for one server, through both doors, or a class in the
other door's section where it cannot work). What works but may not be meant (a server without
`ping`, the modern class under `spam_checker:` on Synapse 1.37+) is a warning and leaves 0.
With several entries (one per antispam server), the exit code is the worst of them.
"""

from __future__ import annotations

from synapse_http_antispam.check.cli import build_parser, main
from synapse_http_antispam.check.homeserver import (
    LEGACY_CLASS,
    MODULE_CLASS,
    PACKAGE,
    CheckError,
    Entry,
    doubled,
    entry_problems,
    find_config_files,
    find_entries,
    format_config_error,
    read_config,
    read_config_files,
    shared_labels,
    validate,
)
from synapse_http_antispam.check.installed import SynapseInfo, synapse_info, would_send
from synapse_http_antispam.check.judge import judge
from synapse_http_antispam.check.render import render_json, render_text, summary
from synapse_http_antispam.check.report import EXIT_CONFIG, EXIT_OK, EXIT_SERVER, Instance, Report
from synapse_http_antispam.check.rows import Row, ping_text, row_for
from synapse_http_antispam.check.run import Options, prepare, probe, run_check
from synapse_http_antispam.check.synthetic import (
    CHECK_EVENT_ID,
    CHECK_HEADER,
    CHECK_HEADER_VALUE,
    CHECK_INVITEE,
    CHECK_ROOM,
    CHECK_TEXT,
    CHECK_USER,
    fake_arguments,
    synthetic_payload,
)

__all__ = [
    "CHECK_EVENT_ID",
    "CHECK_HEADER",
    "CHECK_HEADER_VALUE",
    "CHECK_INVITEE",
    "CHECK_ROOM",
    "CHECK_TEXT",
    "CHECK_USER",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_SERVER",
    "LEGACY_CLASS",
    "MODULE_CLASS",
    "PACKAGE",
    "CheckError",
    "Entry",
    "Instance",
    "Options",
    "Report",
    "Row",
    "SynapseInfo",
    "build_parser",
    "doubled",
    "entry_problems",
    "fake_arguments",
    "find_config_files",
    "find_entries",
    "format_config_error",
    "judge",
    "main",
    "ping_text",
    "prepare",
    "probe",
    "read_config",
    "read_config_files",
    "render_json",
    "render_text",
    "row_for",
    "run_check",
    "shared_labels",
    "summary",
    "synapse_info",
    "synthetic_payload",
    "validate",
    "would_send",
]
