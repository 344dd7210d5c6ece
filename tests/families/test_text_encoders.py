"""Text encoders (Wan UMT5, CogVideoX T5, Sana Gemma-2): detection, Wan original <-> transformers
round trips bit for bit, the map's meaning (Wan's own encoder math on the original names gives
transformers' output), real sizes on the meta device, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_forward_close

from weightsmith.errors import ConversionError
from weightsmith.families import detect, get_component
from weightsmith.families.base import PlanOptions
from weightsmith.families.ops import run_in_memory
from weightsmith.io.base import infos_from_state_dict

W = get_component("wan", "text_encoder")
C = get_component("cogvideox", "text_encoder")
S = get_component("sana", "text_encoder")


def _convert(comp, sd, target, config=None, prefix=""):
    infos = infos_from_state_dict(sd)
    det = comp.detect(infos, config)
    assert det is not None
    return run_in_memory(comp.plan(det, infos, target, PlanOptions(prefix=prefix)), dict(sd))


@pytest.mark.parametrize("prefix", ["", "text_encoder."])
def test_umt5_original_round_trip_is_bit_exact(prefix):
    model = W.tiny_model("umt5-xxl", seed=3)
    sd = W.checkpoint_state(model)
    orig = _convert(W, sd, "original", prefix=prefix)
    assert (
        f"{prefix}token_embedding.weight" in orig
        and f"{prefix}blocks.1.pos_embedding.embedding.weight" in orig
    )
    back = _convert(W, orig, "diffusers")
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def _bucket(rel: torch.Tensor, buckets: int, max_dist: int = 128) -> torch.Tensor:
    """Bidirectional T5 relative-position bucket, written from the T5 paper's definition."""
    half = buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = (
        exact
        + (torch.log(rel.float().clamp(min=1) / exact) / math.log(max_dist / exact) * (half - exact)).long()
    )
    return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def _wan_encoder(sd: dict[str, torch.Tensor], ids: torch.Tensor, heads: int) -> torch.Tensor:
    """Wan's UMT5 encoder computed on Wan's original names: per-block bias, no score scaling,
    ``fc2(fc1(x) * gelu_tanh(gate.0(x)))``, RMS norms."""

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    x = sd["token_embedding.weight"][ids]
    n = ids.shape[1]
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        table = sd[b + "pos_embedding.embedding.weight"]
        bias = table[_bucket(rel, table.shape[0])].permute(2, 0, 1)[None]
        h = norm(x, sd[b + "norm1.weight"])
        q, k, v = (F.linear(h, sd[b + f"attn.{p}.weight"]).unflatten(-1, (heads, -1)) for p in "qkv")
        att = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, -1)
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", att, v).flatten(2), sd[b + "attn.o.weight"])
        h = norm(x, sd[b + "norm2.weight"])
        gate = F.gelu(F.linear(h, sd[b + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, sd[b + "ffn.fc1.weight"]) * gate, sd[b + "ffn.fc2.weight"])
        i += 1
    return norm(x, sd["norm.weight"])


def test_original_names_mean_what_transformers_computes():
    """Wan's own encoder math on our original-layout output equals UMT5EncoderModel's output:
    gate/fc1 and the per-block bias are mapped to what they are, not only to a bijection."""
    model = W.tiny_model("umt5-xxl", seed=1, wide=False)
    orig = _convert(W, W.checkpoint_state(model), "original")
    ids = torch.tensor([[5, 17, 3, 42, 9, 1, 60, 2, 8, 11, 33, 7]])
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
        got = _wan_encoder(orig, ids, model.config.num_heads)
    assert_forward_close(got, want)


def test_t5_and_umt5_are_told_apart():
    t5 = C.checkpoint_state(C.tiny_model("t5-v1_1-xxl"))
    umt5 = W.checkpoint_state(W.tiny_model("umt5-xxl"))
    assert detect(infos_from_state_dict(t5)).family == "cogvideox"
    assert detect(infos_from_state_dict(umt5)).family == "wan"
    # One block: the weights cannot tell; the config's model_type does.
    one = {k: v for k, v in umt5.items() if ".block.1." not in k}
    assert detect(infos_from_state_dict(one)).family == "cogvideox"
    assert detect(infos_from_state_dict(one), {"model_type": "umt5"}).family == "wan"
    det = detect(infos_from_state_dict(t5))
    assert det.component == "text_encoder" and det.facts["num_heads"] == 4


def test_tied_embedding_alias_is_saved_once():
    model = C.tiny_model("t5-v1_1-xxl")
    full = dict(model.state_dict())
    assert "encoder.embed_tokens.weight" in full and "shared.weight" in full
    out = _convert(C, full, "diffusers")
    assert "encoder.embed_tokens.weight" not in out and torch.equal(
        out["shared.weight"], full["shared.weight"]
    )
    only_alias = {k: v for k, v in full.items() if k != "shared.weight"}
    out = _convert(C, only_alias, "diffusers")
    assert torch.equal(out["shared.weight"], full["shared.weight"])


def test_gemma2_under_a_causal_lm_prefix_and_head_width_from_config():
    model = S.tiny_model("gemma-2-2b")
    sd = {"model." + k: v for k, v in S.checkpoint_state(model).items()}
    infos = infos_from_state_dict(sd)
    cfg = S.model_config(model)
    det = S.detect(infos, cfg)
    assert det is not None and det.prefix == "model."
    out = run_in_memory(S.plan(det, infos, "diffusers"), dict(sd))
    assert sorted(out) == sorted(S.checkpoint_state(model))
    derived = S.diffusers_config(det, infos)
    for k, v in derived.items():
        assert cfg[k] == v, k
    # Without a config the head width is Gemma-2's 256, which the tiny q width (16) is not a multiple of.
    det = S.detect(infos, None)
    with pytest.raises(ConversionError, match="head_dim 256"):
        S.plan(det, infos, "diffusers")


UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
)


