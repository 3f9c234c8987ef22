"""Forward Synapse's spam-checker callbacks to an HTTP antispam server.

`HTTPAntispam` goes under `modules:` (Synapse 1.37+); `LegacyHTTPAntispam` under the old
`spam_checker:` section (tested from Synapse 1.25).
"""

from synapse_http_antispam.legacy import LegacyHTTPAntispam
from synapse_http_antispam.module import HTTPAntispam
from synapse_http_antispam.version import __version__

__all__ = ["HTTPAntispam", "LegacyHTTPAntispam", "__version__"]
