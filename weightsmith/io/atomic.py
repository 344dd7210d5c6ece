"""Atomic output: everything is written under a temporary name beside the destination and
renamed into place only when complete, so a failed or interrupted run leaves nothing behind.

A temporary ("partial") output is named ``.DST.<pid>-<owner>.<random>.partial``: ``<pid>`` is the
writing process and ``<owner>`` a short tag of the host (and PID namespace), so a later run that
writes the same DST can tell a partial whose writer died (SIGKILL, power loss) from one that is
still being written, and remove the former. SIGTERM and SIGHUP are turned into an exception by
``terminate_as_exception`` (installed by the CLI), so those clean up like Ctrl-C does.

Outputs get the modes the user's umask asks for (files 0666 & ~umask, folders 0777 & ~umask),
not the 0600/0700 of ``tempfile``. ``--overwrite`` replaces only something weightsmith could have
written (see ``is_weightsmith_output``); it never empties an unrelated folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from weightsmith.errors import OutputError, WeightsmithError

PARTIAL = ".partial"
_OLD = ".old"  # the previous DST, moved aside for the instant of a replacement
# Longest DST name kept in a partial's name, in bytes: the rest (pid, tag, random, suffix) fits
# in the 255 bytes most file systems allow for one name.
_STEM_BYTES = 190
_NAME_MAX = 255
_VIRTUAL_FS = (Path("/proc"), Path("/sys"))
# Errors that can only be about the output, wherever they are raised while writing it.
_OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for this file system",
    errno.EROFS: "the file system is read-only",
}
# Names weightsmith writes into a component, SAT or shard folder (a pipeline folder is told by
# its model_index.json; it may hold anything the source pipeline held).
_OUTPUT_FILES = {"config.json", "diffusers_config.json", "model_config.json", "latest"}
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


# ----------------------------------------------------------------------------- names and owners


def _owner_tag() -> str:
    """8 hex digits naming this host and PID namespace: a pid means something only within them."""
    ident = socket.gethostname()
    with contextlib.suppress(OSError):
        ident += f"/{os.stat('/proc/self/ns/pid').st_ino}"
    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _stem(name: str) -> str:
    """``name`` cut (at a character boundary) to fit ``_STEM_BYTES`` once encoded."""
    while len(os.fsencode(name)) > _STEM_BYTES:
        name = name[:-1]
    return name


def partial_name(dst: str | Path, pid: int | None = None, suffix: str = PARTIAL) -> str:
    """``.DST.<pid>-<owner>.<random><suffix>``: a fresh name for a partial of ``dst`` written by
    process ``pid`` (this one by default) on this host."""
    pid = os.getpid() if pid is None else pid
    return f".{_stem(Path(dst).name)}.{pid}-{_owner_tag()}.{os.urandom(5).hex()}{suffix}"


def _partial_pattern(dst: Path) -> re.Pattern[str]:
    return re.compile(
        rf"\.{re.escape(_stem(dst.name))}\.([0-9]{{1,10}})-([0-9a-f]{{8}})\.[0-9a-f]+({re.escape(PARTIAL)}|{re.escape(_OLD)})"
    )


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (a pid we may not signal exists)."""
    if pid <= 0:
        return True  # not a pid we wrote; leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def _note(message: str) -> None:
    """One warning on the ``weightsmith.io.atomic`` logger (control bytes escaped like error
    lines); the command line prints it as a ``note:`` line, a library caller's logging decides."""
    logging.getLogger(__name__).warning("%s", WeightsmithError(message).one_line())


