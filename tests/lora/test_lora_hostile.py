"""Hostile LoRA files and options, through the CLI: one ``error:`` line, exit 2, fast, no output.

`weightsmith lora convert SRC DST --to ...` and `weightsmith convert BASE DST --to diffusers
--lora PATH[:SCALE]` on LoRAs that name absurd blocks, carry regular expressions as alpha_pattern
keys, hold NaN/Inf, rank 0 or a non-numeric alpha, and on --lora values that are not PATH[:SCALE].
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from weightsmith.tiny import Fixture, save_fixture

SAT = "model.diffusion_model."
DIM = 24  # the tiny Wan transformer's width (2 blocks)
COG = 16  # the tiny CogVideoX transformer's width


@pytest.fixture(scope="module")
def wan_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wan")
    return save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), folder)


@pytest.fixture(scope="module")
def cog_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cog")
    return save_fixture(Fixture("cogvideox", "transformer", "5b", "diffusers", "diffusers-folder"), folder)


def peft(block: int = 0, rank: int = 2, a: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    m = f"transformer.blocks.{block}.attn1.to_q"
    return {
        f"{m}.lora_A.weight": torch.full((rank, DIM), 0.01) if a is None else a,
        f"{m}.lora_B.weight": torch.full((DIM, rank), 0.02),
    }


def save(tmp_path: Path, name: str, sd: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path), metadata=metadata)
    return path


def refused(r, *needles: str, limit: float | None = None, elapsed: float = 0.0) -> None:
    """Exit 2 with one error line holding every needle (in the message's own words)."""
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    for needle in needles:
        assert needle in r.words, r.err
    if limit is not None:
        assert elapsed < limit, f"took {elapsed:.2f} s"


def timed(run_cli, *args: object):
    t0 = time.perf_counter()
    r = run_cli(*args)
    return r, time.perf_counter() - t0


@pytest.fixture
def warm(run_cli, tmp_path: Path) -> None:
    """One valid conversion first, so the timed cases measure reading, not first imports."""
    src = save(tmp_path, "warm", peft())
    assert run_cli("lora", "convert", src, tmp_path / "warm_out.safetensors", "--to", "original").code == 0


# ------------------------------------------------------------------------------ block indices
FAR = {
    "sat": {
        f"{SAT}transformer.layers.100000.attention.dense.matrix_A.0": torch.ones(2, COG),
        f"{SAT}transformer.layers.100000.attention.dense.matrix_B.0": torch.ones(COG, 2),
    },
    "peft-cog": {
        "transformer.transformer_blocks.100000.attn1.to_q.lora_A.weight": torch.ones(2, COG),
        "transformer.transformer_blocks.100000.attn1.to_q.lora_B.weight": torch.ones(COG, 2),
    },
    "peft-wan": peft(block=100000),
    "wan-original": {
        "diffusion_model.blocks.100000.self_attn.q.lora_down.weight": torch.ones(2, DIM),
        "diffusion_model.blocks.100000.self_attn.q.lora_up.weight": torch.ones(DIM, 2),
    },
    "musubi": {
        "lora_unet_blocks_100000_self_attn_q.lora_down.weight": torch.ones(2, DIM),
        "lora_unet_blocks_100000_self_attn_q.lora_up.weight": torch.ones(DIM, 2),
    },
}


@pytest.mark.parametrize("kind", sorted(FAR))
def test_block_index_beyond_any_model_is_refused_before_a_model_is_built(
    tmp_path: Path, run_cli, warm: None, kind: str
) -> None:
    src = save(tmp_path, kind, FAR[kind])
    dst = tmp_path / "out.safetensors"
    r, elapsed = timed(run_cli, "lora", "convert", src, dst, "--to", "diffusers")
    refused(r, "block 100000", "no ", limit=1.0, elapsed=elapsed)
    assert not dst.exists()


def test_block_index_with_thousands_of_digits_is_refused(tmp_path: Path, run_cli, warm: None) -> None:
    digits = "9" * 5000  # int() refuses more than 4300 digits
    sd = {
        f"{SAT}transformer.layers.{digits}.attention.dense.matrix_A.0": torch.ones(2, COG),
        f"{SAT}transformer.layers.{digits}.attention.dense.matrix_B.0": torch.ones(COG, 2),
    }
    r, elapsed = timed(run_cli, "lora", "convert", save(tmp_path, "d", sd), tmp_path / "o.pt", "--to", "sat")
    refused(r, "beyond 10^9", limit=1.0, elapsed=elapsed)
    part = {
        f"{SAT}transformer.layers.0.attention.dense.matrix_A.{digits}": torch.ones(2, COG),
        f"{SAT}transformer.layers.0.attention.dense.matrix_B.0": torch.ones(COG, 2),
    }
    r = run_cli("lora", "convert", save(tmp_path, "p", part), tmp_path / "o.pt", "--to", "sat")
    refused(r, "partition")


def test_a_deep_but_plausible_block_still_reads(tmp_path: Path, run_cli) -> None:
    """Bounded at 4x the deepest released model, not at it: a LoRA for a deeper model converts."""
    r = run_cli(
        "lora",
        "convert",
        save(tmp_path, "b", peft(block=120)),
        tmp_path / "o.safetensors",
        "--to",
        "original",
    )
    assert r.code == 0, r.err
    assert "diffusion_model.blocks.120.self_attn.q.lora_down.weight" in load_file(tmp_path / "o.safetensors")


def test_fusing_checks_blocks_against_the_base(
    tmp_path: Path, run_cli, wan_base: Path, cog_base: Path
) -> None:
    run_cli("lora", "inspect", save(tmp_path, "warm", peft()))  # warm imports
    cases = [
        (wan_base, save(tmp_path, "wan_far", FAR["peft-wan"]), "'blocks.100000.attn1.to_q.weight'"),
        (wan_base, save(tmp_path, "wan_near", peft(block=2)), "'blocks.2.attn1.to_q.weight'"),
        (cog_base, save(tmp_path, "sat_far", FAR["sat"]), "transformer.layers.100000.attention.dense"),
    ]
    for base, lora, needle in cases:
        dst = tmp_path / f"fused_{lora.stem}"
        r, elapsed = timed(run_cli, "convert", base, dst, "--to", "diffusers", "--lora", lora)
        refused(r, "not in the base model", "which has 2 blocks", needle, limit=1.0, elapsed=elapsed)
        assert not dst.exists()


# --------------------------------------------------------------------------- alpha_pattern
def _meta(config: dict) -> dict[str, str]:
    return {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}


def test_regex_alpha_pattern_cannot_hang(tmp_path: Path, run_cli, wan_base: Path, warm: None) -> None:
    hostile = save(
        tmp_path, "re", peft(), _meta({"lora_alpha": 2, "alpha_pattern": {"(.*.*.*.*.*.*.*.*)*X": 3}})
    )
    r, elapsed = timed(run_cli, "lora", "convert", hostile, tmp_path / "o.safetensors", "--to", "original")
    refused(r, "alpha_pattern", "regular expression", limit=1.0, elapsed=elapsed)
    r, elapsed = timed(
        run_cli, "convert", wan_base, tmp_path / "fused", "--to", "diffusers", "--lora", hostile
    )
    refused(r, "regular expression", limit=1.0, elapsed=elapsed)
    assert not (tmp_path / "fused").exists()


def test_alpha_pattern_keys_match_module_names_and_dotted_suffixes(tmp_path: Path, run_cli) -> None:
    sd = peft(0) | peft(1)
    sd |= {
        "transformer.blocks.1.ffn.net.2.lora_A.weight": torch.full((2, 32), 0.01),
        "transformer.blocks.1.ffn.net.2.lora_B.weight": torch.full((DIM, 2), 0.01),
    }
    # PEFT's rule: a key matches the module of that name or one ending in "." + key; first key wins.
    pattern = {"ffn.net.2": 6, "blocks\\.1\\.attn1\\.to_q": 1, "blocks.0.attn1.to_q": 8}
    src = save(tmp_path, "p", sd, _meta({"r": 2, "lora_alpha": 4, "alpha_pattern": pattern}))
    r = run_cli("lora", "inspect", src, "--json")
    assert r.code == 0, r.err
    scales = {m["module"]: m["scale"] for m in json.loads(r.out)["modules"]}
    assert scales == {"blocks.0.attn1.to_q": 4.0, "blocks.1.attn1.to_q": 0.5, "blocks.1.ffn.net.2": 3.0}


def test_alpha_pattern_lookup_agrees_with_peft() -> None:
    """The literal suffix rule gives what PEFT's own regex rule gives, for module-name keys."""
    from peft.utils.other import get_pattern_key

    from weightsmith.lora.alphas import pattern_lookup

    keys = ["to_q", "blocks.0.attn1.to_q", "ffn.net.2", "net.2", "1.attn2.to_k", "proj_out", "o.0"]
    modules = [
        "blocks.0.attn1.to_q",
        "blocks.1.attn2.to_k",
        "blocks.1.attn1.to_k",
        "blocks.3.ffn.net.2",
        "blocks.3.ffn.net.0.proj",
        "proj_out",
        "blocks.0.attn1.to_out.0",
        "condition_embedder.text_embedder.linear_1",
    ]
    for order in (keys, keys[::-1]):
        patterns = {k: float(i) for i, k in enumerate(order)}
        ours = pattern_lookup(patterns)
        for m in modules:
            theirs = get_pattern_key(list(patterns), m)
            assert ours(m) == patterns.get(theirs), (order, m)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"lora_alpha": "abc"}, "lora_alpha"),
        ({"lora_alpha": True}, "lora_alpha"),
        ({"lora_alpha": [4]}, "lora_alpha"),
        ({"lora_alpha": 4, "alpha_pattern": ["blocks.0.attn1.to_q"]}, "alpha_pattern"),
        ({"lora_alpha": 4, "alpha_pattern": {"blocks.0.attn1.to_q": "x"}}, "alpha_pattern"),
        ({"lora_alpha": 4, "alpha_pattern": {"blocks.[0-9].attn1.to_q": 2}}, "regular expression"),
    ],
)
def test_bad_alpha_metadata_is_refused(tmp_path: Path, run_cli, config: dict, needle: str) -> None:
    src = save(tmp_path, "m", peft(), _meta(config))
    r = run_cli("lora", "convert", src, tmp_path / "o.safetensors", "--to", "diffusers")
    refused(r, needle)
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ('{"lora_alpha": 1' + "0" * 400 + "}", "bits"),  # overflows a float
        ('{"lora_alpha": 1' + "0" * 5000 + "}", "not valid JSON"),  # over Python's int digit limit
        ('{"lora_alpha": NaN}', "NaN"),
        ('{"lora_alpha": Infinity}', "Infinity"),
        ("[ " * 100 + "]" * 100, "nested"),  # spaced so only the metadata parser sees the depth
        ("{not json", "not valid JSON"),
        ('"just a string"', "not a JSON object"),
    ],
)
def test_broken_metadata_json_is_refused(tmp_path: Path, run_cli, raw: str, needle: str) -> None:
    src = save(tmp_path, "j", peft(), {"lora_adapter_metadata": raw})
    r = run_cli("lora", "convert", src, tmp_path / "o.safetensors", "--to", "diffusers")
    refused(r, needle, "lora_adapter_metadata")


