"""The error tree's own promises: one line, control bytes escaped, a hint on every message."""

from __future__ import annotations

import json
import struct

from weightsmith.errors import CorruptFileError, InputError


def test_one_line_escapes_control_bytes_and_joins_lines():
    e = InputError("tensor 'a\x00b\x1b[2J' is\r\nbroken", hint="re-export it")
    line = e.one_line()
    assert line == "tensor 'a\\x00b\\x1b[2J' is broken; re-export it"
    assert all(ch >= " " for ch in line)


def test_cli_never_prints_raw_control_bytes(tmp_path, run_cli):
    # A safetensors header whose only tensor has a name full of control bytes and a bad dtype.
    header = {"w\x00\x07\x1b[31mred": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    p = tmp_path / "m.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    r = run_cli("inspect", p)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert not any(ch < " " and ch != "\n" for ch in r.err), repr(r.err)
    assert "dtype" in r.words


def test_hint_is_part_of_the_message():
    e = CorruptFileError("header is cut", hint="re-download it")
    assert str(e) == "header is cut; re-download it" and e.hint == "re-download it"