def remove_stale_partials(dst: str | Path) -> int:
    """Remove partial outputs of ``dst`` left by a writer on this host that no longer runs.

    A moved-aside previous DST (a run killed in the instant between its two renames) is put
    back when DST is missing. Returns how many were removed or restored; says so in one line.
    """
    dst = Path(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    pattern, tag, me = _partial_pattern(dst), _owner_tag(), os.getpid()
    removed, restored, pids = 0, 0, set()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m or m.group(2) != tag:
            continue
        pid = int(m.group(1))
        if pid == me or _alive(pid):
            continue
        path = Path(entry.path)
        try:
            if m.group(3) == _OLD and not os.path.lexists(dst):
                os.rename(path, dst)
                restored += 1
            else:
                _remove(path)
                removed += 1
            pids.add(pid)
        except OSError:
            continue
    if removed or restored:
        what = []
        if removed:
            what.append(f"removed {removed} stale partial output{'s' if removed > 1 else ''} of {dst}")
        if restored:
            what.append(f"restored {dst} from an interrupted replacement")
        by = ", ".join(str(p) for p in sorted(pids))
        _note(f"{' and '.join(what)} left by an interrupted run (pid {by})")
    return removed + restored


# ----------------------------------------------------------------------------- checks


_REPORT_FILES = frozenset({"report.json", "report.md", "report.html"})


def is_weightsmith_output(folder: str | Path) -> bool:
    """Whether ``folder`` holds what weightsmith writes, so ``--overwrite`` may replace it.

    That is: a pipeline folder (it has ``model_index.json``); or a folder holding only weights
    (``*.safetensors``, their ``.index.json``, a SAT ``latest`` with ``<iteration>/*.pt``) and the
    configs written beside them (config.json, diffusers_config.json, model_config.json), with
    at least one weights file; or a verify report folder (report.json and its .md/.html only,
    as ``quantize --scheme auto:...`` writes beside DST). An empty folder holds nothing to lose
    and may be replaced too.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if not entries:
        return True
    names = {e.name for e in entries}
    if "model_index.json" in names and os.path.isfile(folder / "model_index.json"):
        return True
    if (
        "report.json" in names
        and names <= _REPORT_FILES
        and all(e.is_file(follow_symlinks=False) for e in entries)
    ):
        return True
    weights = False
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False):
                if e.name.endswith(_WEIGHT_SUFFIXES):
                    weights = weights or e.name.endswith(".safetensors")
                elif e.name not in _OUTPUT_FILES:
                    return False
            elif e.is_dir(follow_symlinks=False) and e.name.isascii() and e.name.isdigit():
                inner = list(os.scandir(e.path))
                if not inner or not all(
                    i.is_file(follow_symlinks=False) and i.name.endswith(".pt") for i in inner
                ):
                    return False
                weights = weights or "latest" in names
            else:
                return False
        except OSError:
            return False
    return weights


def _name_max(parent: Path) -> int:
    try:
        return int(os.pathconf(parent, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _NAME_MAX


def _under_virtual_fs(parent: Path) -> Path | None:
    try:
        real = parent.resolve()
    except (OSError, RuntimeError):
        return None
    for root in _VIRTUAL_FS:
        if real == root or root in real.parents:
            return root
    return None


def check_destination(dst: str | Path, overwrite: bool, kind: str | None = None) -> None:
    """Refuse a destination that cannot or must not be written, before any work is done.

    ``kind`` is what the output will be: "file", "dir", or None (either; only what applies to
    both is checked). With ``overwrite``, an existing file may be replaced by a file; an existing
    folder only by a folder, and only when it holds a previous weightsmith output (or nothing).
    """
    dst = Path(dst)
    if not dst.name or dst.name in (".", ".."):
        raise OutputError(f"{dst} names no file or folder", hint="give the output a name")
    parent = dst.parent if str(dst.parent) else Path(".")
    limit = _name_max(parent) if parent.is_dir() else _NAME_MAX
    if len(os.fsencode(dst.name)) > limit:
        raise OutputError(
            f"the output name {dst.name[:40]!r}... is {len(os.fsencode(dst.name))} bytes long; "
            f"the file system allows at most {limit}",
            hint="choose a shorter name",
        )
    root = _under_virtual_fs(parent)
    if root is not None:
        raise OutputError(
            f"{dst} is under {root}, a virtual file system of the kernel that cannot hold files",
            hint="write the output to a folder on a disk",
        )
    if not parent.is_dir():
        raise OutputError(f"the folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write into {parent}", hint="check permissions")
    if not os.path.lexists(dst):
        return
    if not overwrite:
        raise OutputError(f"{dst} already exists", hint="choose another destination or pass --overwrite")
    if not dst.exists():
        return  # a dangling symlink: replacing it loses nothing
    is_dir = dst.is_dir()
    if not is_dir and not dst.is_file():
        raise OutputError(
            f"{dst} is not a regular file or folder (a device, pipe or socket); refusing to replace it",
            hint="choose another destination",
        )
    if is_dir and kind == "file":
        raise OutputError(
            f"{dst} is a folder and the output is a single file; refusing to replace a folder with a file",
            hint="remove it yourself or choose another destination",
        )
    if not is_dir and kind == "dir":
        raise OutputError(
            f"{dst} is a file and the output is a folder; refusing to replace a file with a folder",
            hint="remove it yourself or choose another destination",
        )
    if is_dir and not is_weightsmith_output(dst):
        raise OutputError(
            f"{dst} is a non-empty folder that is not a weightsmith output; refusing to replace it",
            hint="--overwrite replaces only a model folder weightsmith writes (Diffusers component or "
            "pipeline, SAT folder, safetensors shards); remove it yourself or choose another destination",
        )


def check_destinations(dsts: Iterable[str | Path], overwrite: bool) -> None:
    """``check_destination`` for every output a command will write (e.g. a model and its report),
    called before the work starts, so no output is written when another one would be refused."""
    for dst in dsts:
        check_destination(dst, overwrite)


# ----------------------------------------------------------------------------- signals


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is so that atomic outputs clean up.

    A BaseException like KeyboardInterrupt: ``except Exception`` must not swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended (143 for SIGTERM)."""
        return 128 + self.signum


_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While inside, SIGTERM/SIGHUP raise ``Terminated`` (once; a second one during cleanup is
    ignored). Outside the main thread signals cannot be handled, so nothing changes there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise Terminated(signum)

    previous = {}
    for s in _SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(s, h)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGHUP back while renaming or cleaning up, so neither is cut in half; a
    signal that arrives meanwhile is delivered (and raised) right after."""
    held = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if held:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ----------------------------------------------------------------------------- writing


def _remove(p: Path) -> None:
    with _signals_held():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _create(dst: Path, is_dir: bool) -> Path:
    """A fresh partial beside ``dst``, created with the modes the umask gives (not 0600/0700)."""
    parent = dst.parent if str(dst.parent) else Path(".")
    for _ in range(100):
        tmp = parent / partial_name(dst)
        try:
            if is_dir:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise OutputError(
                f"cannot create the output {dst}: {e.strerror or e}", hint=_hint(e.errno)
            ) from None
    raise OutputError(f"cannot create a temporary name beside {dst}", hint="clean up the folder")


def _hint(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space or write the output elsewhere"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check permissions, or write the output elsewhere"
    if code == errno.ENAMETOOLONG:
        return "choose a shorter name or path"
    return "check the destination"


def _is_under(name: object, folder: Path) -> bool:
    if not isinstance(name, (str, bytes, os.PathLike)):
        return False
    try:
        p = Path(os.fsdecode(name))
    except (TypeError, ValueError):
        return False
    return p == folder or folder in p.parents


def _output_error(e: OSError, dst: Path, tmp: Path) -> OutputError | None:
    """The OutputError an OSError raised while writing stands for, or None when it may be about
    an input (reading a source file), which must keep its own message."""
    mine = _is_under(e.filename, tmp) or _is_under(e.filename2, tmp)
    if e.errno not in _OUTPUT_ERRNOS and not mine:
        return None
    reason = _OUTPUT_ERRNOS.get(e.errno) or e.strerror or str(e)
    return OutputError(f"cannot write {dst}: {reason}", hint=_hint(e.errno))


def _commit(tmp: Path, dst: Path, overwrite: bool) -> None:
    with _signals_held():
        if os.path.lexists(dst):
            if not overwrite:  # it appeared while this run was writing
                raise OutputError(
                    f"{dst} appeared while the output was being written; the new output was not kept",
                    hint="choose another destination or pass --overwrite",
                )
            old = tmp.with_name(partial_name(dst, suffix=_OLD))
            os.rename(dst, old)
            try:
                os.replace(tmp, dst)
            except BaseException:
                os.rename(old, dst)
                raise
            _remove(old)
        else:
            os.replace(tmp, dst)


@contextlib.contextmanager
def _atomic(dst: Path, overwrite: bool, is_dir: bool) -> Iterator[Path]:
    check_destination(dst, overwrite, "dir" if is_dir else "file")
    remove_stale_partials(dst)
    tmp = _create(dst, is_dir)
    try:
        yield tmp
        try:
            _commit(tmp, dst, overwrite)
        except WeightsmithError:  # already says what went wrong (it is an OSError too)
            raise
        except OSError as e:
            raise OutputError(
                f"cannot put the output in place at {dst}: {e.strerror or e}", hint=_hint(e.errno)
            ) from None
    except OSError as e:  # raised by the writer in the body
        _remove(tmp)
        mapped = None if isinstance(e, WeightsmithError) else _output_error(e, dst, tmp)
        if mapped is None:
            raise
        raise mapped from e
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``dst``; rename it to ``dst`` on success."""
    with _atomic(Path(dst), overwrite, is_dir=False) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; rename it to ``dst`` on success."""
    with _atomic(Path(dst), overwrite, is_dir=True) as tmp:
        yield tmp


@contextlib.contextmanager
def scratch_dir(dst: str | Path) -> Iterator[Path]:
    """A working folder beside ``dst`` for intermediate files (e.g. a fused model converted
    again), always removed at the end. Named like a partial of ``dst``, so if the run is killed
    the next run that writes ``dst`` removes it."""
    dst = Path(dst)
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"the folder {parent} does not exist", hint="create it first")
    remove_stale_partials(dst)
    tmp = _create(dst, is_dir=True)
    try:
        yield tmp
    finally:
        _remove(tmp)