# ----------------------------------------------------------------------------- NaN, Inf, rank
NONFINITE = {
    "peft-nan-A": (
        peft(a=torch.full((2, DIM), float("nan"))),
        "transformer.blocks.0.attn1.to_q.lora_A.weight",
    ),
    "wan-inf-diff_b": (
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, DIM),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(DIM, 2),
            "diffusion_model.blocks.0.self_attn.q.diff_b": torch.full((DIM,), float("inf")),
        },
        "diffusion_model.blocks.0.self_attn.q.diff_b",
    ),
    "sat-nan-B": (
        {
            f"{SAT}transformer.layers.0.attention.dense.matrix_A.0": torch.ones(2, COG),
            f"{SAT}transformer.layers.0.attention.dense.matrix_B.0": torch.full((COG, 2), float("nan")),
        },
        f"{SAT}transformer.layers.0.attention.dense.matrix_B.0",
    ),
    "bf16-inf-B": (
        {k: v.to(torch.bfloat16) for k, v in peft().items()}
        | {
            "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.full(
                (DIM, 2), float("-inf"), dtype=torch.bfloat16
            )
        },
        "transformer.blocks.0.attn1.to_q.lora_B.weight",
    ),
    "alpha-nan": (
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, DIM),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(DIM, 2),
            "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(float("nan")),
        },
        "diffusion_model.blocks.0.self_attn.q.alpha",
    ),
}


