"""The `synapse-http-antispam` command line around `run_check`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from twisted.internet import defer, task

from synapse_http_antispam.check.homeserver import (
    PACKAGE,
)
from synapse_http_antispam.check.render import render_json, render_text
from synapse_http_antispam.check.report import EXIT_CONFIG
from synapse_http_antispam.check.run import Options, run_check
from synapse_http_antispam.check.synthetic import (
    CHECK_HEADER,
    CHECK_HEADER_VALUE,
    CHECK_USER,
)
from synapse_http_antispam.version import __version__


def version_text() -> str:
    """This package's version, and the installed Synapse's where this Python can import it."""
    try:
        import synapse

        synapse_text = f"Synapse {synapse.__version__}"
    except ImportError:
        synapse_text = f"Synapse: not importable from {sys.executable}"
    return f"synapse-http-antispam {__version__}\n{synapse_text}\n"


class _Version(argparse.Action):
    """`--version`: asks Synapse for its version only when it is wanted (importing it is slow)."""

    def __init__(self, option_strings: Sequence[str], dest: str = "version", **_: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        sys.stdout.write(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synapse-http-antispam",
        description="Tools for the synapse-http-antispam Synapse module.",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check the module's config and the antispam server behind it",
        description=(
            "Read homeserver.yaml like Synapse, validate the module's config with the parser "
            "Synapse uses, say what the installed Synapse would register, then ping the "
            "antispam server and send it one synthetic request per callback (marked with the "
            f"header `{CHECK_HEADER}: {CHECK_HEADER_VALUE}` and fake IDs such as {CHECK_USER}). "
            "Exit 0: everything enabled works; 1: the antispam server does not work as "
            "configured; 2: the configuration is wrong."
        ),
    )
    check.add_argument("--version", action=_Version)
    check.add_argument(
        "-c",
        "--config-path",
        dest="config",
        action="append",
        required=True,
        metavar="PATH",
        help="homeserver.yaml, or a directory of *.yaml files; repeat like Synapse's -c "
        "(later files replace earlier top-level keys)",
    )
    check.add_argument(
        "--no-probe",
        action="store_true",
        help="only ping; send no synthetic callback requests",
    )
    check.add_argument(
        "--offline", action="store_true", help="check the config only; send nothing at all"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    check.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the module's own log lines (request bodies at DEBUG) on stderr",
    )
    return parser


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger(PACKAGE)
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    else:
        # The report says it all; the module's warnings would repeat it on stderr.
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line read; without a command, the help on stderr and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "check":
        parser.print_help(sys.stderr)
        sys.exit(EXIT_CONFIG)
    return args


async def command(args: argparse.Namespace, reactor: Any = None, out: TextIO | None = None) -> int:
    """Runs a parsed `check`, prints its report to `out` (stdout) and returns the exit code."""
    out = out or sys.stdout
    options = Options(
        config_paths=tuple(args.config), probe=not args.no_probe, network=not args.offline
    )
    colour = out.isatty() and not os.environ.get("NO_COLOR") and not args.json
    report = await run_check(options, reactor)
    out.write(render_json(report) if args.json else render_text(report, colour))
    out.flush()
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    _setup_logging(args.verbose)

    async def run(reactor: Any) -> None:
        raise SystemExit(await command(args, reactor))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
