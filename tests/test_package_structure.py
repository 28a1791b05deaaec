"""The shape of ``mai_core``: wings in a bottom-to-top order, no import cycles, Streamlit only in the app wing,
no private names across wings, short package faces, no sprawling files.

Imports are read from the source (every ``import`` statement, including those inside functions, since a
lazy import is still a dependency), so these checks need neither torch nor streamlit.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "mai_core"

# Bottom to top: a wing may import its own layer and the layers below, never one above.
LAYERS = [
    {"__init__", "_lazy", "errors", "io", "workspace", "procs", "metrics", "device"},
    {"data"},
    {"genes", "models"},
    {"augment", "runs"},
    {"training", "explain", "spatial"},
    {"commands", "cli", "__main__"},
    {"app"},
]
LAYER_OF = {w: i for i, layer in enumerate(LAYERS) for w in layer}

# Files allowed above MAX_LINES: each holds one cohesive algorithm.
MAX_LINES = 500
LONG_FILES: dict[str, str] = {
    "mai_core/data/importer.py": "one algorithm: staged, atomic import of ST sections into one gene table",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        mods[name] = path
    return mods


MODULES = _modules()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every mai_core import in a file."""
    out = []
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = _package_of(name, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full, None, node.lineno) if full in MODULES else (base, a.name, node.lineno))
    return out


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        if "." not in target:
            return None
        target = target.rsplit(".", 1)[0]
    return target


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _, _ in _imports(name, path):
            if target.startswith("mai_core"):
                t = _resolve(target)
                if t and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_every_wing_has_a_layer():
    wings = {_wing(m) for m in MODULES}
    assert wings <= set(LAYER_OF), f"wings without a place in LAYERS: {sorted(wings - set(LAYER_OF))}"


def test_no_import_cycle_inside_mai_core():
    assert _cycles(_graph()) == []


def test_no_wing_imports_a_higher_wing_and_wings_form_no_cycle():
    bad = []
    wing_graph: dict[str, set[str]] = defaultdict(set)
    for a, targets in _graph().items():
        for b in targets:
            wa, wb = _wing(a), _wing(b)
            if wa == wb:
                continue
            wing_graph[wa].add(wb)
            if LAYER_OF[wb] > LAYER_OF[wa]:
                bad.append(f"{a} imports {b} (layer {LAYER_OF[wb]} > {LAYER_OF[wa]})")
    assert bad == []
    assert _cycles(wing_graph) == []
    assert "training" not in wing_graph["runs"]


def test_streamlit_only_in_the_app_wing_and_pages():
    offenders = []
    for name, path in MODULES.items():
        if _wing(name) == "app":
            continue
        for target, _, line in _imports(name, path):
            if target.split(".")[0] == "streamlit":
                offenders.append(f"{path.relative_to(REPO)}:{line}")
    assert offenders == []


def test_no_private_name_is_imported_across_wings():
    offenders = []
    for name, path in MODULES.items():
        for target, imported, line in _imports(name, path):
            t = _resolve(target) if target.startswith("mai_core") else None
            if t is None or _wing(t) == _wing(name):
                continue
            private_module = any(p.startswith("_") and p not in ("__init__", "__main__", "_lazy")
                                 for p in t.split("."))
            if (imported and imported.startswith("_") and not imported.startswith("__")) or private_module:
                offenders.append(f"{path.relative_to(REPO)}:{line} {t}.{imported or ''}")
    # the app, pages and tests reach the library only through public names too
    for path in [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]:
        for target, imported, line in _imports("app_script", path):
            if target.startswith("mai_core") and imported and imported.startswith("_"):
                offenders.append(f"{path.relative_to(REPO)}:{line} {target}.{imported}")
    assert offenders == []


def test_wing_faces_are_short_and_declare_their_names():
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name in ("mai_core", "mai_core.commands"):  # commands: a plug-in folder
            continue
        text = path.read_text()
        assert "__all__" in text, f"{path.relative_to(REPO)} declares no __all__"
        assert len(text.splitlines()) <= 40, f"{path.relative_to(REPO)} is more than a face"


def test_no_sprawling_files():
    long = {}
    for path in list(PKG.rglob("*.py")) + [REPO / "app.py", *(REPO / "pages").glob("*.py")]:
        n = len(path.read_text().splitlines())
        rel = str(path.relative_to(REPO))
        if n > MAX_LINES and rel not in LONG_FILES:
            long[rel] = n
    assert long == {}, f"split these by concern (or name the one algorithm they hold in LONG_FILES): {long}"


def test_exported_names_exist():
    import importlib

    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "mai_core":
            continue
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", ()):
            if attr in ("FeatureExtractor",):  # built on first use (subclasses torch's Module)
                continue
            assert hasattr(mod, attr), f"{name} exports {attr} but has no such name"


def _top_level_names(path: Path) -> set[str] | None:
    """Names a module defines at top level (None when it has a module ``__getattr__``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        if n.id == "__getattr__":
                            return None
                        names.add(n.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
                elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
    return names


def _face_names(path: Path) -> set[str]:
    """Names a lazy package face exports: the strings of its ``attach`` table plus its own names."""
    tree = ast.parse(path.read_text())
    names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names | (_top_level_names(path) or set())


def test_attributes_used_on_library_modules_exist():
    """``module.name`` on an imported mai_core module names something that module defines (catches moves)."""
    missing = []
    files = [(n, p) for n, p in MODULES.items()]
    files += [("app_script", REPO / "app.py")] + [("app_script", p) for p in sorted((REPO / "pages").glob("*.py"))]
    files += [("test_script", p) for p in sorted((REPO / "tests").glob("test_*.py"))]
    for name, path in files:
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("mai_core.") and a.asname and a.name in MODULES:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mai_core") and not node.level:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in MODULES:
                        aliases[a.asname or a.name] = full
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                target = aliases[node.value.id]
                tpath = MODULES[target]
                known = _face_names(tpath) if tpath.name == "__init__.py" else _top_level_names(tpath)
                if known is None or node.attr in known or node.attr.startswith("__"):
                    continue
                sub = f"{target}.{node.attr}"
                if sub in MODULES:
                    continue
                missing.append(f"{path.relative_to(REPO)}:{node.lineno} {target}.{node.attr}")
    assert sorted(set(missing)) == []


def test_no_face_exports_a_name_that_is_also_a_submodule():
    """Importing a submodule sets the package attribute of its name, which would hide an exported function."""
    clashes = []
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "mai_core":
            continue
        subs = {p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir() if p.is_dir()}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple):  # the exported names of an attach table
                clashes += [f"{name}.{e.value}" for e in node.elts
                            if isinstance(e, ast.Constant) and e.value in subs]
    assert clashes == []
