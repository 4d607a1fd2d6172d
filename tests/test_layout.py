"""Layer 0: the package's shape. Files a person can hold in their head, and no import cycles.

Both are read from the source (no imports), so the checks take milliseconds and a cycle is named even when
Python would happen to import the modules in an order that hides it.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "seqvae_cli"
MAX_LINES = 420   # the guide's "about 400", with a little slack for a docstring


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top_level_imports(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports when it is imported: module-level statements only (imports inside
    functions and under `if TYPE_CHECKING:` run later or never, so they cannot close a cycle)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqvae_cli"):
            for alias in node.names:   # `from seqvae_cli.training import distributed` names a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("seqvae_cli")}
    return found & known


def test_no_file_is_longer_than_a_person_can_hold_in_their_head():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, as the list of modules around it."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_the_package_has_no_import_cycles():
    mods = modules()
    graph = {name: top_level_imports(path, set(mods)) for name, path in mods.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """The checks above can fail: two modules importing each other are read as edges and reported."""
    (tmp_path / "seqvae_cli").mkdir()
    a, b = tmp_path / "seqvae_cli" / "a.py", tmp_path / "seqvae_cli" / "b.py"
    a.write_text("from seqvae_cli.b import x\n")
    b.write_text("from seqvae_cli.a import y\n")
    known = {"seqvae_cli.a", "seqvae_cli.b"}
    graph = {"seqvae_cli.a": top_level_imports(a, known), "seqvae_cli.b": top_level_imports(b, known)}
    assert find_cycles(graph) == [["seqvae_cli.a", "seqvae_cli.b", "seqvae_cli.a"]]