@pytest.mark.parametrize("kind", sorted(NONFINITE))
def test_nonfinite_lora_tensors_are_refused(
    tmp_path: Path, run_cli, wan_base: Path, cog_base: Path, kind: str
) -> None:
    sd, key = NONFINITE[kind]
    src = save(tmp_path, kind, sd)
    r = run_cli("lora", "convert", src, tmp_path / "o.safetensors", "--to", "diffusers")
    refused(r, repr(key)[1:-1])
    assert not (tmp_path / "o.safetensors").exists()
    base = cog_base if kind.startswith("sat") else wan_base
    r = run_cli("convert", base, tmp_path / "fused", "--to", "diffusers", "--lora", src)
    refused(r, repr(key)[1:-1])
    assert not (tmp_path / "fused").exists()


def test_alpha_that_overflows_the_weights_is_refused(tmp_path: Path, run_cli, wan_base: Path) -> None:
    sd = {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, DIM),
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(DIM, 2),
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(3e38),
    }
    src = save(tmp_path, "big", sd)
    refused(run_cli("lora", "convert", src, tmp_path / "o.safetensors", "--to", "diffusers"), "overflows")
    refused(run_cli("convert", wan_base, tmp_path / "f", "--to", "diffusers", "--lora", src), "overflows")


def test_strength_that_overflows_the_output_dtype_is_refused(tmp_path: Path, run_cli, wan_base: Path) -> None:
    src = save(tmp_path, "ok", peft())
    r = run_cli(
        "convert", wan_base, tmp_path / "f", "--to", "diffusers", "--dtype", "fp16", "--lora", f"{src}:1e30"
    )
    refused(r, "blocks.0.attn1.to_q.weight", "NaN or Inf")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("target", ["diffusers", "original"])
