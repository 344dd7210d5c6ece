"""Atomic output at the library level: partial names that tell their owner, stale partials removed,
modes from the umask, --overwrite refusing what weightsmith did not write, signals and write
errors cleaning up, and the writers' and plan ops' contracts as weightsmith errors."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from weightsmith.errors import ConversionError, OutputError, QuantizationError
from weightsmith.families.ops import Derive, Drop, Regroup, Rename, run_in_memory
from weightsmith.io.atomic import (
    Terminated,
    atomic_dir,
    atomic_file,
    check_destinations,
    is_weightsmith_output,
    partial_name,
    remove_stale_partials,
    terminate_as_exception,
)
from weightsmith.io.gguf_writer import GGUFTensorSpec, write_gguf
from weightsmith.io.torch_writer import write_torch_zip
from weightsmith.io.writers import write_diffusers_component, write_safetensors, write_sat, write_torch_file


def _state():
    g = torch.Generator().manual_seed(3)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(5, generator=g)}


def _specs(state):
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items()]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped (so it no longer exists)."""
    p = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------ partial names


def test_partial_name_tells_pid_and_owner(tmp_path):
    name = partial_name(tmp_path / "out.safetensors")
    assert name.startswith(f".out.safetensors.{os.getpid()}-") and name.endswith(".partial")
    assert partial_name(tmp_path / "out.safetensors") != name  # random part
    long = partial_name(tmp_path / ("x" * 250))
    assert len(os.fsencode(long)) <= 255


def test_partial_in_use_has_this_process_in_its_name(tmp_path):
    with atomic_file(tmp_path / "m.bin") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".m.bin.{os.getpid()}-")
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]


def test_stale_partials_of_a_dead_writer_are_removed(tmp_path, capsys, caplog):
    dst = tmp_path / "out"
    dead = _dead_pid()
    stale_dir = tmp_path / partial_name(dst, dead)
    stale_dir.mkdir()
    (stale_dir / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
    stale_file = tmp_path / partial_name(dst, dead)
    stale_file.write_bytes(b"half")
    live = tmp_path / partial_name(dst, os.getppid())  # a writer that still runs: kept
    live.mkdir()
    elsewhere = tmp_path / f".out.{dead}-00000000.abcdef.partial"  # another host's: kept
    elsewhere.mkdir()
    other = tmp_path / partial_name(tmp_path / "other", dead)  # another destination's: kept
    other.mkdir()
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="weightsmith"), atomic_dir(dst) as tmp:
        (tmp / "config.json").write_text("{}")
    assert capsys.readouterr() == ("", "")  # a library prints nothing: the note is a log record
    [note] = [r.getMessage() for r in caplog.records]
    assert note.startswith("removed 2 stale partial outputs of")
    assert f"pid {dead}" in note
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and elsewhere.exists() and other.exists()


def test_a_replacement_cut_in_half_is_restored(tmp_path, caplog):
    dst = tmp_path / "out"
    old = tmp_path / partial_name(dst, _dead_pid(), suffix=".old")
    old.mkdir()
    (old / "config.json").write_text("previous")
    assert remove_stale_partials(dst) == 1
    assert (dst / "config.json").read_text() == "previous"
    assert "restored" in caplog.text


# ------------------------------------------------------------------------ modes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask(tmp_path, umask):
    state = _state()
    old = os.umask(umask)
    try:
        write_safetensors(tmp_path / "m.safetensors", _specs(state), state.items())
        write_diffusers_component(tmp_path / "c", _specs(state), state.items(), {"_class_name": "X"})
        write_sat(tmp_path / "sat", _specs(state), state.items())
        write_torch_file(tmp_path / "m.pt", _specs(state), state.items())
        write_gguf(
            tmp_path / "m.gguf",
            "wan",
            [GGUFTensorSpec("a", (4,), "F32")],
            iter([("a", np.zeros(4, np.float32))]),
        )
    finally:
        os.umask(old)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for p in [tmp_path / "m.safetensors", tmp_path / "m.pt", tmp_path / "m.gguf"]:
        assert p.stat().st_mode & 0o777 == file_mode, p
    for folder in [tmp_path / "c", tmp_path / "sat"]:
        assert folder.stat().st_mode & 0o777 == dir_mode
        for p in folder.rglob("*"):
            assert p.stat().st_mode & 0o777 == (dir_mode if p.is_dir() else file_mode), p


# ------------------------------------------------------------------------ --overwrite


