"""Log lines that name the module instance (the antispam server) they are about.

With several `modules:` entries, one Synapse talks to several antispam servers; every line the
module writes starts with `[<name>]`, the instance's `name` or else its `base_url`, the same
string its metrics carry in the `server` label.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class InstanceLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def __init__(self, logger: logging.Logger, label: str) -> None:
        super().__init__(logger, {"antispam_server": label})
        self.label = label

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return f"[{self.label}] {msg}", kwargs


def instance_log(name: str, label: str) -> InstanceLog:
    return InstanceLog(logging.getLogger(name), label)
