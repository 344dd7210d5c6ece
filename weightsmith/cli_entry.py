"""The ``weightsmith`` program itself (console script, ``python -m weightsmith``).

It runs :func:`weightsmith.cli.main`, then ends the process without the interpreter's teardown,
which took ~70 ms after every command's work was done (numpy, gguf and the module tree freed one
object at a time; measured with strace between the command's end and the process's). Exit
handlers (logging, temporary folders) still run and the standard streams are flushed; with a
thread of ours still running, the process ends the usual way. Code that calls ``main`` itself
(tests, scripts) keeps the normal interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading

from weightsmith.cli import main

# Worker pools that wait for work between calls (kept for reuse): nothing of theirs is pending.
IDLE_POOLS = ("ggml-kernels", "ThreadPoolExecutor")


def entry() -> None:
    """Run the command line and end the process with its exit code."""
    try:
        main()
        code = 0
    except SystemExit as e:
        if e.code is not None and not isinstance(e.code, int):
            raise
        code = e.code or 0
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(t.is_alive() and not t.daemon and not t.name.startswith(IDLE_POOLS) for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the normal teardown runs first (CPython's own module)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say on it
            stream.flush()
    os._exit(code)
