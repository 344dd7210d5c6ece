"""Atomic output: everything is written under a temporary name beside the destination and
renamed into place only when complete, so a failed or interrupted run leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from weightsmith.errors import OutputError


def _check_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise OutputError(f"{dst} already exists", hint="choose another destination or pass --overwrite")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"the folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write into {parent}", hint="check permissions")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _commit(tmp: Path, dst: Path) -> None:
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old) if dst.is_file() else dst.rename(old)
        try:
            os.replace(tmp, dst)
        except BaseException:
            old.rename(dst)
            raise
        _remove(old)
    else:
        os.replace(tmp, dst)


@contextlib.contextmanager
def atomic_file(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``dst``; rename it to ``dst`` on success."""
    dst = Path(dst)
    _check_destination(dst, overwrite)
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _commit(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; rename it to ``dst`` on success."""
    dst = Path(dst)
    _check_destination(dst, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        yield tmp
        _commit(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
