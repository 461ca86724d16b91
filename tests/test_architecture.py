"""The package's shape, checked with ast: imports run one way, no cycle, no private imports.

Layers (docs/DESIGN.md): core -> runner -> experiments -> report -> CLIs. Imports
inside functions and ``importlib.import_module("caffe_attacks...")`` strings
count. The checker runs on a made-up package first, so it is known to catch
what it looks for.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "caffe_attacks"
CLI_MODULES = {"run", "transfer", "demo", "cli"}      # plus every __main__
LAYERS = {"runner": 1, "experiments": 2, "report": 3}


def layer(module):
    """0 core, 1 runner, 2 experiments, 3 report, 4 CLI (module relative to the package)."""
    parts = module.split(".")
    if module in CLI_MODULES or parts[-1] == "__main__":
        return 4
    return LAYERS.get(parts[0], 0)


def scan(root):
    """{module: {imported module: [names]}} of the package at ``root`` (names relative)."""
    root = Path(root)
    files = {".".join(p.relative_to(root).with_suffix("").parts).replace(".__init__", "")
             .replace("__init__", ""): p for p in root.rglob("*.py")}
    prefix = root.name + "."

    def resolve(name):
        name = name[len(prefix):] if name.startswith(prefix) else ("" if name == root.name else None)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in files.items():
        out = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found = []
            if isinstance(node, ast.Import):
                found = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found = [(node.module + "." + a.name, a.name) for a in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                found = [(str(node.args[0].value), None)]
            for full, name in found:
                target = resolve(full)
                if target is not None and target != module:
                    out.setdefault(target, []).append(name)
    return graph


def cycles(graph):
    """Modules on an import cycle (depth-first search for back edges)."""
    state, on_cycle = {}, set()

    def visit(m, path):
        state[m] = "open"
        for t in graph.get(m, ()):
            if state.get(t) == "open":
                on_cycle.update(path[path.index(t):])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return on_cycle


def problems(root):
    graph = scan(root)
    out = ["cycle through %s" % m for m in sorted(cycles(graph))]
    for m, targets in graph.items():
        for t, names in targets.items():
            out += ["%s imports private %s from %s" % (m, n, t)
                    for n in names if n and n.startswith("_") and not n.startswith("__")]
            if layer(t) > layer(m):
                out.append("%s (layer %d) imports %s (layer %d)" % (m, layer(m), t, layer(t)))
    for path in Path(root).rglob("*.py"):
        text = path.read_text()
        if "ArgumentParser(" in text and "__main__" not in text:
            out.append("%s builds a parser but is no CLI" % path.name)
        if ".build_parser(" in text:
            out.append("%s calls another module's build_parser" % path.name)
    return out


def test_the_checker_finds_cycles_private_imports_upward_imports_and_foreign_parsers(tmp_path):
    pkg = tmp_path / "caffe_attacks"
    (pkg / "runner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runner" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from caffe_attacks.b import _hidden\n")
    (pkg / "b.py").write_text("import importlib\nimportlib.import_module('caffe_attacks.a')\n"
                              "from caffe_attacks.runner import thing\n_hidden = 1\n")
    (pkg / "runner" / "thing.py").write_text("import argparse\nargparse.ArgumentParser()\n"
                                             "from caffe_attacks import run\nrun.build_parser()\n")
    (pkg / "run.py").write_text("if __name__ == '__main__':\n    pass\n")
    found = "\n".join(problems(pkg))
    assert "cycle through a" in found and "cycle through b" in found
    assert "a imports private _hidden from b" in found
    assert "b (layer 0) imports runner.thing (layer 1)" in found
    assert "runner.thing (layer 1) imports run (layer 4)" in found
    assert "thing.py builds a parser" in found and "thing.py calls another" in found


@pytest.mark.parametrize("module, expected", [("attacks", 0), ("zoo.multiscale", 0),
                                              ("runner.pipeline", 1), ("experiments.jobs", 2),
                                              ("report.tables", 3), ("experiments.__main__", 4),
                                              ("run", 4), ("weights.__main__", 4)])
def test_layers(module, expected):
    assert layer(module) == expected


def test_the_package_imports_one_way_without_cycles_or_private_names():
    assert problems(PACKAGE) == []
