"""Bad generation settings, gates files and prompt files: one `error:` line and exit 2, before any
generation runs; sizes left out are chosen to fit the model (no RuntimeError from diffusers)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from verifykit import GEN

from weightsmith.verify.tiny import save_tiny_pipeline


def _clean_error(r, *needles: str) -> None:
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and r.out == ""
    for n in needles:
        assert n in r.words, r.err


def _with_rope(pipe, dst, rope: int):
    """A copy of a tiny Wan pipeline whose rotary table holds ``rope`` positions per axis."""
    shutil.copytree(pipe, dst)
    cfg_file = dst / "transformer" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["rope_max_seq_len"] = rope
    cfg_file.write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def small_rope(wan, tmp_path_factory):
    return _with_rope(wan["pipe"], tmp_path_factory.mktemp("rope") / "pipe", 2)


def test_plain_verify_fits_the_default_size_to_the_model(small_rope, run_cli):
    # No --height/--width/--frames: the family's 480x832x81 does not fit a 2-position rotary table
    # (diffusers would end in a RuntimeError); the defaults are clipped to what fits.
    r = run_cli("verify", small_rope, small_rope, "--steps", "1", "--text-len", "8", "--no-cache")
    assert r.code == 0, r.err
    assert "reduced to 32x32, 5 frames" in r.words and "rotary table" in r.words


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--height", "64"], ["--height 64 is larger", "at most 32", "rotary table"]),
        (["--width", "1024"], ["--width 1024 is larger", "at most 32"]),
        (["--frames", "9"], ["--frames 9 is more", "at most 5"]),
    ],
)
def test_sizes_beyond_the_rotary_table_name_the_largest(small_rope, run_cli, args, needles):
    r = run_cli("verify", small_rope, small_rope, "--steps", "1", "--text-len", "8", *args)
    _clean_error(r, *needles)


BAD = [
    (["--height", "-32"], ["--height -32 is out of range", "1 to 16384"]),
    (["--height", "0"], ["--height 0 is out of range"]),
    (["--width", "1000000"], ["--width 1000000 is out of range"]),
    (["--height", "40"], ["not a multiple of 16", "pass --height 32 or 48"]),
    (["--frames", "6"], ["--frames 6", "4k+1", "pass --frames 5 or 9"]),
    (["--steps", "0"], ["--steps 0 is out of range", "1 to 1000"]),
    (["--steps", "100000"], ["--steps 100000 is out of range"]),
    (["--frames", "0"], ["--frames 0 is out of range"]),
    (["--frames", "-3"], ["--frames -3 is out of range"]),
    (["--text-len", "0"], ["--text-len 0 is out of range"]),
    (["--guidance", "nan"], ["--guidance nan is not a number"]),
    (["--guidance", "inf"], ["--guidance inf is not a number"]),
    (["--device", "meta"], ["--device meta holds no data"]),
    (["--device", "nonsense"], ["device", "use auto, cpu, cuda or cuda:N"]),
    (["--device", "cuda:99"], ["cuda", "use"]),
    (["--seeds", "abc"], ["bad --seeds 'abc'", "0-3"]),
    (["--seeds", "-1"], ["bad --seeds '-1'"]),
    (["--seeds", "5-2"], ["runs backwards"]),
    (["--seeds", "0-99999999"], ["more than 10000 seeds"]),
    (["--seeds", "99999999999999999999999"], ["bad --seeds"]),
    (["--seeds", "1,1"], ["repeats a seed"]),
    (["--seeds", ","], ["names no seed"]),
]


@pytest.mark.parametrize(("args", "needles"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_settings_exit_2_for_every_command(wan, run_cli, tmp_path, args, needles):
    gen = [a for a in GEN]
    for i in range(0, len(gen), 2):
        if gen[i] == args[0]:
            gen[i + 1] = args[1]
            break
    else:
        gen += args
    for cmd in (
        ["verify", wan["pipe"], wan["pipe"], "--no-cache"],
        ["sensitivity", wan["pipe"], "--scheme", "gguf:Q8_0"],
        ["imatrix", wan["pipe"], tmp_path / "out.imatrix.gguf"],
    ):
        r = run_cli(*cmd, *gen)
        _clean_error(r, *needles)
    assert not (tmp_path / "out.imatrix.gguf").exists()


@pytest.fixture(scope="module")
def cogs(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("cog")
        return {v: save_tiny_pipeline(root / v, "cogvideox", v) for v in ("5b-i2v", "1.5-5b")}
    finally:
        torch.set_num_threads(n)


def test_cogvideox_positional_tables(cogs, run_cli):
    i2v, v15 = cogs["5b-i2v"], cogs["1.5-5b"]
    short = ["--steps", "1", "--frames", "5", "--no-cache"]
    # Learned positional embeddings: the sample size only (diffusers' own message was a ValueError).
    r = run_cli("verify", i2v, i2v, *short, "--height", "64", "--width", "64")
    _clean_error(r, "learned positional embeddings for 32x32", "--height 32 --width 32")
    # Its table covers the text tokens too: another length would break the addition (exit 3 before).
    r = run_cli("verify", i2v, i2v, *short, "--text-len", "5")
    _clean_error(r, "--text-len 5", "exactly 8 text tokens", "pass --text-len 8")
    # CogVideoX 1.5 slices its rotary table to the latent grid: a larger grid ran off its end.
    r = run_cli("verify", v15, v15, *short, "--height", "48", "--width", "48")
    _clean_error(r, "--height 48 is larger", "at most 32", "rotary table")
    # Left out, the size is the model's own (32x32), not the family's 480x720.
    r = run_cli("verify", v15, v15, *short)
    assert r.code == 0, r.err
    assert "32x32" not in r.err


def test_prompt_files(wan, run_cli, tmp_path):
    base = ["verify", wan["pipe"], wan["pipe"], *GEN, "--no-cache"]
    r = run_cli(*base, "--prompts", tmp_path)
    _clean_error(r, "is a directory; a file is expected")
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    _clean_error(run_cli(*base, "--prompts", bad), "is not UTF-8 text")
    emb = tmp_path / "e.safetensors"
    save_file({"prompt_embeds": torch.zeros(1, 8, 65)}, str(emb))  # the tiny Wan takes 64 wide
    _clean_error(run_cli(*base, "--prompts", emb), "65 wide", "64-wide")
    save_file(
        {"prompt_embeds": torch.zeros(2, 8, 64), "negative_prompt_embeds": torch.zeros(1, 8, 64)}, str(emb)
    )
    _clean_error(run_cli(*base, "--prompts", emb), "one row per prompt")
    save_file({"prompt_embeds": torch.full((1, 8, 64), float("nan"))}, str(emb))
    _clean_error(run_cli(*base, "--prompts", emb), "NaN or Inf")
    save_file({"prompt_embeds": torch.zeros(1, 8, 64, dtype=torch.int32)}, str(emb))
    _clean_error(run_cli(*base, "--prompts", emb), "not floating point")


GATES_BAD = [
    ("[gates]\npsnr = nan\n", "gates.psnr is nan, not a finite number"),
    ("[gates]\npsnr = inf\n", "gates.psnr is inf, not a finite number"),
    ("gates = " + "[" * 200 + "]" * 200 + "\n", "nested"),
    ("[gates]\npsnr = " + "9" * 5000 + "\n", "not valid TOML"),
    ("[gates]\npsnr = " + "9" * 100 + "\n", "beyond any metric's range"),
    ('gates = ["psnr>=1e999"]\n', "beyond the range of a threshold"),
    ('gates = ["sharpness>=3"]\n', "known metrics"),
    ('gates = ["psnr=>30"]\n', "cannot read gate"),
    ("gates = [30]\n", "not a gate string"),
    ("[gates]\npsnr = true\n", "not a condition"),
    ("[gates]\npsnr = { a = 1 }\n", "not a condition"),
    ("title = 'no gates here'\n", "no 'gates' list"),
    ("gates = [\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "needle"), GATES_BAD, ids=range(len(GATES_BAD)))
def test_gates_files_fail_before_any_model_work(run_cli, tmp_path, text, needle):
    f = tmp_path / "gates.toml"
    f.write_text(text)
    # The baseline does not exist: a gates error proves the file is read first.
    r = run_cli("verify", tmp_path / "no-base", tmp_path / "no-cand", "--gates", f)
    _clean_error(r, needle)


def test_gates_path_is_a_directory_or_missing(run_cli, tmp_path):
    r = run_cli("verify", tmp_path / "no-base", tmp_path / "c", "--gates", tmp_path)
    _clean_error(r, "is a directory; a TOML file is expected")
    r = run_cli("verify", tmp_path / "no-base", tmp_path / "c", "--gates", tmp_path / "none.toml")
    _clean_error(r, "does not exist")
    good = tmp_path / "ok.toml"
    good.write_text('gates = ["psnr>=30", "latent_sqnr >= 20"]\n')
    r = run_cli("verify", tmp_path / "no-base", tmp_path / "c", "--gates", good)
    _clean_error(r, "does not exist")  # the gates parsed; the missing baseline is what stops it


def test_report_target_checked_before_generation(wan, run_cli, tmp_path):
    f = tmp_path / "report-file"
    f.write_text("x")
    r = run_cli("verify", wan["pipe"], wan["pipe"], *GEN, "--no-cache", "--report", f)
    _clean_error(r, "is a file; a folder is expected")
    r = run_cli("sensitivity", wan["pipe"], "--scheme", "gguf:Q8_0", *GEN, "--top", "0")
    _clean_error(r, "--top")
