"""Each family's stored diffusers fields (``<family>/config_fields.py``) are what the installed
diffusers classes declare, and config checks use them only when their version is installed."""

from __future__ import annotations

import ast

import pytest

from weightsmith.families import components
from weightsmith.families import config_fields as cf
from weightsmith.families.config_fields_writer import _default_source, annotation_source

STORED = [c for c in components() if c.config_fields is not None]


def test_every_builtin_component_has_a_table():
    assert STORED, "no family stores its diffusers fields"
    for comp in STORED:
        names = {comp.class_name(v) for v in (None, *comp.variants)}
        assert names <= set(comp.config_fields.classes), comp.title()


@pytest.mark.parametrize("comp", STORED, ids=lambda c: c.title())
def test_table_matches_the_installed_diffusers(comp):
    if comp.config_fields.diffusers != cf.installed_diffusers():
        pytest.skip(
            f"table read from diffusers {comp.config_fields.diffusers}; installed "
            f"{cf.installed_diffusers()}: run python -m weightsmith.families.config_fields_writer"
        )
    for variant in (None, *comp.variants):
        live = cf.class_fields(comp.model_class(variant))
        stored = comp.config_fields.classes[comp.class_name(variant)]
        assert list(stored) == list(live)
        for name, (ann, default) in live.items():
            s_ann, s_default = stored[name]
            assert annotation_source(s_ann) == annotation_source(ann), name
            literal = _default_source(default)
            assert (s_default == default) if literal != "None" else s_default is None, name


def test_fields_of_uses_the_table_only_for_its_diffusers(monkeypatch):
    comp = STORED[0]
    from_table = cf.fields_of(comp)
    monkeypatch.setattr(cf, "installed_diffusers", lambda: "0.0.0-other")
    from_classes = cf.fields_of(comp)
    assert [list(t) for t in from_table] == [list(t) for t in from_classes]
    assert from_classes == [cf.class_fields(comp.model_class(v)) for v in _distinct_variants(comp)]


def _distinct_variants(comp):
    seen, out = set(), []
    for v in (None, *comp.variants):
        if comp.class_name(v) not in seen:
            seen.add(comp.class_name(v))
            out.append(v)
    return out


def test_annotation_source_round_trips():
    for text in ("int", "int | None", "tuple[int, ...]", "str | tuple[str]", "list[float]", "type(None)"):
        assert annotation_source(eval(text)) == text  # noqa: S307 - our own literals
    assert annotation_source(object) == "Any"
    assert ast.literal_eval(_default_source((1, 2, 2))) == (1, 2, 2)
    assert _default_source(float("inf")) == "None"