def test_overwrite_refuses_an_unrelated_folder(tmp_path):
    state = _state()
    dst = tmp_path / "home"
    dst.mkdir()
    (dst / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not a weightsmith output; refusing to replace it"):
        write_diffusers_component(dst, _specs(state), state.items(), {}, overwrite=True)
    assert (dst / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_overwrite_replaces_what_weightsmith_wrote(tmp_path):
    state = _state()
    write_diffusers_component(tmp_path / "c", _specs(state), state.items(), {"_class_name": "X"}, 40)
    write_sat(tmp_path / "s", _specs(state), state.items(), diffusers_config={"a": 1})
    for folder in ("c", "s"):
        assert is_weightsmith_output(tmp_path / folder)
    write_diffusers_component(
        tmp_path / "c", _specs(state), state.items(), {"_class_name": "Y"}, overwrite=True
    )
    write_sat(tmp_path / "s", _specs(state), state.items(), overwrite=True)
    assert '"Y"' in (tmp_path / "c" / "config.json").read_text()
    (tmp_path / "empty").mkdir()
    write_sat(tmp_path / "empty", _specs(state), state.items(), overwrite=True)
    assert (tmp_path / "empty" / "latest").exists()


def test_pipeline_folder_counts_as_an_output(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "model_index.json").write_text("{}")
    (tmp_path / "p" / "README.md").write_text("x")
    assert is_weightsmith_output(tmp_path / "p")
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "config.json").write_text("{}")
    assert not is_weightsmith_output(tmp_path / "q")  # a config alone holds no weights


def test_a_verify_report_folder_counts_as_an_output(tmp_path):
    """What ``auto:`` writes beside DST (DST.verify/), so ``--overwrite`` may replace it."""
    (tmp_path / "r").mkdir()
    for name in ("report.json", "report.md", "report.html"):
        (tmp_path / "r" / name).write_text("{}")
    assert is_weightsmith_output(tmp_path / "r")
    (tmp_path / "r" / "notes.txt").write_text("mine")
    assert not is_weightsmith_output(tmp_path / "r")  # anything else in it: not ours


def test_overwrite_does_not_swap_files_and_folders(tmp_path):
    state = _state()
    (tmp_path / "m.safetensors").mkdir()
    with pytest.raises(OutputError, match="is a folder and the output is a single file"):
        write_safetensors(tmp_path / "m.safetensors", _specs(state), state.items(), overwrite=True)
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputError, match="is a file and the output is a folder"):
        write_sat(tmp_path / "out", _specs(state), state.items(), overwrite=True)
    assert (tmp_path / "m.safetensors").is_dir() and (tmp_path / "out").read_text() == "a file"


def test_check_destinations_before_any_work(tmp_path):
    model, report = tmp_path / "m.gguf", tmp_path / "m.gguf.layers.json"
    check_destinations([model, report], overwrite=False)
    report.write_text("{}")
    with pytest.raises(OutputError, match="already exists"):
        check_destinations([model, report], overwrite=False)
    check_destinations([model, report], overwrite=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="not a weightsmith output"):
        check_destinations([tmp_path / "d"], overwrite=True)


# ------------------------------------------------------------------------ signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_inside_an_atomic_output_cleans_up(tmp_path, sig):
    before = signal.getsignal(sig)
    with pytest.raises(Terminated) as info, terminate_as_exception(), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "half.safetensors").write_bytes(b"x" * 100)
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises long before this ends
    assert info.value.exit_code == 128 + sig
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(sig) is before


# ------------------------------------------------------------------------ write errors


def test_full_disk_in_the_torch_writer_is_an_oserror_not_a_runtimeerror():
    state = _state()
    with pytest.raises(OSError) as info:
        write_torch_zip("/dev/full", _specs(state), state.items())
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG])
def test_write_errors_become_output_errors(tmp_path, code):
    with pytest.raises(OutputError, match="cannot write"), atomic_file(tmp_path / "m.bin") as tmp:
        tmp.write_bytes(b"x")
        raise OSError(code, os.strerror(code))
    assert list(tmp_path.iterdir()) == []


def test_reading_errors_keep_their_own_type(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "m.bin"):
        (tmp_path / "no-such-input").read_bytes()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ contracts


