"""The layout's rules, checked on the source: no import cycle among fastmlp's modules
(imports inside functions included), and nothing outside model.py touches the private
state of Sequential."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fastmlp"


def _module_name(path):
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(module, level, name, is_package):
    """The absolute name of ``from <level dots><name>`` inside ``module``."""
    if level == 0:
        return name
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(modules=MODULES):
    """{module: {fastmlp modules it imports anywhere in its file}}."""
    graph = {}
    for name, path in modules.items():
        edges = set()
        package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node.level, node.module, package)
                # "from pkg import sub" imports the module pkg.sub when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    print(f"{len(graph)} modules, {sum(len(e) for e in graph.values())} imports")
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "fastmlp"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")      # hidden in a function
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    modules = {".".join(p.relative_to(tmp_path).with_suffix("").parts).replace(".__init__", ""): p
               for p in pkg.rglob("*.py")}
    cycle = find_cycle(import_graph(modules))
    assert cycle is not None and set(cycle) == {"fastmlp.a", "fastmlp.sub.b"}, cycle


def _sequential_private_names():
    tree = ast.parse((PKG / "model.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Sequential")
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    names |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
              and isinstance(n.value, ast.Name) and n.value.id == "self"}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_only_model_py_touches_private_state_of_sequential():
    private = _sequential_private_names()
    print("private to Sequential:", sorted(private))
    assert "_dlogits" in private            # the scan sees them
    found = []
    for name, path in MODULES.items():
        if name == "fastmlp.model":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno} .{node.attr}")
    assert not found, found


@pytest.mark.parametrize("kind", ["dense", "conv", "batchnorm"])
def test_parameters_exist_at_construction(kind):
    import numpy as np

    import fastmlp as fm
    first = {"dense": lambda: fm.Dense(4, 3), "conv": lambda: fm.Conv2D(3, 10, 5),
             "batchnorm": lambda: fm.BatchNorm(6)}[kind]()
    model = fm.Sequential([first, fm.Flatten()], loss="mse", optimizer="sgd", seed=0)
    expected = {"dense": 4 * 3 + 3, "conv": 10 * 3 * 25 + 10, "batchnorm": 12}[kind]
    assert model.count_params() == expected
    weights = model.get_weights()
    assert sum(w.size for w in weights) == expected
    model.set_weights([w + 1 for w in weights])
    assert all(np.array_equal(a, b + 1) for a, b in zip(model.get_weights(), weights))
    text = model.summary(print_fn=None)
    assert f"Total params: {expected:,}" in text
    # the same seed draws the same initial weights whether or not the input shape is known
    same = fm.Sequential([type(first).from_config(first.get_config()), fm.Flatten()], loss="mse",
                         optimizer="sgd", seed=0,
                         input_shape={"dense": (4,), "conv": (3, 9, 9), "batchnorm": (6,)}[kind])
    assert all(np.array_equal(a, b) for a, b in zip(same.get_weights(), weights))


def test_every_command_is_a_module_of_the_cli_package():
    """fastmlp/cli/: a module a command (add(sub) and run(args)), all of them in COMMANDS and
    in the parser under their own names; errors, options, sources and runs are shared."""
    import argparse

    from fastmlp import cli
    shared = {"errors", "options", "sources", "runs"}
    files = {p.stem for p in (PKG / "cli").glob("*.py")} - {"__init__"} - shared
    registered = [m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS]
    assert sorted(registered) == sorted(files)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == registered
    for module in cli.COMMANDS:
        name = module.__name__.rsplit(".", 1)[1]
        assert sub.choices[name].get_default("func") is module.run
