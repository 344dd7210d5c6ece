"""The model card: parses with huggingface_hub, metadata round-trips offline with known keys only,
carries the measured numbers and their settings, and states an unverified file first."""

from __future__ import annotations

import inspect

import yaml
from huggingface_hub import ModelCard, ModelCardData
from publishkit import BASE, REPO, front_matter, report_of

# ModelCardData's named fields, and the two Hub keys it passes through (hub-docs model-cards).
KNOWN = set(inspect.signature(ModelCardData.__init__).parameters) - {
    "self",
    "kwargs",
    "ignore_metadata_errors",
}
KNOWN |= {"base_model_relation", "quantized_by"}


def _card(run_cli, folder, tmp_path, *extra):
    stage = tmp_path / "stage"
    r = run_cli(
        "publish", folder, "--repo-id", REPO, "--base-model", BASE, "--dry-run", "--out", stage, *extra
    )
    assert r.code == 0, r.err
    return (stage / "README.md").read_text()


def test_card_parses_and_metadata_round_trips(run_cli, passing, tmp_path):
    text = _card(run_cli, passing, tmp_path, "--license", "apache-2.0")
    card = ModelCard(text)  # offline: no validate() call
    meta = yaml.safe_load(front_matter(text))
    assert set(meta) <= KNOWN, set(meta) - KNOWN
    assert card.data.to_dict() == meta
    again = ModelCardData(**meta)
    assert again.to_dict() == meta
    assert meta["base_model"] == BASE and meta["base_model_relation"] == "quantized"
    assert meta["library_name"] == "gguf" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-to-video" and meta["quantized_by"] == "me"
    assert "gguf" in meta["tags"]


def test_card_carries_measured_fidelity_and_settings(run_cli, passing, tmp_path):
    text = _card(run_cli, passing, tmp_path)
    body = report_of(passing)
    q8 = next(c for c in body["candidates"] if c["label"] == "wan-Q8_0.gguf")
    row = next(line for line in text.splitlines() if line.startswith("| `Wan-Tiny-Q8_0.gguf`"))
    assert f"{q8['metrics']['latent_sqnr']:.2f}" in row and "Q8_0" in row and "pass" in row
    assert "32x32, 5 frame(s), 1 steps" in text and "`latent_sqnr>=10`" in text
    assert "![fidelity against size](fidelity.svg)" in text
    assert "GGUFQuantizationConfig" in text and "from_single_file" in text
    assert f"https://huggingface.co/{REPO}/blob/main/Wan-Tiny-Q8_0.gguf" in text
    assert f'"{BASE}"' in text and "UnetLoaderGGUF" in text and "ComfyUI/models/unet" in text


def test_base_facts_from_a_hub_download(run_cli, passing, tmp_path):
    """A baseline under the Hub cache gives base_model; its README.md gives license and pipeline_tag."""
    snap = tmp_path / "hub" / "models--Org--Wan-Tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("---\nlicense: other\npipeline_tag: image-to-video\n---\n# base\n")
    from publishkit import write_report

    body = report_of(passing)
    body["baseline"]["label"] = str(snap)
    write_report(passing, body)
    stage = tmp_path / "stage"
    r = run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", stage)
    assert r.code == 0, r.err
    meta = yaml.safe_load(front_matter((stage / "README.md").read_text()))
    assert meta["base_model"] == "Org/Wan-Tiny" and meta["license"] == "other"
    assert meta["pipeline_tag"] == "image-to-video"


def test_unverified_is_stated_first(run_cli, work, tmp_path):
    text = _card(run_cli, work, tmp_path, "--allow-unverified")
    body = text.split("---\n", 2)[2].lstrip().splitlines()
    assert body[0].startswith("> **Warning: not verified.**") and "Wan-Tiny-Q2_K.gguf" in body[0]
    assert "latent_sqnr>=10" in body[0]
    ModelCard(text)


def test_verified_card_has_no_warning(run_cli, passing, tmp_path):
    assert "Warning" not in _card(run_cli, passing, tmp_path)
