"""The package's import graph: imports flow one way between capabilities (no
circles), and the documented API imports in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mlx_grow"

# Lower layers never import higher ones (a layer may import its own layer's
# modules as long as that makes no circle).
LAYERS = [
    {"io", "base", "backend", "mlx_lm_parts", "papers"},
    {"tokenizer", "substrate", "data", "sample"},
    {"model"},
    {"checkpoint", "config"},
    {"training"},
    {"merge"},
    {"generate", "convert"},  # convert sits below api: load() imports our exports
    {"api"},
    {"eval", "evaluate"},
    {"reproduce"},
    {"cli", "__main__"},
    {"reference"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set:
    """Every mlx_grow module `path` imports, at module level or inside functions."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mlx_grow")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            if not base.startswith("mlx_grow"):
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{a.name}"
                out.add(sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                        or (PKG.parent / sub.replace(".", "/")).is_dir() else base)
    return out


def graph() -> dict:
    mods = {module_name(p): p for p in PKG.rglob("*.py") if "assets" not in p.parts}
    g = {}
    for name, path in mods.items():
        g[name] = {m for m in imports_of(path, name) if m in mods and m != name}
    return g


def group(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "mlx_grow"


def find_cycle(g: dict):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circle_between_modules():
    g = graph()
    # a package's __init__ re-exports its submodules: edges from a submodule up
    # to its own package are not circles of the design
    g = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in g.items()}
    assert find_cycle(g) is None, f"import circle: {' -> '.join(find_cycle(g))}"


def test_no_import_circle_between_capabilities():
    g = {}
    for n, deps in graph().items():
        g.setdefault(group(n), set()).update(group(m) for m in deps if group(m) != group(n))
    g.pop("mlx_grow", None)
    assert find_cycle(g) is None, f"capability circle: {' -> '.join(find_cycle(g))}"


def test_imports_flow_down_the_layers():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    groups = {group(n) for n in graph()} - {"mlx_grow"}
    assert groups <= set(layer), f"modules with no layer: {sorted(groups - set(layer))}"
    bad = sorted(f"{n} -> {m}" for n, deps in graph().items() for m in deps
                 if group(n) in layer and group(m) in layer and layer[group(m)] > layer[group(n)])
    assert not bad, "imports that go up a layer:\n" + "\n".join(bad)


def test_readme_python_api_in_a_fresh_interpreter():
    code = ("from mlx_grow import load, generate, stream_generate, batch_generate\n"
            "import inspect\n"
            "assert inspect.isfunction(generate) and inspect.isfunction(load), (generate, load)\n"
            "import sys; assert 'lm_eval' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# Packages that take a tenth of a second to seconds to import, or pull such
# packages in (mlx_lm imports transformers, which imports torch): the commands
# that need one import it where they use it (benchmarks/bench_startup.py).
HEAVY = ("mlx_lm", "transformers", "torch", "datasets", "matplotlib", "pandas", "pyarrow", "lm_eval")


def test_import_and_cli_help_import_no_heavy_package():
    for start in ("import mlx_grow",
                  "import mlx_grow.cli\nsys.argv = ['mlx-grow', '--help']\n"
                  "try:\n    mlx_grow.cli.main()\nexcept SystemExit:\n    pass"):
        code = (f"import sys\n{start}\n"
                f"print('heavy:', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.splitlines()[-1] == "heavy: []", f"{start!r} imports {r.stdout.splitlines()[-1]}"


def test_eval_command_does_not_import_lm_eval():
    code = ("import sys\nfrom mlx_grow import cli\nfrom mlx_grow.eval import runner, report\n"
            "assert 'lm_eval' not in sys.modules\n"
            "import mlx_grow.evaluate as E\n"
            "assert E.LM_EVAL is ('lm_eval' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_scripts_import_mlx_grow_before_mlx():
    """Every benchmark imports mlx_grow before mlx (imported after, the fast CPU BLAS
    cannot load and the figures measure the slow one)."""
    import re

    for f in sorted((PKG.parent / "benchmarks").glob("*.py")):
        lines = [ln for ln in f.read_text().splitlines() if re.match(r"(import|from) mlx(_grow)?([. ]|$)", ln)]
        if any(re.match(r"(import|from) mlx[. ]", ln) for ln in lines):
            assert re.match(r"(import|from) mlx_grow", lines[0]), f"{f.name} imports mlx before mlx_grow"
