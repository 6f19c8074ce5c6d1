"""Imports run one way: no import cycle among gradserve's modules (function-local imports included; importing
``a.b.c`` counts as importing package ``a.b`` too, whose ``__init__`` runs first), the engine imports nothing from the client, the server, the codec, grpc or the generated code, and
the client imports no server module.

Modules are read with ``ast`` from the folders pyproject.toml maps to each package, so the test sees the
source, not what a run happens to import. Imports under ``if TYPE_CHECKING:`` are annotations only and are
not counted.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    """Every gradserve module name and its file, from the package-dir mapping of pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = config["package-dir"]
    found: dict[str, Path] = {}
    for package in config["packages"]:
        parts = package.split(".")
        folder = ROOT / dirs[package] if package in dirs else ROOT / dirs[parts[0]] / Path(*parts[1:])
        for f in folder.glob("*.py"):
            found[package if f.stem == "__init__" else f"{package}.{f.stem}"] = f
    return found


class _Imports(ast.NodeVisitor):
    """Absolute names imported anywhere in a module (function bodies included, ``if TYPE_CHECKING:`` not)."""

    def __init__(self, package: str, known: set[str]) -> None:
        self.package, self.known, self.names = package, known, set[str]()

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(a.name for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        for a in node.names:
            sub = f"{base}.{a.name}"
            self.names.add(sub if sub in self.known else base)


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The absolute module names ``module`` imports: ``from x import y`` counts as ``x.y`` when that is a module."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    visitor = _Imports(package, known)
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.names


def with_packages(module: str, imported: set[str], known: set[str]) -> set[str]:
    """``imported`` plus the packages whose ``__init__`` importing them runs first: ``a.b`` for ``a.b.c``, unless
    ``module`` lies inside ``a.b`` (then that ``__init__`` is already running)."""
    own = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)}
    parents = {n.rsplit(".", i)[0] for n in imported for i in range(1, n.count(".") + 1)}
    return imported | {p for p in parents - own if p in known}


def graph(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    """Import edges between the gradserve modules whose names start with one of ``prefixes``."""
    mods = modules()
    chosen = {m for m in mods if m.startswith(prefixes)}
    return {m: with_packages(m, imports_of(m, mods[m], set(mods)), set(mods)) & chosen for m in chosen}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle() -> None:
    edges = graph(("gradserve",))
    assert "gradserve.client.dispatch" in edges["gradserve.client"], "the scan must see package-level imports"
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_cycle_finder_sees_function_local_imports(tmp_path: Path) -> None:
    """The oracle for the test above: a local import closing a loop is found, one under TYPE_CHECKING is not."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    known = {"p.a", "p.b", "p.c"}
    edges = {f"p.{n}": imports_of(f"p.{n}", tmp_path / f"{n}.py", known) & known for n in "abc"}
    assert edges == {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}
    assert find_cycle(edges) == ["p.a", "p.b", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) is None


def test_importing_a_submodule_runs_its_package_init_first() -> None:
    """The oracle for the package edge: p.f importing p.q.loss runs p.q's ``__init__`` (which imports p.q.pad, which
    imports p.f back: a cycle), while p.q.pad importing its sibling p.q.loss adds no edge to its own package."""
    known = {"p", "p.f", "p.q", "p.q.loss", "p.q.pad"}
    assert with_packages("p.f", {"p.q.loss"}, known) == {"p.q.loss", "p.q"}
    assert with_packages("p.q.pad", {"p.q.loss", "p.f"}, known) == {"p.q.loss", "p.f"}
    edges = {"p.f": with_packages("p.f", {"p.q.loss"}, known), "p.q": {"p.q.pad", "p.q.loss"},
             "p.q.pad": with_packages("p.q.pad", {"p.f"}, known), "p.q.loss": set()}
    assert find_cycle(edges) == ["p.f", "p.q", "p.q.pad", "p.f"]


def test_engine_imports_nothing_above_it() -> None:
    mods = modules()
    banned = ("gradserve.client", "gradserve.server", "gradserve.proto", "gradserve.v1", "grpc", "google")
    bad = {
        m: sorted(n for n in imports_of(m, f, set(mods)) if n.startswith(banned))
        for m, f in mods.items() if m.startswith("gradserve.engine")
    }
    assert {m: n for m, n in bad.items() if n} == {}


def test_client_imports_no_server_module() -> None:
    mods = modules()
    bad = {
        m: sorted(n for n in imports_of(m, f, set(mods)) if n.startswith("gradserve.server"))
        for m, f in mods.items() if m.startswith("gradserve.client")
    }
    assert {m: n for m, n in bad.items() if n} == {}
