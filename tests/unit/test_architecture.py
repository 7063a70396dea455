"""The layering rules of docs/architecture.md, checked from the source (imports parsed with ast, so lazy
imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "backdoor_arena"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the backdoor_arena modules `path` imports (module or `from` targets)."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("backdoor_arena")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("backdoor_arena"):
                continue
            found.add(target)
            for alias in node.names:  # `from . import dp` imports the module backdoor_arena.defenses.dp
                candidate = f"{target}.{alias.name}"
                if (PKG.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or \
                        (PKG.parent / candidate.replace(".", "/")).is_dir():
                    found.add(candidate)
    return found


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_parser_sees_imports():
    # guards the checks below against a parser that finds nothing
    assert "backdoor_arena.api" in GRAPH["backdoor_arena.commands.models"]
    assert "backdoor_arena.defenses.dp" in GRAPH["backdoor_arena.api.training"]


def test_no_import_cycle():
    """Module-level imports form no cycle (a lazy import inside a function is not a cycle at import time,
    but a cycle through one still is a layering smell, so all imports count)."""
    package_of = {m: m for m in MODULES}

    def edges(m: str) -> set[str]:
        out = set()
        for target in GRAPH[m]:
            # a package import means its __init__; ignore a module's import of its own package's __init__
            if target in package_of and target != m and not _within(m, target):
                out.add(target)
        return out

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in edges(m):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("plugins,other", [("attacks", "defenses"), ("defenses", "attacks"),
                                           ("federated", "defenses"), ("federated", "attacks")])
def test_plugin_packages_do_not_import_each_other(plugins, other):
    bad = {m: sorted(t for t in GRAPH[m] if _within(t, f"backdoor_arena.{other}"))
           for m in MODULES if _within(m, f"backdoor_arena.{plugins}")}
    assert not {m: v for m, v in bad.items() if v}


@pytest.mark.parametrize("plugins", ["attacks", "defenses", "federated"])
def test_plugins_import_no_upper_layer(plugins):
    upper = ("backdoor_arena.report", "backdoor_arena.cli", "backdoor_arena.commands", "backdoor_arena.api",
             "backdoor_arena.registries")
    exempt = {"backdoor_arena.federated.plots"}  # the FL figures: part of the reporting layer, read records
    bad = {m: sorted(t for t in GRAPH[m] if any(_within(t, u) for u in upper))
           for m in MODULES if _within(m, f"backdoor_arena.{plugins}") and m not in exempt}
    assert not {m: v for m, v in bad.items() if v}


def test_the_cli_imports_only_the_verbs_and_the_registries():
    allowed = ("backdoor_arena.api", "backdoor_arena.registries", "backdoor_arena.commands", "backdoor_arena.cli")
    cli = [m for m in MODULES if _within(m, "backdoor_arena.commands") or m == "backdoor_arena.cli"]
    bad = {m: sorted(t for t in GRAPH[m] if not any(_within(t, a) for a in allowed) and t != "backdoor_arena")
           for m in cli}
    assert not {m: v for m, v in bad.items() if v}


def test_the_training_loop_knows_no_defense_and_no_attack():
    for m in ("backdoor_arena.train", "backdoor_arena.metrics", "backdoor_arena.nn_tools", "backdoor_arena.triggers"):
        bad = sorted(t for t in GRAPH[m] if _within(t, "backdoor_arena.defenses") or
                     _within(t, "backdoor_arena.attacks") or _within(t, "backdoor_arena.federated"))
        assert not bad, f"{m} imports {bad}"


def test_no_process_wide_state_below_the_verbs():
    """Only the verbs layer's explicit `set_threads` (runtime.py) may change torch's thread count, and no
    library module keeps a module-level cache dict."""
    for name, path in MODULES.items():
        if _within(name, "backdoor_arena.api") or _within(name, "backdoor_arena.commands") or name in (
                "backdoor_arena.cli", "backdoor_arena.runtime"):
            continue
        tree = ast.parse(path.read_text())
        # a forked worker process's own entry function may set its threads: that process is its own
        workers = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name.startswith("_worker")
                   for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and id(node) not in workers:
                fn = node.func
                called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                assert called not in ("set_threads", "set_num_threads", "set_num_interop_threads"), \
                    f"{name} line {node.lineno} sets a process-wide thread count"
        for node in tree.body:  # module level only
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
            value = node.value if isinstance(node, (ast.AnnAssign, ast.Assign)) else None
            if isinstance(target, ast.Name) and target.id.startswith("_") and isinstance(value, ast.Dict) \
                    and not value.keys:
                pytest.fail(f"{name} keeps a module-level cache {target.id} (line {node.lineno}); make it an "
                            "attribute of an object the caller owns")
