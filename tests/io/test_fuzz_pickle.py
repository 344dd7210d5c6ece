"""Fuzzing the torch zip/pickle reader and SAT folders: mutated and truncated valid files.

Every case must end in exit 0 or 2 with one line, within a second, allocating no more than the
file plus tests/hostile.py's slack; no pickle code runs. Seeds are fixed.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path

import torch
from hostile import fuzz_count, fuzz_file

from weightsmith.tiny import Fixture, save_fixture


def small_pt(path: Path) -> bytes:
    """A torch.save zip with the shapes of data a trainer writes: a wrapper, side data, several
    dtypes, a Parameter, a view sharing its storage."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 8, generator=g)
    sd = OrderedDict(
        a=base,
        a_view=base[1:3],
        b=torch.randn(16, generator=g).half(),
        c=torch.randn(3, 5, generator=g).bfloat16(),
        d=torch.arange(6),
        e=torch.nn.Parameter(torch.ones(2, 2)),
        f=torch.zeros(3, dtype=torch.float8_e4m3fn),
    )
    torch.save({"iteration": 7, "name": "run", "state_dict": sd}, path)
    return path.read_bytes()


def test_small_pt_reads(tmp_path, run_cli):
    small_pt(tmp_path / "m.pt")
    r = run_cli("inspect", tmp_path / "m.pt")
    assert r.code == 0, r.err


def test_fuzz_torch_pickle_inspect(tmp_path, run_cli):
    raw = small_pt(tmp_path / "seed.pt")
    failures = fuzz_file(run_cli, raw, tmp_path / "m.pt", seed=2001, count=fuzz_count(200))
    assert not failures, "\n".join(failures[:20])


def test_fuzz_torch_pickle_convert(tmp_path, run_cli):
    seed = save_fixture(Fixture("sana", "transformer", "1.0", "original", "torch"), tmp_path / "fx")
    raw = seed.read_bytes()
    n = itertools.count()

    def command(p: Path) -> tuple[object, ...]:
        return ("convert", p, tmp_path / f"out{next(n)}", "--to", "diffusers")

    failures = fuzz_file(
        run_cli, raw, tmp_path / "m.pt", seed=2002, count=fuzz_count(200) // 4, command=command
    )
    assert not failures, "\n".join(failures[:20])


def _sat_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder = save_fixture(Fixture("cogvideox", "transformer", "2b", "sat", "sat"), tmp_path / "fx")
    it = (folder / "latest").read_text().strip()
    return folder, folder / it / "mp_rank_00_model_states.pt"


def test_fuzz_sat_state_file(tmp_path, run_cli):
    folder, state = _sat_folder(tmp_path)
    raw = state.read_bytes()
    n = itertools.count()

    def command(p: Path) -> tuple[object, ...]:
        i = next(n)
        if i % 4 == 0:
            return ("convert", folder, tmp_path / f"out{i}", "--to", "diffusers")
        return ("inspect", folder)

    def write(_: Path, data: bytes) -> None:
        state.write_bytes(data)

    failures = fuzz_file(run_cli, raw, folder, seed=2003, count=fuzz_count(200), command=command, write=write)
    assert not failures, "\n".join(failures[:20])


def test_fuzz_sat_latest(tmp_path, run_cli):
    folder, _ = _sat_folder(tmp_path)
    raw = (folder / "latest").read_bytes()
    seeds = [raw, b"release\n", b"0001000\n", "\u0663\u0660\n".encode()]
    failures = []
    for i, r in enumerate(seeds):

        def write(_: Path, data: bytes) -> None:
            (folder / "latest").write_bytes(data)

        failures += fuzz_file(run_cli, r, folder, seed=2004 + i, count=fuzz_count(200) // 4, write=write)
    assert not failures, "\n".join(failures[:20])


def test_fuzz_torch_pickle_opcodes(tmp_path, run_cli):
    # A mutated zip mostly fails its CRC check; here data.pkl itself is mutated and the zip is
    # rebuilt around it with correct CRCs, so the mutants reach the pickle reader.
    import zipfile

    small_pt(tmp_path / "seed.pt")
    with zipfile.ZipFile(tmp_path / "seed.pt") as z:
        records = [(i.filename, z.read(i)) for i in z.infolist()]
    name, pkl = next((n, d) for n, d in records if n.endswith("data.pkl"))

    def write(p: Path, data: bytes) -> None:
        with zipfile.ZipFile(p, "w") as z:
            for n, d in records:
                z.writestr(n, data if n == name else d)

    failures = fuzz_file(run_cli, pkl, tmp_path / "m.pt", seed=2010, count=fuzz_count(200), write=write)
    assert not failures, "\n".join(failures[:20])