def test_rank_zero_is_refused(tmp_path: Path, run_cli, wan_base: Path, target: str) -> None:
    src = save(tmp_path, "r0", {k: v[:0] if "lora_A" in k else v[:, :0] for k, v in peft().items()})
    r = run_cli("lora", "convert", src, tmp_path / "o.safetensors", "--to", target)
    refused(r, "rank 0", "blocks.0.attn1.to_q")
    r = run_cli("convert", wan_base, tmp_path / "f", "--to", "diffusers", "--lora", src)
    refused(r, "rank 0")


def test_rank_zero_with_alpha_and_bias_is_refused(tmp_path: Path, run_cli) -> None:
    sd = {k: v[:0] if "lora_A" in k else v[:, :0] for k, v in peft().items()}
    sd["transformer.blocks.0.attn1.to_q.lora_B.bias"] = torch.ones(DIM)
    src = save(tmp_path, "r0b", sd, _meta({"lora_alpha": 4}))
    refused(run_cli("lora", "convert", src, tmp_path / "o.safetensors", "--to", "diffusers"), "rank 0")


def test_nonfinite_sat_alpha_is_refused(tmp_path: Path, run_cli) -> None:
    cog = {
        "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, COG),
        "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(COG, 2),
    }
    src = save(tmp_path, "c", cog)
    for value in ("inf", "nan", "0"):
        r = run_cli("lora", "convert", src, tmp_path / "o.pt", "--to", "sat", "--sat-alpha", value)
        refused(r, "lora_alpha")
        assert not (tmp_path / "o.pt").exists()


