"""One tensor's bytes of a file as a numpy array: mapped in place, or read with ``preadv``.

A GGUF job on numpy arrays reads every source tensor once and quantizes it. Copying 1.2 GB out of
the page cache into fresh arrays cost ~0.4 CPU s on the Wan-shaped speed bench (bench/
bench_quantize_speed.py), time the kernels could not use on a 2-core machine. A read-only memory
map of the tensor's own range hands the kernels the page cache's pages instead: no copy, and the
map lives exactly as long as the array (and its views) do, so a streamed run never holds more
than its tensors in flight (a map of the whole file would keep every touched page in our RSS).

A file that shrinks while it is mapped would raise SIGBUS on the next touch instead of an error:
the size is checked just before each map, which is the window preadv would also have (a file
rewritten under a running job is not something either read can make safe).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

from weightsmith.errors import CorruptFileError

if TYPE_CHECKING:
    import numpy as np

# Below this a map's set-up (a syscall pair, page-table work) costs more than the copy it saves.
MAP_MIN_BYTES = 1 << 20
# Ask the kernel to fill the page tables as it maps (Linux): the faults are then taken by the
# reading thread, not by the quantizing threads that touch the pages later.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_CAN_MAP = hasattr(mmap, "MAP_SHARED") and hasattr(mmap, "PROT_READ")  # POSIX maps (not Windows')


def read_range(
    path: Path, start: int, shape: tuple[int, ...], dtype: str, nbytes: int, name: str
) -> np.ndarray:
    """The ``nbytes`` at ``start`` of ``path`` as an array of ``shape``/``dtype``: mapped
    read-only where that pays (large, aligned), else a fresh writable copy."""
    import numpy as np

    dt = np.dtype(dtype)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            if nbytes >= MAP_MIN_BYTES and start % dt.itemsize == 0 and _CAN_MAP:
                return _mapped(fd, path, start, shape, dt, nbytes, name)
            return _copied(fd, start, shape, dt, nbytes)
        finally:
            os.close(fd)
    except OSError as e:
        raise _failed(path, name, e.strerror or str(e)) from None


def _mapped(
    fd: int, path: Path, start: int, shape: tuple[int, ...], dt: np.dtype, nbytes: int, name: str
) -> np.ndarray:
    import numpy as np

    if os.fstat(fd).st_size < start + nbytes:
        raise _failed(path, name, "the file ended early")
    base = start - start % mmap.ALLOCATIONGRANULARITY
    m = mmap.mmap(
        fd, start + nbytes - base, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ, offset=base
    )
    # the array holds the map (its buffer's owner); dropping the last view unmaps it
    return np.frombuffer(m, dtype=dt, count=nbytes // dt.itemsize, offset=start - base).reshape(shape)


def _copied(fd: int, start: int, shape: tuple[int, ...], dt: np.dtype, nbytes: int) -> np.ndarray:
    """A fresh array read straight into with ``preadv`` (the GIL is released while the disk reads)."""
    import numpy as np

    out = np.empty(shape, dtype=dt)
    view = memoryview(out.reshape(-1).view(np.uint8))
    pos = 0
    while pos < nbytes:
        n = os.preadv(fd, [view[pos:]], start + pos)
        if n <= 0:
            raise OSError(0, "the file ended early")
        pos += n
    return out


def _failed(path: Path, name: str, why: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path}: reading tensor {name!r} failed ({why})",
        hint="the file may have changed or be damaged; re-download it",
    )
