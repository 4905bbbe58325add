"""The layout's rules, checked on the source: ``converters`` never imports ``dicomnode``, and
no floor of ``dicomnode`` imports a higher one.

Imports are read with ``ast`` (module level and inside functions alike: a lazy import is still a
dependency); imports under ``if TYPE_CHECKING:`` are for annotations only and not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Floors of dicomnode, lowest first. A module may import its own floor's other modules only
#: where this says so (stage packages are independent of each other) and any lower floor.
#: ``*.cli`` and ``__main__`` modules are entry points: they sit on the top floor.
FLOORS: list[tuple[str, ...]] = [
    # leaf libraries that import nothing else of the node: the nnU-Net runtime, and the model
    # registry (plain data the configuration validates against)
    ("dicomnode.models.runtime",),
    ("dicomnode.models.registry",),
    ("dicomnode.config",),
    ("dicomnode.logs", "dicomnode.storage", "dicomnode.grouping"),
    # the local Orthanc + OHIF stack: configuration files and processes, no node state
    ("dicomnode.viewer",),
    ("dicomnode.store",),
    # research routing: what a forward or a de-identifying delivery sends (router and
    # dispatcher both use it)
    ("dicomnode.forward",),
    # the stages at the edges and the model pipelines
    ("dicomnode.receiver", "dicomnode.assembler", "dicomnode.models", "dicomnode.dispatcher",
     "dicomnode.rules"),
    # the middle: run a case, health, retention, webhooks (back-off shared with dispatch)
    ("dicomnode.run", "dicomnode.health", "dicomnode.retention", "dicomnode.webhooks"),
    # who runs jobs: the local executor, or workers elsewhere through a broker
    ("dicomnode.jobs", "dicomnode.distributed"),
    # Prometheus metrics read from the index, the storage and the host (no node state)
    ("dicomnode.metrics",),
    # the operator console and its API: reads the index, acts through the jobs' controls
    ("dicomnode.web",),
    ("dicomnode.service",),
    ("dicomnode.cli",),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` (module ``module``, by default named from its
    place in the repository) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def floor_of(module: str) -> int | None:
    """The floor of a dicomnode module (the longest matching prefix wins)."""
    if module.rsplit(".", 1)[-1] in ("cli", "__main__"):
        return len(FLOORS) - 1
    best: tuple[int, int] | None = None
    for index, floor in enumerate(FLOORS):
        for prefix in floor:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


def package_of(module: str) -> str:
    """The floor entry a module belongs to (e.g. ``dicomnode.receiver``)."""
    matches = [p for floor in FLOORS for p in floor if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else module


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_converters_never_import_dicomnode() -> None:
    offenders = {f"{_module_name(path)} imports {name}"
                 for path in _sources("converters") for name in imports_of(path)
                 if name == "dicomnode" or name.startswith("dicomnode.")}
    assert not offenders, sorted(offenders)


def test_every_dicomnode_module_is_on_a_floor() -> None:
    homeless = [_module_name(p) for p in _sources("dicomnode")
                if _module_name(p) != "dicomnode" and floor_of(_module_name(p)) is None]
    assert not homeless, f"add these to FLOORS: {homeless}"


#: Imports between packages of one floor that the layout allows, with the reason.
SAME_FLOOR = {
    # health echoes the peers the dispatcher delivers to, by the dispatcher's delivery names
    ("dicomnode.health", "dicomnode.dispatcher"),
}


def test_lower_floors_never_import_higher_ones() -> None:
    offenders = []
    for path in _sources("dicomnode"):
        module = _module_name(path)
        own = floor_of(module)
        if own is None or module == "dicomnode":
            continue
        for name in imports_of(path):
            if not name.startswith("dicomnode."):
                continue
            target = floor_of(name)
            if target is None:
                continue
            here, there = package_of(module), package_of(name)
            if target > own:
                offenders.append(f"{module} (floor {own}) imports {name} (floor {target})")
            elif target == own and here != there and own != len(FLOORS) - 1 \
                    and (here, there) not in SAME_FLOOR and (there, here) not in SAME_FLOOR:
                offenders.append(f"{module} imports {name}: both on floor {own}")
    assert not offenders, "\n".join(sorted(offenders))


@pytest.mark.parametrize("source, expected", [
    ("from . import results\n", {"converters", "converters.results"}),
    ("import x.y\nif TYPE_CHECKING:\n    import dicomnode.cli\n", {"x.y"}),
    ("def f():\n    from dicomnode.jobs import stages\n", {"dicomnode.jobs",
                                                          "dicomnode.jobs.stages"}),
])
def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path: Path, source: str,
                                                         expected: set[str]) -> None:
    """The checks above are only as good as this reader: it must find imports inside
    functions and resolve relative ones, and leave TYPE_CHECKING blocks out."""
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    assert imports_of(probe, "converters.probe") == expected
