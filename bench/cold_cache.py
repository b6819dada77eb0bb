"""Cold Inductor compiles for a benchmark: import and call :func:`use_cold_cache` before torch.

Inductor keeps compiled kernels on disk across processes; pointing it at a fresh directory
(removed at exit) makes every compile time in a report a first compile.  Skipped with
``--cache`` or ``--quick`` on the command line, or when ``TORCHINDUCTOR_CACHE_DIR`` is set.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile


def use_cold_cache() -> bool:
    """Give Inductor a fresh cache directory unless told not to; returns whether it did."""
    if {"--cache", "--quick"} & set(sys.argv) or "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return False
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="odeserve_bench_inductor_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    return True
