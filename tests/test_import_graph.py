"""The package's import graph, read from the AST of every module under satseg_jax/
(function-level imports included: they are where circles hide): no circles, arrows that
only point down the layer order, no reaching into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "satseg_jax"

# Layer order, low to high: a module may import its own layer or a lower one.
# raster <- datasets <- input_pipeline <- steps <- runs <- train/evaluate/predict <- cli
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "io_utils", "classes", "config_files", "config_overrides", "metrics",
              "losses", "parallel", "checkpoints", "plots", "cpu", "models", "preemption",
              "training_control", "augment", "finetune")),
    ("weights", ("weights",)),  # pretrained encoders: PyTorch state dicts -> Flax
    ("raster", ("raster", "catalog", "area")),
    ("datasets", ("datasets", "inspect", "inspection")),
    ("input_pipeline", ("input_pipeline",)),
    ("steps", ("steps",)),
    ("runs", ("runs", "summaries", "tta", "sliding_window", "tiled_scene")),
    ("apps", ("train", "evaluate", "predict", "baseline")),  # siblings: none imports another
    ("whole_images", ("predict_images", "evaluate_images")),  # folders of whole images
    ("mapping", ("mapping",)),  # many scenes: map, mosaic, area by region and period
    ("export", ("export",)),  # SavedModel / StableHLO export and the JAX-free predictor
    ("sweeps", ("variant_sweep", "model_cost", "sweep_tables")),
    ("cli", ("cli", "commands", "__main__")),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _resolve(target: str, mods: dict[str, Path]) -> str | None:
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, str]]:
    """(imported module, line, imported name or '') for every satseg_jax import in ``path``,
    at any depth of the AST (module level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("satseg_jax"):
                    out.append((_resolve(a.name, mods), node.lineno, ""))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("satseg_jax"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                target = sub if sub in mods else _resolve(mod, mods)
                out.append((target, node.lineno, "" if sub in mods else a.name))
    return [(t, line, n) for t, line, n in out if t and t != name]


def _layer(module: str) -> int:
    rel = module.removeprefix("satseg_jax").lstrip(".")
    head = rel.split(".")[0] if rel else ""
    for i, (_, members) in enumerate(LAYERS):
        if head in members:
            return i
    raise AssertionError(f"{module}: in no layer; add it to LAYERS in {__file__}")


def _graph():
    mods = _modules()
    return mods, {m: _imports(m, p, mods) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for m in _modules():
        if m != "satseg_jax":
            _layer(m)


def test_no_import_circles_function_level_imports_included():
    mods, graph = _graph()
    edges = {m: {t for t, _, _ in imps if t != "satseg_jax" and not m.startswith(t + ".")}
             for m, imps in graph.items()}
    function_level = sum(
        1 for p in mods.values() for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom)))
    assert function_level > 0  # the walk must see them, or circles could hide there
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not circles, f"import circles ({function_level} function-level imports read): " \
                        f"{circles}"


def test_imports_point_down_the_layers():
    _, graph = _graph()
    wrong = []
    for m, imps in graph.items():
        if m == "satseg_jax":
            continue
        for target, line, _ in imps:
            if target == "satseg_jax":
                continue
            lm, lt = _layer(m), _layer(target)
            sibling_apps = LAYERS[lm][0] == "apps" and lm == lt
            if lt > lm or sibling_apps:
                wrong.append(f"{m}:{line} imports {target} ({LAYERS[lm][0]} -> "
                             f"{LAYERS[lt][0]})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_models_know_nothing_of_tensorflow_rasterio_or_the_cpu_package():
    heavy = ("tensorflow", "tensorflow_datasets", "rasterio", "satseg_jax.cpu")
    found = []
    for p in (PKG / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{p.name}:{node.lineno} {n}" for n in names
                      if any(n == h or n.startswith(h + ".") for h in heavy)]
    assert not found, found


def test_no_module_imports_another_modules_private_names():
    mods, graph = _graph()
    wrong = [f"{m}:{line} imports {target}.{name}"
             for m, imps in graph.items() for target, line, name in imps
             if name.startswith("_") and not name.startswith("__")]
    for m, path in mods.items():  # module._name through an imported module
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("satseg_jax"):
                aliases |= {a.asname or a.name for a in node.names
                            if f"{node.module}.{a.name}" in mods}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names
                            if a.name.startswith("satseg_jax") and a.asname}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                wrong.append(f"{m}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(sorted(set(wrong)))
