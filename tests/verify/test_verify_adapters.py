"""verify/ asks each family's generation adapter and names no family itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import weightsmith.verify
from weightsmith.families import components
from weightsmith.families.generation import Generation
from weightsmith.verify.family import demo_models, generation, verifiable
from weightsmith.verify.schedulers import choose_scheduler

VERIFY = Path(weightsmith.verify.__file__).parent
DEMO = VERIFY.parent / "demo.py"


def test_every_transformer_declares_an_adapter():
    fams = {c.family for c in components()}
    assert {c.family for c in verifiable()} == fams
    for c in verifiable():
        gen = c.generation
        assert isinstance(gen, Generation)
        assert gen.demo_variant in gen.tiny_variants
        assert set(gen.tiny_variants) <= set(c.variants)
        assert set(gen.i2v_variants) <= set(c.variants)
        assert (gen.tiny_size[2] > 1) == gen.video
    assert [f for f, _ in demo_models()] == [c.family for c in verifiable()]


@pytest.mark.parametrize("family", sorted({c.family for c in verifiable()}))
def test_adapter_answers_for_every_tiny_variant(family):
    gen = generation(family)
    for variant in gen.tiny_variants:
        cls = gen.pipeline_class(variant)
        assert cls.__name__.endswith("Pipeline")
        choice = choose_scheduler(family, variant)
        assert choice.build() is not None


def _literals(path: Path) -> list[tuple[int, str]]:
    names = {c.family for c in components()} | {v for c in components() for v in c.variants}
    names.discard("default")
    tree = ast.parse(path.read_text())
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.lower() in names
    ]


def test_verify_and_demo_name_no_family_or_variant():
    found = {
        str(p.relative_to(VERIFY.parent)): lits
        for p in [*sorted(VERIFY.rglob("*.py")), DEMO]
        if (lits := _literals(p))
    }
    assert found == {}
