"""Thread settings the command line makes for the libraries it loads.

numpy's bundled OpenBLAS starts a thread per core as it loads: ~80 ms of every quantize's start-up
on a 2-core machine (`python -c "import numpy"` 0.26 -> 0.16 s with one BLAS thread, medians),
for matrix products weightsmith never asks numpy for (its math runs in torch or in the C kernels).
"""

from __future__ import annotations

import os
import sys

BLAS_THREADS = "OPENBLAS_NUM_THREADS"


def import_numpy_without_blas_threads() -> None:
    """Import numpy with one OpenBLAS thread, unless numpy is loaded already or the user chose a
    number. The environment is given back at once (OpenBLAS reads it only as it loads), so torch's
    own BLAS and child processes see the user's settings."""
    if "numpy" in sys.modules or BLAS_THREADS in os.environ:
        return
    os.environ[BLAS_THREADS] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        os.environ.pop(BLAS_THREADS, None)
