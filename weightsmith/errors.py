"""One exception tree for everything a user can get wrong.

Every message says what was wrong and what to do about it; the CLI prints it on one line and
exits with ``exit_code`` (2 for bad input or usage, 1 for a failed verification gate).

Library callers may catch the builtin each error also is: a missing path is a
``FileNotFoundError``, a bad option, a malformed, unsafe or unrecognised file, or a checkpoint
that does not fit the conversion or quantization asked for a ``ValueError``, an unwritable
destination an ``OSError``. A failed verification gate (``GateFailed``) is none of these. The builtin sits after ``WeightsmithError`` in each class's bases,
so the one-argument construction below is what every one of them receives: ``str(e)`` is the
message and its hint, and ``errno``/``strerror``/``filename`` stay None.
"""

from __future__ import annotations

import re

# Raw control bytes (a NUL in a tensor name, an escape sequence in a metadata key) are shown
# escaped so that a hostile file cannot rewrite the user's terminal or split the message.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class WeightsmithError(Exception):
    """Base of every error weightsmith raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")

    def one_line(self) -> str:
        """The message as the CLI prints it: a single line."""
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(self))
        return " ".join(text.split())


class UsageError(WeightsmithError, ValueError):
    """Options that contradict each other or name something that does not exist."""


class InputError(WeightsmithError):
    """Something wrong with an input path or file."""


class NotFoundError(InputError, FileNotFoundError):
    """A path, shard or component that should be there is not."""


class UnsupportedFormatError(InputError, ValueError):
    """A file or folder whose container weightsmith does not read."""


class CorruptFileError(InputError, ValueError):
    """A file whose bytes contradict its own header: truncated, wrong magic, lying offsets."""


class UnsafeFileError(InputError, ValueError):
    """A pickle that asks to run code; it is refused, never executed."""


class DetectionError(InputError, ValueError):
    """The family, layout or variant could not be told, or contradicts what was asked for."""


class ConversionError(WeightsmithError, ValueError):
    """A checkpoint that does not fit the conversion asked for (missing or unexpected keys, shapes)."""


class QuantizationError(WeightsmithError, ValueError):
    """A tensor or scheme that cannot be quantized as asked."""


class OutputError(WeightsmithError, OSError):
    """The destination cannot be written (exists, not writable, no space)."""


class GateFailed(WeightsmithError):
    """A verification gate failed: the artifact is not faithful enough."""

    exit_code = 1
