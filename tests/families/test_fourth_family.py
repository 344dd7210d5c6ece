"""A fourth family from a registry entry alone: inspect, convert, quantize (GGUF and int8) and verify.

The family below is AuraFlow's transformer (a real diffusers class and pipeline that weightsmith
does not ship) with a made-up "original" layout (every Diffusers name under ``net.``). It is
declared in this file only, through the same ``Component`` hooks the built-in families use:
detection, plans, the config from shapes, tiny configs, the quantization policy and the verify
adapter. No other module is touched; if a command needed to know the family's name, this test
would fail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from weightsmith.families import base
from weightsmith.families.base import (
    NO_OPTIONS,
    Component,
    Detection,
    KeepRule,
    PlanOptions,
    QuantSpec,
    register,
)
from weightsmith.families.generation import Defaults, Generation, Geometry, config_int
from weightsmith.families.ops import Op, Rename
from weightsmith.io.base import TensorInfo

FAMILY = "toyflow"
ORIGINAL_PREFIX = "net."
MARKERS = ("joint_transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.attn.to_q.weight")


class ToyGeneration(Generation):
    """AuraFlow in its diffusers pipeline: text to image, prompt attention masks, flow matching."""

    title = "ToyFlow"
    video = False
    defaults = Defaults(64, 64, 1, 4, 3.5)
    text_width_key = "joint_attention_dim"
    text_len = 8
    attention_masks = True
    pipeline = "AuraFlowPipeline"
    demo_variant = "tiny"
    tiny_variants = ("tiny",)
    tiny_size = (32, 32, 1)

    def call_kwargs(self, run, settings, prompt, move, image=None, last_image=None) -> dict[str, Any]:
        kw = super().call_kwargs(run, settings, prompt, move, image, last_image)
        kw["prompt_attention_mask"] = move(prompt.mask)
        nm = prompt.negative_mask if prompt.negative_mask is not None else torch.ones_like(prompt.mask)
        kw["negative_prompt_attention_mask"] = move(nm)
        return kw

    def geometry(self, tcfg: Mapping[str, Any], vcfg: Any, expert_cfgs: list) -> Geometry:
        mul = 8 * config_int(tcfg, "patch_size", 2)  # the pipeline's latent factor 8 (no VAE) x patch
        return Geometry(
            mul, mul, 0, text_width=config_int(tcfg, "joint_attention_dim", 2048), pipeline=self.pipeline
        )


class ToyTransformer(Component):
    family = FAMILY
    component = "transformer"
    layouts = ("original", "diffusers")
    variants = ("tiny",)
    diffusers_class = "AuraFlowTransformer2DModel"
    label = "ToyFlow transformer"
    quant = QuantSpec(
        keep=(
            KeepRule("pos_embed.*", "patch embedding"),
            KeepRule("time_step_proj.*", "time embedding"),
            KeepRule("context_embedder.*", "text embedding"),
            KeepRule("*norm1.linear.*", "modulation"),
            KeepRule("norm_out.*", "modulation"),
            KeepRule("proj_out.*", "head"),
        ),
        gguf_arch=FAMILY,
        gguf_layout="original",
        gguf_v=("*.attn.to_v.weight",),
    )
    generation = ToyGeneration()

    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        for layout, prefix in (("diffusers", ""), ("original", ORIGINAL_PREFIX)):
            if all(prefix + m in infos for m in MARKERS):
                facts: dict[str, Any] = {"hidden": infos[prefix + MARKERS[0]].shape[1]}
                if config and isinstance(config.get("attention_head_dim"), int):
                    facts["attention_head_dim"] = config["attention_head_dim"]  # not in the shapes
                return Detection(FAMILY, "transformer", layout, "tiny", "", (), facts)
        return None

    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        self.check_plan(detection, target_layout, options)
        strip = ORIGINAL_PREFIX if detection.layout == "original" else ""
        add = options.prefix + (ORIGINAL_PREFIX if target_layout == "original" else "")
        foreign = [k for k in infos if not k.startswith(strip)]
        self.check_keys(f"{self.title()} ({detection.layout} layout)", unknown=foreign)
        return [Rename(k, add + k[len(strip) :]) for k in infos]

    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        def shape(k: str) -> tuple[int, ...]:
            return tuple(infos[k].shape)

        def count(prefix: str) -> int:
            return len({k.split(".")[1] for k in infos if k.startswith(prefix)})

        inner, joint = shape("context_embedder.weight")
        patch_in = shape("pos_embed.proj.weight")[1]
        patch = int(round((patch_in / 4) ** 0.5))
        head_dim = detection.facts.get("attention_head_dim", 8)
        return {
            "sample_size": 32,
            "patch_size": patch,
            "in_channels": patch_in // (patch * patch),
            "num_mmdit_layers": count("joint_transformer_blocks."),
            "num_single_dit_layers": count("single_transformer_blocks."),
            "attention_head_dim": head_dim,
            "num_attention_heads": inner // head_dim,
            "joint_attention_dim": joint,
            "caption_projection_dim": inner,
            "out_channels": shape("proj_out.weight")[0] // (patch * patch),
            "pos_embed_max_size": shape("pos_embed.pos_embed")[1],
        }

    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        self.check_variant(variant)
        return {
            "sample_size": 32,
            "patch_size": 2,
            "in_channels": 4,
            "num_mmdit_layers": 1,
            "num_single_dit_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 4,
            "joint_attention_dim": 32,
            "caption_projection_dim": 32,
            "out_channels": 4,
            "pos_embed_max_size": 256,
        }


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    """The fourth family is registered for this module's tests only (not at import, so no other
    module's registry-generated tests see it), and removed afterwards."""
    register(ToyTransformer)
    comp = base.get_component(FAMILY, "transformer")
    folder = tmp_path_factory.mktemp("toy") / "transformer"
    comp.tiny_model("tiny", seed=3).save_pretrained(folder)
    try:
        yield folder
    finally:
        base._REGISTRY.pop((FAMILY, "transformer"), None)


