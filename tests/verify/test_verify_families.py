"""Every family and variant verifies through its real diffusers pipeline; Wan 2.2 A14B runs both
experts as the pipeline does; image-to-video takes --image; Sana GGUF goes through both loaders."""

from __future__ import annotations

import pytest
import torch
from verifykit import edited_copy, settings

from weightsmith.errors import UsageError
from weightsmith.verify import VerifyOptions, verify
from weightsmith.verify.tiny import TINY_VARIANTS, save_tiny_pipeline

CASES = [(f, v) for f, vs in TINY_VARIANTS.items() for v in vs]


@pytest.mark.parametrize(("family", "variant"), CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_every_variant_verifies_exactly_against_itself(tmp_path, family, variant):
    pipe = save_tiny_pipeline(tmp_path / "pipe", family, variant)
    res = verify(
        VerifyOptions(str(pipe), [str(pipe)], settings(family=family), cache_dir=None, progress=False)
    )
    assert res.baseline["family"] == family and res.baseline["variant"] == variant
    (c,) = res.candidates
    assert c.exact and c.passed
    assert res.frames and res.baseline_preview is not None and c.preview is not None
    item = c.items[0]
    assert len(item.step_sqnr) == 2 and all(v == float("inf") for v in item.step_sqnr)


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    root = tmp_path_factory.mktemp("a14b")
    pipe = save_tiny_pipeline(root / "pipe", "wan", "2.2-i2v-a14b")

    def zero(state):
        for k in state:
            if k.startswith("blocks.") and k.endswith(".weight") and "ffn" in k:
                state[k].zero_()

    low = edited_copy(pipe / "transformer_2", root / "low-broken", zero)
    return pipe, low


def test_a14b_hands_over_between_experts(a14b):
    pipe, low = a14b
    cand = f"transformer={pipe / 'transformer'},transformer_2={low}"
    res = verify(
        VerifyOptions(str(pipe), [cand, f"transformer_2={low}"], settings(), cache_dir=None, progress=False)
    )
    assert res.baseline["experts"].keys() == {"transformer", "transformer_2"}
    for c in res.candidates:
        it = c.items[0]
        # Step 0 (t = 999 >= 0.9 * 1000) runs the high-noise expert, which is the baseline's: exact.
        # Step 1 runs the broken low-noise expert.
        assert it.step_cosine[0] == 1.0 and it.step_sqnr[0] == float("inf")
        assert it.step_sqnr[1] < 40
    assert res.candidates[1].paths == {"transformer_2": str(low)}


def test_a14b_with_one_expert_is_noted(a14b):
    pipe, _ = a14b
    res = verify(
        VerifyOptions(
            str(pipe / "transformer"),
            [str(pipe / "transformer")],
            settings(),
            vae=str(pipe / "vae"),
            cache_dir=None,
            progress=False,
        )
    )
    assert res.candidates[0].exact
    assert any("one expert runs every step" in n for n in res.notes)
    with pytest.raises(UsageError, match="image-to-video"):  # the image needs the VAE's encoder
        verify(
            VerifyOptions(str(pipe / "transformer"), [str(pipe / "transformer")], settings(), cache_dir=None)
        )


def test_image_to_video_takes_an_image_file(tmp_path):
    from PIL import Image

    pipe = save_tiny_pipeline(tmp_path / "pipe", "cogvideox", "5b-i2v")
    img = tmp_path / "in.png"
    Image.new("RGB", (40, 24), (200, 30, 90)).save(img)
    seeded = verify(
        VerifyOptions(
            str(pipe), [str(pipe)], settings(family="cogvideox"), cache_dir=tmp_path / "c", progress=False
        )
    )
    given = verify(
        VerifyOptions(
            str(pipe),
            [str(pipe)],
            settings(family="cogvideox", image=str(img)),
            cache_dir=tmp_path / "c",
            progress=False,
        )
    )
    assert given.candidates[0].exact and given.cache["misses"] == 1  # another image, another baseline
    assert not torch.equal(
        torch.from_numpy(seeded.baseline_preview), torch.from_numpy(given.baseline_preview)
    )


def test_sana_gguf_through_both_loaders(tmp_path):
    from weightsmith.quantize.gguf.run import quantize_gguf

    pipe = save_tiny_pipeline(tmp_path / "pipe", "sana", "1.0")
    q = quantize_gguf(pipe / "transformer", tmp_path / "sana-Q8_0.gguf", "gguf:Q8_0", progress=False).dst
    res = verify(
        VerifyOptions(
            str(pipe), [str(q)], settings(family="sana", seeds=(0, 1)), cache_dir=None, progress=False
        )
    )
    ours, theirs = res.candidates
    assert theirs.loader == "diffusers-gguf" and ours.passed and theirs.passed
    assert ours.worst["psnr"] > 30 and abs(ours.worst["psnr"] - theirs.worst["psnr"]) < 1.0
    assert ours.worst["flicker"] is None  # one frame: nothing flickers
