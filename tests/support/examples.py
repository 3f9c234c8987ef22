"""How many of the config property tests' examples this environment draws: all, or a share.

The config properties check the package's own parsing, which is the same on every Synapse
release line; drawn in full they took 10 to 13 s of CPU in each of the ten lines' environments
(about 7 % of each). tox draws them in full on the newest line (and under mutation testing) and a
fifth of them on the others (`PROPERTY_EXAMPLES_SHARE`, 1 outside tox), so every line still
checks every property against its own Python and Twisted.
"""

from __future__ import annotations

import os

_RAW = os.environ.get("PROPERTY_EXAMPLES_SHARE", "1")
try:
    SHARE = float(_RAW)
except ValueError:
    raise ValueError(f"PROPERTY_EXAMPLES_SHARE: expected a number, got {_RAW!r}") from None
if not 0 < SHARE <= 1:
    raise ValueError(f"PROPERTY_EXAMPLES_SHARE: expected above 0 and at most 1, got {_RAW}")


def examples(full: int) -> int:
    """`full` examples scaled by this environment's share, never fewer than 10."""
    return max(min(full, 10), round(full * SHARE))
