"""Every registered transformer describes its forward inputs, and the description is right: the
tiny model of each variant runs on example inputs built from it alone."""

from __future__ import annotations

import inspect

import pytest
import torch

from weightsmith.errors import UsageError
from weightsmith.families import components
from weightsmith.families.inputs import InputSpec, example_inputs

CASES = [(c, v) for c in components() if c.component == "transformer" for v in c.variants]


@pytest.mark.parametrize(("comp", "variant"), CASES, ids=[f"{c.family}-{v}" for c, v in CASES])
def test_example_inputs_run_the_tiny_model(comp, variant):
    model = comp.tiny_model(variant).eval()
    cfg = dict(model.config)
    specs = comp.input_specs(cfg, variant)
    params = inspect.signature(model.forward).parameters
    assert [s.name for s in specs if s.name not in params] == []
    sizes = comp.example_sizes(cfg, variant)
    x = example_inputs(specs, sizes, seed=0)
    assert all(x[s.name].shape == s.shape(sizes) and x[s.name].dtype == s.dtype for s in specs)
    assert torch.equal(example_inputs(specs, sizes, seed=0)["hidden_states"], x["hidden_states"])
    with torch.no_grad():
        out = model(**x, return_dict=False)[0]
    assert out.shape[0] == sizes["batch"] and bool(torch.isfinite(out).all())
    # A second batch size: the batch axis is dynamic.
    x2 = example_inputs(
        specs, {**sizes, "batch": 2} | ({"images": 2 * sizes["images"]} if "images" in sizes else {})
    )
    with torch.no_grad():
        assert model(**x2, return_dict=False)[0].shape[0] == 2


def test_specs_name_their_missing_sizes():
    spec = InputSpec("hidden_states", ("batch", 4, "height"))
    assert spec.shape({"batch": 2, "height": 3}) == (2, 4, 3)
    with pytest.raises(UsageError, match="needs the size 'height'"):
        spec.shape({"batch": 1})