def test_real_umt5_xxl_names_on_meta():
    """The released UMT5-XXL encoder (meta device): 242 tensors, Wan's names, sizes derived back."""
    with torch.device("meta"):
        model = W.instantiate("umt5-xxl", UMT5_XXL)
    sd = W.checkpoint_state(model)
    infos = infos_from_state_dict(sd)
    det = W.detect(infos)
    assert det.layout == "diffusers"
    ops = W.plan(det, infos, "original")
    names = {op.outputs[0] for op in ops}
    assert len(names) == 2 + 24 * 10
    assert {
        "token_embedding.weight",
        "norm.weight",
        "blocks.23.ffn.gate.0.weight",
        "blocks.0.attn.o.weight",
    } <= names
    cfg = W.diffusers_config(det, infos)
    assert {k: cfg[k] for k in UMT5_XXL} == UMT5_XXL


def test_missing_and_stray_keys_are_named():
    sd = W.checkpoint_state(W.tiny_model("umt5-xxl"))
    orig = _convert(W, sd, "original")
    broken = {k: v for k, v in orig.items() if k != "blocks.1.ffn.fc1.weight"}
    with pytest.raises(
        ConversionError, match="missing: 'encoder.block.1.layer.1.DenseReluDense.wi_1.weight'"
    ):
        _convert(W, broken, "diffusers")
    stray = dict(orig, **{"blocks.0.attn.extra.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match="unexpected key"):
        _convert(W, stray, "diffusers")


def test_text_encoder_where_a_transformer_is_expected(tmp_path, run_cli):
    from weightsmith.tiny import Fixture, save_fixture

    te = save_fixture(Fixture("wan", "text_encoder", "umt5-xxl", "diffusers", "diffusers-folder"), tmp_path)
    r = run_cli("verify", te, te)
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "is a wan text_encoder, not a transformer" in r.words and "pass the transformer" in r.words
