"""Whether to use the compiled parts (built from C where a compiler was found at install).

TRIO_SFU_PURE_PYTHON=1 turns all of them off: the fan-out's loop (trio_sfu/media/_fastpath.c) and
the AES-GCM sender (trio_sfu/transport/_srtp_gcm.c). The Python paths give the same bytes, slower.
"""

from __future__ import annotations

import os

__all__ = ["PURE_PYTHON_ENV", "compiled_wanted"]

PURE_PYTHON_ENV = "TRIO_SFU_PURE_PYTHON"


def compiled_wanted() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") in ("", "0")
