"""The package's shape, checked: no import cycles, no oversized modules, and no family or variant
named outside weightsmith/families/.

Each check walks the source with ``ast`` (imports inside functions count too). Work still under
way elsewhere is listed in an explicit allow-list naming who removes it; an entry goes when its
owner's change lands. Nothing new may join the lists.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import weightsmith

PACKAGE = Path(weightsmith.__file__).parent
ROOT = PACKAGE.parent
MAX_LINES = 500

# Work still under way, by owner: module (dotted) or file (path) prefixes each check lets pass.
# An import cycle is let pass when every module in it lies under one entry's prefixes. Empty
# tables are the goal; nothing new may join them.
ALLOWED_CYCLES: dict[str, tuple[str, ...]] = {}

# Source files over MAX_LINES still to be split.
ALLOWED_LONG: dict[str, tuple[str, ...]] = {}

# Files outside weightsmith/families/ that still name a family or variant.
ALLOWED_LITERALS: dict[str, tuple[str, ...]] = {}

# Variant names that are ordinary words in code ("default" recipe, "default" device...); the
# family-specific names are checked.
GENERIC_NAMES = frozenset({"default", "generic"})


def _allowed(name: str, table: dict[str, tuple[str, ...]], sep: str) -> bool:
    return any(
        name == p or name.startswith(p if p.endswith(sep) else p + sep) for ps in table.values() for p in ps
    )


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _sources() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the weightsmith modules it imports anywhere in its body (functions included)."""
    paths = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(frozenset(comp))
    return found


def test_cycle_finder_finds_function_level_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    bad = []
    for comp in cycles(import_graph()):
        if not any(all(_allowed(m, {o: ps}, ".") for m in comp) for o, ps in ALLOWED_CYCLES.items()):
            bad.append(sorted(comp))
    assert not bad, f"import cycles among weightsmith modules: {bad}"


# The layers of docs/architecture.md, bottom to top, by module prefix (the longest prefix wins).
# A module may import from its own layer or any below; importing upwards fails.
LAYERS: dict[str, int] = {
    "weightsmith": 11,  # the package facade: the public names of weightsmith.api, loaded lazily
    "weightsmith._version": 0,
    "weightsmith._facade": 0,  # makes weightsmith.convert & co callable; finds the verb by name
    "weightsmith._lazy": 0,  # PEP 562 lazy exports of a package's public names
    "weightsmith.errors": 0,
    "weightsmith.memory": 0,
    "weightsmith.progress": 0,
    "weightsmith.threads": 0,
    "weightsmith.kernels": 1,
    "weightsmith.io": 2,
    "weightsmith.families": 3,
    "weightsmith.convert": 4,
    "weightsmith.tiny": 4,
    "weightsmith.inspect": 4,
    "weightsmith.lora": 5,
    "weightsmith.convert.run": 6,
    "weightsmith.quantize": 6,
    "weightsmith.load": 7,
    "weightsmith.onnx.runtime": 7,  # ONNX Runtime sessions: verify runs exported graphs with them
    "weightsmith.onnx.layout": 7,
    "weightsmith.onnx.module": 7,  # an exported transformer as the module verify's pipeline calls
    "weightsmith.onnx": 8,
    "weightsmith.onnx.cli": 10,  # the export command: parses options, calls weightsmith.api
    "weightsmith.verify": 8,
    "weightsmith.publish": 8,
    "weightsmith.auto": 9,
    "weightsmith.demo": 9,
    "weightsmith.api": 9,  # the Python API: the verbs over everything below
    "weightsmith.cli": 10,  # the command line: options parsed, the API called, results printed
    "weightsmith.cli_auto": 10,
    "weightsmith.cli_choices": 10,
    "weightsmith.cli_progress": 10,
    "weightsmith.cli_entry": 10,
    "weightsmith.verify.cli": 10,
    "weightsmith.publish.cli": 10,
    "weightsmith.__main__": 10,
}


def _layer(mod: str) -> int:
    best = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_layers_only_import_downwards():
    up = [
        f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})"
        for mod, deps in import_graph().items()
        for dep in deps
        if _layer(dep) > _layer(mod)
    ]
    assert not up, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(up))


def test_every_package_folder_is_a_package():
    missing = [
        _rel(d)
        for d in PACKAGE.rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()
    ]
    assert not missing, f"folders of modules without __init__.py (a wheel would leave them out): {missing}"


def test_no_oversized_source_files():
    long = {}
    for path in _sources():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and not _allowed(_rel(path), ALLOWED_LONG, "/"):
            long[_rel(path)] = n
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def _names() -> set[str]:
    from weightsmith.families import components

    names = set()
    for comp in components():
        names.add(comp.family)
        names.update(comp.variants)
    return names - GENERIC_NAMES


def test_no_family_or_variant_literals_outside_families():
    names = _names()
    hits: dict[str, list[str]] = {}
    for path in _sources():
        rel = _rel(path)
        if rel.startswith("weightsmith/families/") or _allowed(rel, ALLOWED_LITERALS, "/"):
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                hits.setdefault(rel, []).append(f"{node.lineno}:{node.value!r}")
    assert not hits, f"family/variant names outside weightsmith/families/ (ask the registry): {hits}"


def test_cli_choices_come_from_the_registry(monkeypatch):
    import weightsmith.families as fam
    from weightsmith.cli_choices import FAMILY, LAYOUT

    assert FAMILY.choices == tuple(fam.families()) and LAYOUT.choices == tuple(fam.layouts())
    # asked each time, so a family registered later is offered too
    monkeypatch.setattr(fam, "families", lambda: ["newfamily"])
    assert FAMILY.choices == ("newfamily",) and FAMILY.convert("newfamily", None, None) == "newfamily"


def _error_classes() -> set[str]:
    import weightsmith.errors as errors

    return {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.WeightsmithError)
    }


def test_every_weightsmith_error_is_raised_with_a_hint():
    # The CLI prints "error: <message>; <hint>": the hint tells the user what to do. A class chosen
    # at run time or raised through a helper is not seen here; the helper's own raise is.
    classes = _error_classes()
    bare = []
    for path in _sources():
        for node in ast.walk(_tree(path)):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            if name in classes and not any(k.arg == "hint" for k in node.exc.keywords):
                bare.append(f"{_rel(path)}:{node.lineno} {name}")
    assert not bare, f"weightsmith errors raised without hint= (say what the user should do): {bare}"
