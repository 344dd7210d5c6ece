"""Command-line choices asked of the family registry when click needs them, never spelled out.

``--family`` lists the registered families and ``--to`` their layouts, so a new family shows up
in every command by registering. The registry is read lazily (when click validates a value or
renders --help), so defining the commands costs no model imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click


class RegistryChoice(click.Choice):
    """A ``click.Choice`` whose choices come from ``source()`` each time click asks for them."""

    def __init__(self, source: Callable[[], Sequence[str]]) -> None:
        # click.Choice.__init__ would store a fixed list; only its case rule is kept.
        self._source = source
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._source())


def _families() -> list[str]:
    from weightsmith.families import families

    return families()


def _layouts() -> list[str]:
    from weightsmith.families import layouts

    return layouts()


FAMILY = RegistryChoice(_families)
LAYOUT = RegistryChoice(_layouts)
