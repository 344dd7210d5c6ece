"""Fuzzing Diffusers folders: a component folder's config.json (inspect, and convert --to original
for Wan) and a pipeline's model_index.json, mutated byte by byte and value by value. Every case
ends in exit 0 or a one-line exit 2, within a second; no output is left behind by a refusal."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from hostile import fuzz_count, fuzz_file, run_case

from weightsmith.tiny import Fixture, save_fixture

WAN = Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder")
# Values that break counts, sizes, flags and names.
EDGE_VALUES = [
    0, -1, 1, 2, 3, 7, 10**9, 2**63, 2**64, -(2**63), 2.5, 1e-300, 1e300, -0.0, True, False, None,
    "", "abc", "../x", [], [0], [1, 2, 2], [10**9, 1, 1], {}, {"a": 1}, "WanTransformer3DModel",
    "SanaTransformer2DModel", "AutoencoderKLWan", "CogVideoXTransformer3DModel",
]  # fmt: skip


def _value_mutants(cfg: dict, seed: int, count: int):
    """Valid JSON configs, each with one to three keys set to an edge value (or dropped, or added)."""
    rng = random.Random(seed)
    keys = sorted(cfg)
    for _ in range(count):
        out = dict(cfg)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(keys + ["_class_name", "num_heads", "dim", "extra"])
            if rng.random() < 0.1:
                out.pop(key, None)
            else:
                out[key] = rng.choice(EDGE_VALUES)
        text = json.dumps(out)
        # json.dumps writes inf/nan literals for overflowed floats; 1e999 is JSON that parses to inf.
        changed = {k: out.get(k, "<dropped>") for k in sorted(set(out) | set(cfg))}
        changed = {k: v for k, v in changed.items() if v != cfg.get(k, "<dropped>")}
        yield f"set {changed!s:.120}", text.replace("Infinity", "1e999")


def _warm(run_cli, commands) -> None:
    """Run each command once on the valid input, so that timings measure reading, not imports."""
    for command in commands:
        assert run_cli(*command()).code == 0


def _check_all(run_cli, cases, target: Path, commands) -> list[str]:
    _warm(run_cli, commands)
    failures = []
    for i, (label, text) in enumerate(cases):
        target.write_text(text)
        args = commands[i % len(commands)]()  # the commands take turns: each case runs one
        out = run_case(run_cli, label, *args)
        why = out.problem(len(text))
        if why:
            failures.append(f"{label} [{args[0]}]: {why}")
    return failures


def _commands(src: Path, tmp: Path):
    dst = tmp / "out"

    def inspect():
        return ("inspect", src)

    def convert():
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        return ("convert", src, dst, "--to", "original")

    return [inspect, convert]


def test_fuzz_component_config_bytes(tmp_path, run_cli):
    src = save_fixture(WAN, tmp_path / "fx")
    target = src / "config.json"
    raw = target.read_bytes()
    commands = _commands(src, tmp_path)
    _warm(run_cli, commands)
    failures = []
    for seed, cmd in enumerate(commands, 2001):
        failures += fuzz_file(run_cli, raw, target, seed, fuzz_count(200) // 2, command=lambda p, c=cmd: c())
    assert not failures, "\n".join(failures[:10])


def test_fuzz_component_config_values(tmp_path, run_cli):
    src = save_fixture(WAN, tmp_path / "fx")
    target = src / "config.json"
    cfg = json.loads(target.read_text())
    cases = _value_mutants(cfg, seed=2002, count=fuzz_count(200))
    failures = _check_all(run_cli, cases, target, _commands(src, tmp_path))
    assert not failures, "\n".join(failures[:10])


def _pipeline(tmp_path: Path) -> tuple[Path, dict]:
    pipe = tmp_path / "pipe"
    shutil.copytree(save_fixture(WAN, tmp_path / "fx"), pipe / "transformer")
    (pipe / "vae").mkdir()  # a component without weights: listed, never opened
    (pipe / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text("{}")
    index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.35.0",
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "boundary_ratio": None,
    }
    (pipe / "model_index.json").write_text(json.dumps(index))
    # A folder next to the pipeline that a traversing component name would reach.
    shutil.copytree(pipe / "transformer", tmp_path / "outside")
    return pipe, index


def test_fuzz_pipeline_model_index_bytes(tmp_path, run_cli):
    pipe, _ = _pipeline(tmp_path)
    target = pipe / "model_index.json"
    _warm(run_cli, [lambda: ("inspect", pipe)])
    failures = fuzz_file(
        run_cli,
        target.read_bytes(),
        target,
        seed=2003,
        count=fuzz_count(200),
        command=lambda p: ("inspect", pipe),
    )
    assert not failures, "\n".join(failures[:10])


def test_fuzz_pipeline_model_index_values(tmp_path, run_cli):
    pipe, index = _pipeline(tmp_path)
    target = pipe / "model_index.json"
    rng = random.Random(2004)
    names = [
        "transformer",
        "vae",
        "scheduler",
        "../outside",
        "/etc",
        "..",
        ".",
        "",
        "a/b",
        "_x",
        "transformer/",
    ]
    cases = []
    for _ in range(fuzz_count(200)):
        out = dict(index)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(names)
            out[key] = rng.choice([["diffusers", "X"], [None, None], None, "x", [], 1, {"a": 1}])
        cases.append((f"set {sorted(out, key=str)}"[:120], json.dumps(out)))
    failures = _check_all(run_cli, cases, target, [lambda: ("inspect", pipe)])
    assert not failures, "\n".join(failures[:10])
    assert (tmp_path / "outside" / "config.json").is_file()
