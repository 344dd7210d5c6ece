"""Fused CPU kernels (``native_kernels.c``), built for this machine on first use and loaded with ctypes.

Why: the torch kernels must follow ggml's float order (sequential sums, trial-by-trial searches), so
eager torch makes ~15 passes over memory per search trial; fused in C with one block per SIMD lane
the same arithmetic runs 10-20x faster on a CPU (reports/ggml_kernels.md). torch.compile was not
used: its generated code would have to be rebuilt per shape and its float order is not ours to fix.

The C source is compiled once per machine with ``-march=native -ffp-contract=off`` (no fused
multiply-adds, no fast-math: the bytes stay ggml's) into a cache folder and reused; building takes a
few seconds. Where there is no C compiler, or the build fails, quantization falls back to the torch
kernels, which give the same bytes. ``WEIGHTSMITH_GGML_BACKEND`` picks: ``auto`` (default), ``torch``
(never build), ``native`` (fail loudly if the library cannot be built).
Only CPU tensors run natively; GPUs use the torch kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightsmith.errors import QuantizationError

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_kernels.c")
ABI_VERSION = 6
BACKENDS = ("auto", "torch", "native")
#: types with a fused kernel (symbol ``ws_quantize_<name lower>``, and ``ws_quantize_imat_<name>`` with
#: importance weights for all but Q8_0, which ignores them)
NATIVE_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")  # fmt: skip
IMATRIX_TYPES = tuple(t for t in NATIVE_TYPES if t != "Q8_0")
#: elements per kernel call (row chunks run on worker threads; each chunk's energies are summed in
#: chunk order): the same for torch and numpy callers, so both measure the same SQNR
CHUNK_ELEMS = {"Q6_K": 1 << 17, "IQ4_NL": 1 << 16, "IQ4_XS": 1 << 16}
DEFAULT_CHUNK_ELEMS = 1 << 18
CFLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-Wno-psabi"]


@dataclass(frozen=True)
class BuildInfo:
    """What was loaded (or why not): shown by the benchmark and ``--debug`` logs."""

    path: Path | None
    compiler: str | None
    flags: tuple[str, ...]
    error: str | None = None


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_info: BuildInfo | None = None


def backend_setting(requested: str | None = None) -> str:
    """The backend to use: ``requested``, else ``WEIGHTSMITH_GGML_BACKEND``, else ``auto``."""
    value = (requested or os.environ.get("WEIGHTSMITH_GGML_BACKEND") or "auto").lower()
    if value not in BACKENDS:
        raise QuantizationError(
            f"unknown GGUF kernel backend {value!r}",
            hint=f"use one of {', '.join(BACKENDS)} (WEIGHTSMITH_GGML_BACKEND)",
        )
    return value


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def _accepts(cc: str, flag: str) -> bool:
    probe = subprocess.run(
        [cc, flag, "-x", "c", "-c", "-", "-o", os.devnull], input=b"int x;\n", capture_output=True, timeout=60
    )
    return probe.returncode == 0


def _march_flags(cc: str) -> list[str]:
    """``-march=native`` where the compiler knows it (x86, recent ARM), else ``-mcpu=native``, else none.

    On x86, GCC's native tuning for recent Intel cores prefers 256-bit vectors, which made the
    16-lane kernels up to 1.7x slower (Q5_0 309 vs 521 M elements/s, this machine); asking for
    512-bit vectors changes nothing on CPUs without AVX-512.
    """
    for flag in ("-march=native", "-mcpu=native"):
        if _accepts(cc, flag):
            extra = [f for f in ("-mprefer-vector-width=512",) if _accepts(cc, f)]
            return [flag, *extra]
    return []


def _cpu_signature() -> str:
    """Identifies the CPU a -march=native build is valid for (model and feature flags)."""
    parts = [platform.machine()]  # (platform.processor() runs `uname -p` on Linux: start-up time)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part", "CPU implementer"):
                    parts.append(line.strip())
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        pass
    return "\n".join(parts)


def cache_dir() -> Path:
    """Where built libraries live: ``WEIGHTSMITH_NATIVE_DIR``, else the user's cache folder."""
    env = os.environ.get("WEIGHTSMITH_NATIVE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "weightsmith" / "native"


def _private_tmp() -> Path:
    """Fallback folder in the temp dir, one per user (a shared name there could be planted)."""
    uid = getattr(os, "getuid", lambda: 0)()
    return Path(tempfile.gettempdir()) / f"weightsmith-native-{uid}"


def _check_private(folder: Path) -> None:
    """Refuse a folder someone else owns or may write to: a library loaded from it runs as us."""
    if not hasattr(os, "getuid"):
        return
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise OSError(
            f"{folder} is not private to this user (owner {st.st_uid}, mode {oct(st.st_mode & 0o777)})"
        )


def _quick_key(cc: str, extra_flags: list[str] | None, march: bool) -> str | None:
    """What decides a build, known without running the compiler: the source, the compiler's file
    (path, size, modification time), the requested flags and the CPU. Asking the compiler for its
    version and probing its flags took three compiler runs (~50 ms) at every command's start."""
    exe = shutil.which(cc)
    if exe is None:
        return None
    try:
        st = os.stat(os.path.realpath(exe))
    except OSError:
        return None
    parts = [
        SOURCE.read_bytes(),
        os.path.realpath(exe).encode(),
        f"{st.st_size}:{st.st_mtime_ns}:{march}".encode(),
        os.environ.get("WEIGHTSMITH_NATIVE_CFLAGS", "").encode(),
        " ".join(extra_flags or []).encode(),
        _cpu_signature().encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def _remembered_build(folder: Path, quick: str | None) -> tuple[Path, tuple[str, ...]] | None:
    """(library, flags) an earlier build with the same quick key made in ``folder``, if still there."""
    if quick is None:
        return None
    try:
        _check_private(folder)
        data = json.loads((folder / f"ggml_kernels-{quick}.json").read_text())
        lib = folder / str(data["library"])
        if lib.parent == folder and lib.is_file():
            return lib, tuple(str(f) for f in data["flags"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _remember_build(folder: Path, quick: str | None, lib: Path, flags: list[str]) -> None:
    if quick is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({"library": lib.name, "flags": flags}, f)
        os.replace(tmp, folder / f"ggml_kernels-{quick}.json")
    except OSError:
        pass


def build(out_dir: Path | None = None, extra_flags: list[str] | None = None, march: bool = True) -> BuildInfo:
    """Compile ``native_kernels.c`` (or reuse an earlier build with the same source, compiler, flags and
    CPU). Returns the library path, or the reason there is none; never raises for a missing compiler."""
    cc = _compiler()
    if cc is None:
        return BuildInfo(None, None, (), "no C compiler found (set CC, or install gcc)")
    target_dirs = [out_dir] if out_dir else [cache_dir(), _private_tmp()]
    quick = _quick_key(cc, extra_flags, march)
    for folder in target_dirs:
        known = _remembered_build(folder, quick)
        if known is not None:
            return BuildInfo(known[0], cc, known[1])
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, timeout=60).stdout.decode(
            errors="replace"
        )
        # WEIGHTSMITH_NATIVE_CFLAGS adds flags to every build, so that the whole test suite can be run
        # against another build variant (e.g. "-DNL=8 -mprefer-vector-width=256": 8-lane vectors).
        env_flags = shlex.split(os.environ.get("WEIGHTSMITH_NATIVE_CFLAGS", ""))
        flags = [*CFLAGS, *(_march_flags(cc) if march else []), *env_flags, *(extra_flags or [])]
    except (OSError, subprocess.SubprocessError) as exc:
        return BuildInfo(None, cc, (), f"cannot run the C compiler {cc}: {exc}")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, version.encode(), " ".join(flags).encode(), _cpu_signature().encode()])
    ).hexdigest()[:20]
    last_error = "no writable folder for the built library"
    for folder in target_dirs:
        lib = folder / f"ggml_kernels-{key}.so"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _check_private(folder)
        except OSError as exc:
            last_error = f"cannot use {folder}: {exc}"
            continue
        if lib.is_file():
            _remember_build(folder, quick, lib, flags)
            return BuildInfo(lib, cc, tuple(flags))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
            os.close(fd)
        except OSError as exc:
            last_error = f"cannot write to {folder}: {exc}"
            continue
        try:
            proc = subprocess.run(
                [cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, timeout=600
            )
            if proc.returncode != 0:
                msg = proc.stderr.decode(errors="replace").strip().splitlines()
                return BuildInfo(
                    None, cc, tuple(flags), f"{cc} failed: {msg[-1] if msg else proc.returncode}"
                )
            os.replace(tmp, lib)  # atomic: a concurrent build of the same key writes the same bytes
            _remember_build(folder, quick, lib, flags)
            return BuildInfo(lib, cc, tuple(flags))
        except (OSError, subprocess.SubprocessError) as exc:
            last_error = f"building with {cc} failed: {exc}"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return BuildInfo(None, cc, tuple(flags), last_error)


def load(path: Path) -> ctypes.CDLL:
    """Open a built library and declare its functions' signatures."""
    lib = ctypes.CDLL(str(path))
    if lib.ws_abi_version() != ABI_VERSION:
        raise OSError(f"{path} has kernel ABI {lib.ws_abi_version()}, expected {ABI_VERSION}")
    p, n = ctypes.c_void_p, ctypes.c_int64
    for prefix, names, argtypes in (
        ("ws_quantize_", NATIVE_TYPES, [p, p, n, p]),
        ("ws_dequantize_", NATIVE_TYPES, [p, p, n]),
        ("ws_quantize_imat_", IMATRIX_TYPES, [p, p, n, n, p, p]),
        ("ws_", ("F32_TO_F16",), [p, p, n, p]),
    ):
        for name in names:
            fn = getattr(lib, prefix + name.lower())
            fn.restype = ctypes.c_int
            fn.argtypes = argtypes
    return lib


def library(required: bool = False) -> ctypes.CDLL | None:
    """The process-wide library, built on first call; None (or an error if ``required``) without one."""
    global _lib, _info
    with _lock:
        if _info is None:
            info = build()
            if info.path is not None:
                try:
                    _lib = load(info.path)
                except OSError as exc:
                    info = BuildInfo(None, info.compiler, info.flags, f"cannot load {info.path}: {exc}")
            _info = info
            if info.error:
                log.debug("native GGUF kernels unavailable (%s); using the torch kernels", info.error)
            else:
                log.debug("native GGUF kernels: %s (%s %s)", info.path, info.compiler, " ".join(info.flags))
    if _lib is None and required:
        raise QuantizationError(
            f"the native GGUF kernels cannot be used: {_info.error if _info else 'not built'}",
            hint="install a C compiler (gcc), or set WEIGHTSMITH_GGML_BACKEND=torch",
        )
    return _lib


def info() -> BuildInfo | None:
    """How the library was built, once :func:`library` has been called."""
    return _info


Quantizer = Callable[..., bool]


def rows_per_chunk(name: str, n: int) -> int:
    """Rows of ``n`` elements per fused kernel call for type ``name``."""
    return max(1, CHUNK_ELEMS.get(name, DEFAULT_CHUNK_ELEMS) // max(n, 1))


def chunk_totals(rows: list[list[float]]) -> tuple[float, float]:
    """(signal, noise) totals of per-chunk energy rows, added in chunk order: the same floats
    whoever ran the chunks (torch or numpy caller, any thread schedule)."""
    signal = noise = 0.0
    for s, n in rows:
        signal += s
        noise += n
    return signal, noise


def non_finite_error(name: str) -> QuantizationError:
    return QuantizationError(
        f"cannot quantize to {name}: the tensor holds NaN or infinite values",
        hint="fix the checkpoint, or keep this tensor in F16/BF16/F32",
    )


# The quantizers take torch CPU tensors or numpy arrays alike (the GGUF job's numpy path runs
# without torch): only the address, size and layout of the buffers matter to the C code.
Array = Any


def plain_kernel(name: str, lib: ctypes.CDLL) -> Any | None:
    """The C function ``ws_quantize_<name>(x, y, n, st)`` itself (addresses and an element count;
    0 = ok), or None where ``name`` has no fused kernel. :func:`quantizer` wraps it for tensors."""
    return getattr(lib, f"ws_quantize_{name.lower()}") if name in NATIVE_TYPES else None


def quantizer(name: str, lib: ctypes.CDLL, imatrix: Array | None = None) -> Quantizer | None:
    """``fn(x, out, energy=None) -> ok`` for type ``name`` (float32 rows ``(R, n)`` in, uint8 rows out,
    contiguous CPU tensors or numpy arrays), or None where the type has no fused kernel. ``imatrix``:
    float32 ``(n,)`` importance weights, kept alive by the closure. ``ok`` is False for NaN/inf input.
    ``energy``: float64 (tensor or array) of 2 to which the kernel adds the signal energy (sum x^2)
    and the error energy (sum (decoded - x)^2) of what it quantized, measured block by block."""
    if imatrix is None:
        plain = plain_kernel(name, lib)
        if plain is None:
            return None

        def run(x: Array, out: Array, energy: Array | None = None) -> bool:
            _check(x, out)
            st = _energy_ptr(energy)
            return plain(_addr(x), _addr(out), _size(x), st) == 0  # ctypes releases the GIL

        return run
    if name not in IMATRIX_TYPES:
        return None
    weighted = getattr(lib, f"ws_quantize_imat_{name.lower()}")
    if isinstance(imatrix, np.ndarray):
        qw = np.ascontiguousarray(imatrix.reshape(-1), dtype=np.float32)
    else:
        import torch

        qw = imatrix.detach().to(device="cpu", dtype=torch.float32).contiguous()

    def run_weighted(x: Array, out: Array, energy: Array | None = None) -> bool:
        _check(x, out)
        if len(x.shape) != 2 or x.shape[1] != _size(qw):
            raise ValueError("importance weights need (rows, n) input with n weights")
        st = _energy_ptr(energy)
        rc = weighted(_addr(x), _addr(out), x.shape[0], x.shape[1], _addr(qw), st)
        if rc == 2:
            raise MemoryError("out of memory in the native GGUF kernels")
        return rc == 0

    return run_weighted


def dequantizer(name: str, lib: ctypes.CDLL) -> Quantizer | None:
    """``fn(data, out) -> ok``: uint8 rows in, float32 rows out (contiguous CPU tensors or numpy
    arrays), or None where the type has no fused kernel."""
    if name not in NATIVE_TYPES:
        return None
    fn = getattr(lib, f"ws_dequantize_{name.lower()}")

    def run(data: Array, out: Array) -> bool:
        _check(out, data)
        return fn(_addr(data), _addr(out), _size(out)) == 0

    return run


def _addr(a: Array) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data_ptr()


def _size(a: Array) -> int:
    return a.size if isinstance(a, np.ndarray) else a.numel()


def _layout(a: Array) -> tuple[bool, str, bool]:
    """(contiguous, dtype name, on the CPU) of a numpy array or a torch tensor."""
    if isinstance(a, np.ndarray):
        return a.flags.c_contiguous, a.dtype.name, True
    return a.is_contiguous(), str(a.dtype).removeprefix("torch."), a.device.type == "cpu"


def _energy_ptr(energy: Array | None) -> int | None:
    """The address of a 2-double accumulator, or None (NULL: no measuring)."""
    if energy is None:
        return None
    contiguous, dtype, cpu = _layout(energy)
    if not (dtype == "float64" and cpu and _size(energy) == 2):
        raise ValueError("the energy accumulator is a float64 CPU tensor of 2 elements")
    if not contiguous:
        raise ValueError("the energy accumulator must be contiguous")
    return _addr(energy)


def _check(x: Array, out: Array) -> None:
    """The caller guarantees this; checked anyway because a wrong pointer here corrupts memory."""
    (xc, xd, xcpu), (oc, od, ocpu) = _layout(x), _layout(out)
    if not (xc and oc and xd == "float32" and od == "uint8"):
        raise ValueError("native kernels need contiguous float32 input and uint8 output")
    if not (xcpu and ocpu):
        raise ValueError("native kernels run on CPU tensors")


def main() -> None:
    """``python -m weightsmith.kernels.ggml.native``: build now (``make`` does this once)."""
    info_ = build()
    if info_.path is None:
        print(f"native GGUF kernels not built: {info_.error}; the torch kernels will be used")
    else:
        print(f"native GGUF kernels: {info_.path}")


if __name__ == "__main__":
    main()