def test_writers_name_a_stream_out_of_step(tmp_path):
    state = _state()
    specs = _specs(state)
    wrong = [("b.bias", state["b.bias"]), ("a.weight", state["a.weight"])]
    for write in (
        lambda s: write_safetensors(tmp_path / "m.safetensors", specs, s),
        lambda s: write_diffusers_component(tmp_path / "c", specs, s, {}),
        lambda s: write_sat(tmp_path / "s", specs, s),
        lambda s: write_torch_file(tmp_path / "m.pt", specs, s),
    ):
        with pytest.raises(ConversionError, match="tensor stream gave 'b.bias'"):
            write(iter(wrong))
        with pytest.raises(ConversionError, match="ended early"):
            write(iter(wrong[1:]))
    with pytest.raises(ConversionError, match="tensor stream gave"):
        write_torch_zip(tmp_path / "z.pt", specs, iter(wrong))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.pt"]  # write_torch_zip is not atomic itself
    (tmp_path / "z.pt").unlink()
    g = [GGUFTensorSpec("a", (4,), "F32")]
    with pytest.raises(ConversionError, match="tensor stream gave 'b'"):
        write_gguf(tmp_path / "m.gguf", "wan", g, iter([("b", np.zeros(4, np.float32))]))
    with pytest.raises(ConversionError, match="ended early"):
        write_gguf(tmp_path / "m.gguf", "wan", g, iter([]))
    with pytest.raises(QuantizationError, match="not a GGML tensor type"):
        write_gguf(tmp_path / "m.gguf", "wan", [GGUFTensorSpec("a", (4,), "Q9_X")], iter([]))
    with pytest.raises(OutputError, match="cannot store GGUF metadata"):
        write_gguf(tmp_path / "m.gguf", "wan", [], iter([]), {"k": object()})
    assert list(tmp_path.iterdir()) == []


def test_plan_ops_raise_conversion_errors():
    with pytest.raises(ConversionError, match="came out as"):
        Derive("x", (2, 2), torch.float32, lambda: torch.zeros(3)).apply([])
    with pytest.raises(ConversionError, match="two tensors map to 'y'"):
        run_in_memory([Rename("a", "y"), Rename("b", "y")], {"a": torch.zeros(1), "b": torch.zeros(1)})
    with pytest.raises(ConversionError, match="tensors left unconverted: 'b'"):
        run_in_memory([Rename("a", "y")], {"a": torch.zeros(1), "b": torch.zeros(1)})
    with pytest.raises(ConversionError, match="which the tensors lack"):
        run_in_memory([Drop("c")], {})
    with pytest.raises(ConversionError, match="at least one part"):
        Regroup(("a",), (), (0,), ())
    with pytest.raises(ConversionError, match="used exactly once"):
        Regroup(("a",), ("x", "y"), (2,), ((0,), (0,)))
    from weightsmith.families.ops import Spec, Split

    with pytest.raises(ConversionError, match="no dimension 3"):
        Regroup(("a",), ("x",), (1,), ((0,),), dim=3).out_specs([Spec("a", (4,), torch.float32)])
    with pytest.raises(ConversionError, match="not divisible"):
        Split("a", ["q", "k", "v"]).out_specs([Spec("a", (4, 2), torch.float32)])


def test_output_name_too_long_or_under_proc(tmp_path):
    with pytest.raises(OutputError, match="bytes long"), atomic_file(tmp_path / ("n" * 300)):
        pass
    for root in ("/proc", "/sys"):
        with (
            pytest.raises(OutputError, match="virtual file system"),
            atomic_dir(Path(root) / "weightsmith-out"),
        ):
            pass


def test_scratch_dir_is_removed_and_named_as_a_partial(tmp_path):
    from weightsmith.io.atomic import scratch_dir

    with scratch_dir(tmp_path / "out") as tmp:
        assert tmp.name.startswith(f".out.{os.getpid()}-") and tmp.name.endswith(".partial")
        (tmp / "fused").mkdir()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), scratch_dir(tmp_path / "out") as tmp:
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_destination_that_appears_while_writing_is_kept(tmp_path):
    appeared = "appeared while the output was being written"
    with pytest.raises(OutputError, match=appeared), atomic_file(tmp_path / "m.bin") as tmp:
        tmp.write_bytes(b"new")
        (tmp_path / "m.bin").write_bytes(b"someone else's")
    assert (tmp_path / "m.bin").read_bytes() == b"someone else's"
    assert _left_names(tmp_path) == ["m.bin"]


def test_a_huge_pid_in_a_partial_name_is_left_alone(tmp_path):
    odd = tmp_path / partial_name(tmp_path / "out", 99999999999)
    odd.mkdir()
    assert remove_stale_partials(tmp_path / "out") == 0 and odd.exists()


def _left_names(folder):
    return sorted(p.name for p in folder.iterdir())
