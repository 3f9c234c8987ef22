"""Forward Synapse's spam-checker callbacks to an HTTP antispam server.

`HTTPAntispam` goes under `modules:` (Synapse 1.37+); `LegacyHTTPAntispam` under the old
`spam_checker:` section (tested from Synapse 1.25).
"""

__version__ = "1.0.0.dev0"

from synapse_http_antispam.legacy import LegacyHTTPAntispam
from synapse_http_antispam.module import HTTPAntispam

__all__ = ["HTTPAntispam", "LegacyHTTPAntispam", "__version__"]