# ------------------------------------------------------------------------------- --lora values
def test_lora_scale_that_is_not_a_number_says_so(tmp_path: Path, run_cli, wan_base: Path) -> None:
    src = save(tmp_path, "f", peft())
    for text in (f"{src}:abc", "missing:abc"):
        r = run_cli("convert", wan_base, tmp_path / "o", "--to", "diffusers", "--lora", text)
        refused(r, "scale 'abc' in --lora", "is not a number")
        assert "does not exist" not in r.words
    for text in (f"{src}:nan", f"{src}:inf", f"{src}:-inf"):
        refused(run_cli("convert", wan_base, tmp_path / "o", "--to", "diffusers", "--lora", text), "finite")
    r = run_cli(
        "convert", wan_base, tmp_path / "o", "--to", "diffusers", "--lora", src, "--lora-scale", "nan"
    )
    refused(r, "--lora-scale", "finite")
    refused(run_cli("convert", wan_base, tmp_path / "o", "--to", "diffusers", "--lora", ":0.5"), "no path")
    assert not (tmp_path / "o").exists()


def test_lora_paths_with_colons_still_work(tmp_path: Path, run_cli, wan_base: Path) -> None:
    folder = tmp_path / "a:b"
    folder.mkdir()
    src = save(folder, "style:v2", peft())
    for n, text in enumerate((str(src), f"{src}:0.5", f"{folder}/style:v2.safetensors:-1")):
        r = run_cli("convert", wan_base, tmp_path / f"o{n}", "--to", "diffusers", "--lora", text)
        assert r.code == 0, r.err
    # A path with a colon that does not exist is reported as a missing file, not a bad scale.
    r = run_cli(
        "convert", wan_base, tmp_path / "o9", "--to", "diffusers", "--lora", f"{folder}/gone:x.safetensors"
    )
    assert r.code == 2 and "is not a number" not in r.words, r.err


@pytest.mark.parametrize(
    ("module", "rows"),
    [("transformer.layers.0.attention.query_key_value", 2), ("mixins.adaln_layer.adaLN_modulations.0.1", 13)],
)
def test_sat_lora_whose_rows_do_not_cut_into_the_modules(
    tmp_path: Path, run_cli, module: str, rows: int
) -> None:
    """One SAT partition over a fused module is cut like the weight: its rows must divide evenly."""
    sd = {f"{SAT}{module}.matrix_A.0": torch.ones(2, COG), f"{SAT}{module}.matrix_B.0": torch.ones(rows, 2)}
    r = run_cli("lora", "convert", save(tmp_path, "s", sd), tmp_path / "o.safetensors", "--to", "diffusers")
    refused(r, module, "does not cut into")


def test_float8_lora_tensors_convert(tmp_path: Path, run_cli) -> None:
    """float8 has no count_nonzero/isfinite kernels on the CPU; the checks widen it first."""
    sd = {
        "diffusion_model.blocks.0.self_attn.q.diff": torch.full((DIM, DIM), 0.5).to(torch.float8_e4m3fn),
        "diffusion_model.blocks.0.self_attn.k.lora_down.weight": torch.ones(2, DIM).to(torch.float8_e4m3fn),
        "diffusion_model.blocks.0.self_attn.k.lora_up.weight": torch.ones(DIM, 2).to(torch.float8_e5m2),
        "diffusion_model.blocks.0.self_attn.k.alpha": torch.tensor(2.0).to(torch.float8_e4m3fn),
        "diffusion_model.blocks.0.norm3.diff": torch.zeros(DIM).to(torch.float8_e4m3fn),
    }
    r = run_cli("lora", "convert", save(tmp_path, "f8", sd), tmp_path / "o.safetensors", "--to", "diffusers")
    assert r.code == 0, r.err
    out = load_file(tmp_path / "o.safetensors")
    assert out["transformer.blocks.0.attn1.to_k.lora_A.weight"].dtype == torch.float8_e4m3fn
    nan = dict(sd)
    nan["diffusion_model.blocks.0.self_attn.q.diff"] = torch.full((DIM, DIM), float("nan")).to(
        torch.float8_e4m3fn
    )
    r = run_cli(
        "lora", "convert", save(tmp_path, "f8nan", nan), tmp_path / "o2.safetensors", "--to", "diffusers"
    )
    refused(r, "diffusion_model.blocks.0.self_attn.q.diff", "NaN or Inf")
