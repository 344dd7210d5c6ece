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


def test_structured_json_limits():
    import pytest

    from weightsmith.io.structured import MAX_DEPTH, parse_json, parse_toml

    # brackets inside a string are text, not nesting
    assert parse_json('{"a": "' + "[" * 200 + '"}', "x") == {"a": "[" * 200}
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None
    for bad, words in [
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested more than"),
        ("[" * 100000, "nested too deeply"),
        ("[NaN]", "NaN is not valid JSON"),
        ("[1e999]", "is inf, not a finite number"),
        ("1" * 5000, "4300"),
        (b"\xff\xfe", "not UTF-8"),
    ]:
        with pytest.raises(CorruptFileError, match=words):
            parse_json(bad, "x")
    with pytest.raises(CorruptFileError, match="a is nan, not a finite number"):
        parse_toml("a = nan", "t")
    with pytest.raises(CorruptFileError, match="nested"):
        parse_toml("a = " + "[" * 5000, "t")


def test_library_callers_can_catch_builtins():
    import pytest

    from weightsmith.errors import (
        ConversionError,
        DetectionError,
        NotFoundError,
        OutputError,
        QuantizationError,
        UnsafeFileError,
        UnsupportedFormatError,
        UsageError,
    )

    cases = [
        (NotFoundError, FileNotFoundError),
        (UsageError, ValueError),
        (CorruptFileError, ValueError),
        (UnsupportedFormatError, ValueError),
        (OutputError, OSError),
        (UnsafeFileError, ValueError),
        (DetectionError, ValueError),
        (ConversionError, ValueError),
        (QuantizationError, ValueError),
    ]
    for cls, builtin in cases:
        with pytest.raises(builtin) as info:
            raise cls("what went wrong", hint="what to do")
        e = info.value
        # the builtin's own constructor never reinterprets the message (OSError's errno form)
        assert str(e) == "what went wrong; what to do" and e.hint == "what to do"
        assert e.message == "what went wrong" and e.one_line() == str(e)
    e = OutputError("a", hint="b")
    assert e.errno is None and e.filename is None and e.args == ("a; b",)
    assert not isinstance(NotFoundError("x"), ValueError)


def test_builtin_bases_keep_cli_one_line_and_exit_2(tmp_path, run_cli, monkeypatch):
    # NotFoundError (a FileNotFoundError) and OutputError (an OSError) still print as ours.
    import weightsmith.inspect
    from weightsmith.errors import OutputError

    r = run_cli("inspect", tmp_path / "missing.safetensors")
    assert r.code == 2 and r.err.count("\n") == 1 and r.err.startswith("error: "), r.err
    assert "Errno" not in r.err and "check the file and its permissions" not in r.err

    def refuse(path):
        raise OutputError("cannot write the report", hint="check the destination")

    monkeypatch.setattr(weightsmith.inspect, "describe", refuse)
    r = run_cli("inspect", tmp_path)
    assert r.code == 2 and r.err == "error: cannot write the report; check the destination\n", r.err


def test_atomic_output_error_raised_inside_commit_keeps_its_message(tmp_path):
    # An OutputError is an OSError: the writer's "cannot put the output in place" wrapper must
    # not swallow it.
    import pytest

    from weightsmith.errors import OutputError
    from weightsmith.io.atomic import atomic_file

    dst = tmp_path / "out.bin"
    appeared = "appeared while the output was being written"
    with pytest.raises(OutputError, match=appeared), atomic_file(dst) as tmp:
        tmp.write_bytes(b"x")
        dst.write_bytes(b"someone else")
    assert dst.read_bytes() == b"someone else"


def test_usage_errors_from_click_are_escaped_and_one_line(run_cli):
    r = run_cli("convert", "a", "b", "--to", "nowhere\x1b[2J\nx")
    assert r.code == 2 and r.err.count("\n") == 1, repr(r.err)
    assert "\x1b" not in r.err and "\\x1b" in r.err
