"""Progress bars that show on a terminal and stay quiet in CI and pipes."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


def wanted() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[Any]:
    if not (enabled and wanted()):
        yield _Null()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False) as t:
        yield t