def _tensors(path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def test_inspect_names_the_fourth_family(toy_folder, run_cli):
    r = run_cli("inspect", toy_folder, "--json")
    assert r.code == 0, r.err
    det = json.loads(r.out)["detection"]
    assert (det["family"], det["component"], det["layout"], det["variant"]) == (
        FAMILY,
        "transformer",
        "diffusers",
        "tiny",
    )


def test_convert_round_trip_is_bit_exact(toy_folder, tmp_path, run_cli):
    orig = tmp_path / "toy-original.safetensors"
    r = run_cli("convert", toy_folder, orig, "--to", "original", "--family", FAMILY)
    assert r.code == 0, r.err
    assert all(k.startswith(ORIGINAL_PREFIX) for k in _tensors(orig))
    back = tmp_path / "back"
    r = run_cli("convert", orig, back, "--to", "diffusers")
    assert r.code == 0, r.err
    want, got = _tensors(toy_folder), _tensors(back)
    assert sorted(want) == sorted(got)
    assert all(torch.equal(want[k].view(torch.uint8), got[k].view(torch.uint8)) for k in want)
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["_class_name"] == "AuraFlowTransformer2DModel" and cfg["num_mmdit_layers"] == 1


def test_quantize_gguf_and_int8_follow_the_family_policy(toy_folder, tmp_path, run_cli):
    import gguf

    dst = tmp_path / "toy-Q8_0.gguf"
    r = run_cli("quantize", toy_folder, dst, "--scheme", "gguf:Q8_0")
    assert r.code == 0, r.err
    reader = gguf.GGUFReader(str(dst))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == FAMILY
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["net.joint_transformer_blocks.0.attn.to_q.weight"] == "Q8_0"
    assert types["net.context_embedder.weight"] != "Q8_0"  # kept: the family's text-embedding rule
    layers = json.loads(dst.with_name(dst.name + ".layers.json").read_text())
    assert "layers" in layers or layers  # the per-tensor table is written beside it

    ct = tmp_path / "toy-int8"
    r = run_cli("quantize", toy_folder, ct, "--scheme", "int8")
    assert r.code == 0, r.err
    cfg = json.loads((ct / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert "context_embedder" in json.dumps(qc["ignore"]) and qc["quant_method"] == "compressed-tensors"
    stored = _tensors(ct)
    assert stored["joint_transformer_blocks.0.attn.to_q.weight_packed"].dtype in (
        torch.int8,
        torch.int32,
    ) or any(k.startswith("joint_transformer_blocks.0.attn.to_q.weight") for k in stored)
    # Reading it back dequantizes on read: plain convert gives the float weights, close to the source.
    plain = tmp_path / "toy-int8-plain"
    r = run_cli("convert", ct, plain, "--to", "diffusers", "--dtype", "fp32")
    assert r.code == 0, r.err
    src, deq = _tensors(toy_folder), _tensors(plain)
    w, q = (
        src["joint_transformer_blocks.0.attn.to_q.weight"],
        deq["joint_transformer_blocks.0.attn.to_q.weight"],
    )
    assert (
        not torch.equal(w, q) and float((w - q).abs().max()) <= float(w.abs().amax(dim=1).max()) / 127 + 1e-6
    )


def test_verify_runs_the_family_pipeline(toy_folder, tmp_path, run_cli):
    dst = tmp_path / "toy-Q8_0.gguf"
    assert run_cli("quantize", toy_folder, dst, "--scheme", "gguf:Q8_0").code == 0
    r = run_cli(
        "verify", toy_folder, toy_folder, dst, "--height", "32", "--width", "32", "--steps", "2",
        "--seeds", "0", "--no-cache", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    body = json.loads(r.out)
    same, q8 = body["candidates"]
    assert same["exact"] and same["metrics"]["latent_sqnr"] == "inf"
    assert not q8["exact"] and float(q8["metrics"]["latent_sqnr"]) > 20
