"""The package's import rules, read from its source with `ast` (nothing is imported, so the rules hold for code paths
no test runs).

The graph has one node per module of `fapn_hf` (a package is its `__init__.py`) and one edge per import of another
module of the package: module-level and function-level (lazy) imports, `if TYPE_CHECKING:` blocks, relative and
absolute forms, `from . import x` resolved to the submodule `x` where there is one, and `importlib.import_module`
with a name that can be read from the source (a constant, or `f"{package}.{name}"` over a package known here: an edge
to each of that package's direct submodules, as the registry's discovery loop imports every one of them).

The rules, one test each:
1. The shipped kernel (`fapn_hf/modeling/*.py`) imports nothing of the package outside `fapn_hf/modeling`, and only
   as `from .name import X` with `name.py` a sibling file: transformers copies a shipped file's relative imports by
   basename from the same folder and nothing else (`from . import x`, `from ..x`, `from .a.b`, absolute imports of
   the package all break a saved folder).
2. In `fapn_hf/modeling`, a family's files (`configuration_<family>`, `modeling_<family>`,
   `image_processing_<family>`) import no other family's files, and the kernel (every other module there) imports no
   family file: a family's shipped set is the kernel plus its own files.
3. `fapn_hf.families.<a>` imports no `fapn_hf.families.<b>` (the registry, `families/__init__.py` and `base.py`,
   may), nor family b's shipped files in `fapn_hf/modeling`.
4. Layers, bottom to top: `modeling` < `labels`, `tasks`, `convert` < `families` < the engines `inference`, `export`,
   `training`, `hub` < the applications `benchmark`, `cli`. Nothing imports a higher layer (the package root, which
   imports every layer, included); peers in a layer import each other without a cycle between them, except that
   `tasks` and `convert` never import each other. `fapn_hf/__init__.py` and `__main__.py` stand outside;
   `_version.py` imports nothing.
5. No import cycle between modules, counting lazy imports: a cycle hidden by an import inside a function is still one.

The checker itself is tested on small synthetic packages at the end of this file.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "fapn_hf"

KERNEL = "modeling"  # the shipped, flat sub-package
FAMILY_FILE_PREFIXES = ("configuration_", "modeling_", "image_processing_")
LAYERS: dict[str, int] = {
    "modeling": 0,
    "labels": 1,
    "tasks": 1,
    "convert": 1,
    "families": 2,
    "inference": 3,
    "export": 3,
    "training": 3,
    "hub": 3,  # an engine: cards, uploads, conversion folders and the Space builder ask the registry too
    "benchmark": 4,
    "cli": 4,
}
LAYER_EXCEPTIONS = frozenset({("tasks", "convert"), ("convert", "tasks")})  # same layer, yet never each other
OUTSIDE_LAYERS = frozenset({"__init__", "__main__", "_version"})  # the root modules: fapn_hf, __main__, _version
MAX_REPORTED_CYCLES = 50

# How transformers finds the files a shipped module needs (dynamic_module_utils: a regex over the raw text, so also
# in docstrings and `try` blocks): each match must name a flat sibling file.
TRANSFORMERS_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE)


@dataclass(frozen=True)
class Import:
    """One import of a module of the package: `importer` (a module name) imports `target` (a module name) at
    `path:line` with `statement` (its source). `level`, `module` and `names` are the statement's own: 0 for absolute,
    the `from` part (None for `from . import x` and plain `import`), the imported names."""

    importer: str
    target: str
    path: Path
    line: int
    statement: str
    level: int
    module: str | None
    names: tuple[str, ...]
    lazy: bool = False  # inside a function: runs when called, not when the module is imported
    type_checking: bool = False  # under `if TYPE_CHECKING:`
    dynamic: bool = False  # importlib.import_module

    def where(self, root: Path) -> str:
        kind = " (dynamic)" if self.dynamic else " (in a function)" if self.lazy else ""
        kind += " (TYPE_CHECKING)" if self.type_checking else ""
        return f"{_relative(self.path, root)}:{self.line} `{self.statement}`{kind}"


@dataclass
class Package:
    """The modules of a package on disk and the imports between them."""

    root: Path  # the package folder
    name: str  # its import name
    files: dict[str, Path] = field(default_factory=dict)  # module name -> file
    packages: set[str] = field(default_factory=set)  # module names that are packages (an __init__.py)
    imports: list[Import] = field(default_factory=list)

    def children(self, package: str) -> list[str]:
        """The direct submodules and sub-packages of `package`."""
        prefix = package + "."
        return sorted(m for m in self.files if m.startswith(prefix) and "." not in m[len(prefix) :])

    def known_prefix(self, dotted: str) -> str | None:
        """The longest module name of the package that `dotted` starts with (`a.b.C` -> `a.b` when `C` is a name
        defined in module `a.b`)."""
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.files:
                return candidate
        return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def module_name_of(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Every import statement and readable `importlib.import_module` call of one module, with its context."""

    def __init__(self, package: Package, module: str, path: Path, tree: ast.Module) -> None:
        self.package = package
        self.module = module
        self.path = path
        self.is_package = module in package.packages
        self.function_depth = 0
        self.type_checking_depth = 0
        self.found: list[Import] = []
        # Module-level string constants (e.g. SHIPPED_PACKAGE = "fapn_hf.modeling") for dynamic import names.
        self.constants: dict[str, str] = {"__name__": module}
        self.constants["__package__"] = module if self.is_package else module.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        self.constants[target.id] = node.value.value

    # -- context -------------------------------------------------------------------------------------------------
    def _in_function(self, node: ast.AST) -> None:
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking_depth += 1
            for child in node.body:
                self.visit(child)
            self.type_checking_depth -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    # -- imports -------------------------------------------------------------------------------------------------
    def _add(self, node: ast.AST, target: str, level: int, module: str | None, names: tuple[str, ...], **kw) -> None:
        self.found.append(
            Import(
                importer=self.module,
                target=target,
                path=self.path,
                line=node.lineno,
                statement=ast.unparse(node).splitlines()[0],
                level=level,
                module=module,
                names=names,
                lazy=self.function_depth > 0,
                type_checking=self.type_checking_depth > 0,
                **kw,
            )
        )

    def _absolute(self, level: int, module: str | None) -> str:
        """The absolute dotted name of `from <level dots><module>` in this module."""
        if level == 0:
            return module or ""
        base = self.module.split(".")
        if not self.is_package:
            base = base[:-1]  # a module's `.` is its package
        if level > 1:
            base = base[: len(base) - (level - 1)]
        return ".".join([*base, module] if module else base)

    def _in_package(self, dotted: str) -> bool:
        return dotted == self.package.name or dotted.startswith(self.package.name + ".")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._in_package(alias.name):
                target = self.package.known_prefix(alias.name) or alias.name
                self._add(node, target, 0, None, (alias.name,))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.level, node.module)
        if not self._in_package(base):
            return
        names = tuple(alias.name for alias in node.names)
        targets: dict[str, None] = {}
        for name in names:
            submodule = f"{base}.{name}"
            if submodule in self.package.files:  # `from . import x`, `from fapn_hf.tasks import semantic`
                targets[submodule] = None
            else:
                targets[self.package.known_prefix(base) or base] = None
        for target in targets:
            self._add(node, target, node.level, node.module, names)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        is_import_module = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
            isinstance(func, ast.Name) and func.id == "import_module"
        )
        if is_import_module and node.args:
            for target in self._dynamic_targets(node):
                self._add(node, target, 0, None, (), dynamic=True)
        self.generic_visit(node)

    def _dynamic_targets(self, node: ast.Call) -> list[str]:
        """The modules an `import_module(...)` call can import, where the source says: a constant name (relative to
        `package=` when it starts with a dot), or `f"{PACKAGE}.{anything}"`: every direct submodule of PACKAGE."""
        name = node.args[0]
        anchor = next((kw.value for kw in node.keywords if kw.arg == "package"), None)
        if len(node.args) > 1:
            anchor = node.args[1]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            dotted = name.value
            if dotted.startswith("."):
                anchor_name = self._constant(anchor) if anchor is not None else None
                if anchor_name is None:
                    return []
                level = len(dotted) - len(dotted.lstrip("."))
                parts = anchor_name.split(".")
                dotted = ".".join([*parts[: len(parts) - (level - 1)], dotted.lstrip(".")]).rstrip(".")
            if self._in_package(dotted):
                return [self.package.known_prefix(dotted) or dotted]
            return []
        if isinstance(name, ast.JoinedStr) and name.values:
            prefix, complete = "", True
            for part in name.values:
                value = part.value if isinstance(part, ast.Constant) else self._constant(part.value)
                if value is None:
                    complete = False
                    break
                prefix += value
            if complete and self._in_package(prefix):
                return [self.package.known_prefix(prefix) or prefix]
            package = prefix.rpartition(".")[0]
            if not complete and package in self.package.packages:
                return self.package.children(package)
        return []

    def _constant(self, node: ast.expr | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        return None


def build_package(root: Path, name: str | None = None) -> Package:
    """The modules under `root` (a package folder) and every import between them."""
    name = name or root.name
    package = Package(root=root, name=name)
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        module = module_name_of(path, root, name)
        package.files[module] = path
        if path.name == "__init__.py":
            package.packages.add(module)
    for module, path in package.files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = _ImportCollector(package, module, path, tree)
        collector.visit(tree)
        package.imports.extend(collector.found)
    return package


# ------------------------------------------------------------------------------------------------------------------
# The rules. Each returns the violations as lines that name the file:line and the import.


def _local(package: Package, module: str) -> tuple[str, ...]:
    """`fapn_hf.training.builders` -> ("training", "builders"); the root package -> ()."""
    return tuple(module.split(".")[1:]) if module != package.name else ()


def _kernel_module(package: Package, module: str) -> bool:
    local = _local(package, module)
    return len(local) >= 1 and local[0] == KERNEL


def family_of_file(basename: str) -> str | None:
    """The family of a shipped family file (`modeling_maskformer_fapn` -> `maskformer_fapn`), None for the kernel."""
    for prefix in FAMILY_FILE_PREFIXES:
        if basename.startswith(prefix) and len(basename) > len(prefix):
            return basename[len(prefix) :]
    return None


def kernel_violations(package: Package) -> list[str]:
    """Rule 1: the shipped folder imports only its flat siblings, only as `from .name import X`."""
    violations = []
    kernel_folder = package.root / KERNEL
    siblings = {path.stem for path in kernel_folder.glob("*.py") if path.name != "__init__.py"}
    for imp in package.imports:
        if not _kernel_module(package, imp.importer):
            continue
        where = imp.where(package.root)
        if not _kernel_module(package, imp.target):
            violations.append(f"{where}: imports {imp.target}, outside the shipped {package.name}.{KERNEL}")
        elif imp.dynamic:
            violations.append(f"{where}: a dynamic import of {imp.target}; transformers ships only `from .name import`")
        elif imp.level == 0:
            violations.append(
                f"{where}: an absolute import of the package; shipped code must use `from .name import X`"
            )
        elif imp.level > 1:
            violations.append(f"{where}: `from {'.' * imp.level}...` leaves the shipped folder")
        elif imp.module is None:
            violations.append(f"{where}: `from . import x` is not shipped by transformers; use `from .x import Name`")
        elif "." in imp.module:
            violations.append(f"{where}: `from .{imp.module}` is not flat; transformers looks for `{imp.module}.py`")
        elif imp.module not in siblings:
            violations.append(f"{where}: `{imp.module}.py` is not a flat sibling file in {KERNEL}/")
    # transformers' own scan of the raw text, which also sees docstrings and `try` blocks.
    for path in sorted(kernel_folder.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in TRANSFORMERS_RELATIVE_IMPORT.finditer(text):
            if match.group(1) not in siblings:
                line = text.count("\n", 0, match.start(1)) + 1
                violations.append(
                    f"{_relative(path, package.root)}:{line} `{match.group(0).strip()}`: transformers' scan of the "
                    f"text asks for `{match.group(1)}.py` next to it, which is not a flat sibling file"
                )
    return sorted(set(violations))


def family_file_violations(package: Package) -> list[str]:
    """Rule 2: family files import only their own family's files (and the kernel); the kernel imports none."""
    violations = []
    for imp in package.imports:
        if not (_kernel_module(package, imp.importer) and _kernel_module(package, imp.target)):
            continue
        importer_local, target_local = _local(package, imp.importer), _local(package, imp.target)
        if len(target_local) < 2:
            continue  # the kernel package itself
        target_family = family_of_file(target_local[-1])
        if target_family is None:
            continue
        importer_family = family_of_file(importer_local[-1]) if len(importer_local) >= 2 else None
        where = imp.where(package.root)
        if importer_family is None:
            name = importer_local[-1] if len(importer_local) >= 2 else "__init__"
            violations.append(f"{where}: kernel module {name} imports {target_local[-1]} of family {target_family!r}")
        elif importer_family != target_family:
            violations.append(
                f"{where}: family {importer_family!r} ({importer_local[-1]}) imports {target_local[-1]} of family "
                f"{target_family!r}, so its saved folders would ship both"
            )
    return sorted(set(violations))


def family_independence_violations(package: Package) -> list[str]:
    """Rule 3: `families.<a>` imports no `families.<b>`."""
    families = package.name + ".families"
    subpackages = {child.rpartition(".")[2] for child in package.children(families) if child in package.packages}

    def family(module: str) -> str | None:
        local = _local(package, module)
        return local[1] if len(local) >= 2 and local[0] == "families" and local[1] in subpackages else None

    violations = []
    for imp in package.imports:
        a, b = family(imp.importer), family(imp.target)
        if a is not None and b is not None and a != b:
            violations.append(f"{imp.where(package.root)}: family {a!r} imports family {b!r} ({imp.target})")
    return sorted(set(violations))


def family_shipped_file_violations(package: Package) -> list[str]:
    """Rule 3, for the shipped side: `families.<a>` imports no other family's shipped files either
    (`fapn_hf/modeling/configuration_<b>.py` & co.); what two families share belongs in the kernel."""
    families = package.name + ".families"
    subpackages = {child.rpartition(".")[2] for child in package.children(families) if child in package.packages}
    violations = []
    for imp in package.imports:
        importer, target = _local(package, imp.importer), _local(package, imp.target)
        if not (len(importer) >= 2 and importer[0] == "families" and importer[1] in subpackages):
            continue
        if len(target) == 2 and target[0] == KERNEL:
            other = family_of_file(target[1])
            if other is not None and other != importer[1]:
                where = imp.where(package.root)
                violations.append(
                    f"{where}: family {importer[1]!r} imports {target[1]}, a shipped file of family {other!r}"
                )
    return sorted(set(violations))


def component_of(package: Package, module: str) -> str:
    """The layer component of a module: `fapn_hf.training.builders` -> "training", `fapn_hf` -> "__init__"."""
    local = _local(package, module)
    return local[0] if local else "__init__"


def layer_violations(package: Package) -> list[str]:
    """Rule 4: no import of a higher layer (or of the package root), no tasks <-> convert, no cycle between peers."""
    violations = []
    peer_edges: dict[tuple[str, str], Import] = {}
    unknown = sorted({component_of(package, m) for m in package.files} - set(LAYERS) - OUTSIDE_LAYERS, key=str.lower)
    for component in unknown:
        violations.append(
            f"{package.name}/{component}: in no layer; give it one in LAYERS (tests/test_import_rules.py)"
        )
    for imp in package.imports:
        source, target = component_of(package, imp.importer), component_of(package, imp.target)
        where = imp.where(package.root)
        if source == "_version":
            violations.append(f"{where}: _version imports nothing, so that anything may import it")
            continue
        if source in OUTSIDE_LAYERS or source not in LAYERS or source == target or target == "_version":
            continue
        if target in ("__init__", "__main__"):
            violations.append(
                f"{where}: {source} (layer {LAYERS[source]}) imports the package root {imp.target}, which imports "
                f"every layer; import the module that defines the name"
            )
        elif target not in LAYERS:
            continue  # reported above as a component in no layer
        elif LAYERS[target] > LAYERS[source]:
            violations.append(
                f"{where}: {source} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[target]}), a higher layer"
            )
        elif (source, target) in LAYER_EXCEPTIONS:
            violations.append(f"{where}: {source} may not import {target} (same layer, kept apart)")
        elif LAYERS[target] == LAYERS[source]:
            peer_edges.setdefault((source, target), imp)
    peer_graph: dict[str, set[str]] = defaultdict(set)
    for source, target in peer_edges:
        peer_graph[source].add(target)
    for cycle in elementary_cycles(peer_graph):
        links = [peer_edges[(a, b)].where(package.root) for a, b in zip(cycle, cycle[1:] + cycle[:1])]
        chain = " -> ".join([*cycle, cycle[0]])
        violations.append(f"peers {chain} import each other in a cycle:\n      " + "\n      ".join(links))
    return violations


def elementary_cycles(graph: dict[str, set[str]], limit: int = MAX_REPORTED_CYCLES) -> Iterator[list[str]]:
    """Each elementary cycle of a directed graph once, as its node list starting at its smallest node (a depth-first
    search from each node `s` through nodes greater than `s` only), at most `limit` of them."""
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    found = 0
    for start in nodes:
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.get(start, ()))))]
        path, on_path = [start], {start}
        while stack:
            node, successors = stack[-1]
            advanced = False
            for successor in successors:
                if successor == start:
                    yield list(path)
                    found += 1
                    if found >= limit:
                        return
                elif successor > start and successor not in on_path:
                    stack.append((successor, iter(sorted(graph.get(successor, ())))))
                    path.append(successor)
                    on_path.add(successor)
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                on_path.discard(path.pop())


def cycle_violations(package: Package) -> list[str]:
    """Rule 5: no cycle between modules, counting function-level, TYPE_CHECKING and dynamic imports."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in package.imports:
        if imp.importer != imp.target:
            edges[(imp.importer, imp.target)].append(imp)
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    violations = []
    for cycle in elementary_cycles(graph):
        links = []
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            imports = edges[(a, b)]
            shown = next((i for i in imports if not (i.lazy or i.dynamic or i.type_checking)), imports[0])
            links.append(shown.where(package.root))
        chain = " -> ".join([*cycle, cycle[0]])
        violations.append(f"{chain}\n      " + "\n      ".join(links))
    return violations


def _report(title: str, violations: Iterable[str]) -> str:
    violations = list(violations)
    return f"{len(violations)} {title}:\n  " + "\n  ".join(violations)


# ------------------------------------------------------------------------------------------------------------------
# The rules on fapn_hf.


@pytest.fixture(scope="module")
def package() -> Package:
    return build_package(PACKAGE_ROOT)


def test_the_graph_sees_the_whole_package(package):
    """Guards the rules below against passing on an empty or misread graph."""
    assert f"{package.name}.{KERNEL}.modeling_fapn" in package.files
    assert any(family_of_file(m.rpartition(".")[2]) for m in package.files if _kernel_module(package, m))
    assert len(package.imports) > 50
    assert any(imp.lazy for imp in package.imports), "function-level imports are part of the graph"


def test_the_shipped_kernel_imports_only_flat_siblings(package):
    violations = kernel_violations(package)
    assert not violations, _report(
        "imports in fapn_hf/modeling that a saved remote-code folder cannot hold", violations
    )


def test_family_files_import_no_other_family(package):
    violations = family_file_violations(package)
    assert not violations, _report("imports across families in the shipped folder", violations)


def test_families_do_not_import_each_other(package):
    violations = family_independence_violations(package)
    assert not violations, _report("imports between fapn_hf/families/<name> folders", violations)


def test_families_use_no_other_familys_shipped_files(package):
    violations = family_shipped_file_violations(package)
    assert not violations, _report("imports of another family's shipped files from fapn_hf/families", violations)


def test_no_layer_imports_a_higher_one(package):
    violations = layer_violations(package)
    order = " < ".join(
        ", ".join(sorted(c for c, layer in LAYERS.items() if layer == n)) for n in sorted(set(LAYERS.values()))
    )
    assert not violations, _report(f"imports against the layers ({order})", violations)


def test_no_import_cycles(package):
    violations = cycle_violations(package)
    more = " (the first ones)" if len(violations) >= MAX_REPORTED_CYCLES else ""
    assert not violations, _report(f"import cycles{more}", violations)


# ------------------------------------------------------------------------------------------------------------------
# The checker, on synthetic packages with known faults.


def _write_package(root: Path, files: dict[str, str]) -> Package:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return build_package(root / "pkg")


def _edges(package: Package) -> set[tuple[str, str, bool]]:
    return {(imp.importer, imp.target, imp.lazy) for imp in package.imports}


def test_checker_resolves_every_import_form(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "from .tasks import semantic\n",
            "tasks/__init__.py": "",
            "tasks/semantic/__init__.py": "from . import data\nfrom .data import load\n",
            "tasks/semantic/data.py": "import pkg.labels\nfrom pkg.labels import LABELS\ndef load():\n"
            "    from ...labels import LABELS\n    import importlib\n    importlib.import_module('pkg.labels')\n",
            "labels.py": "LABELS = ()\nimport os\n",
            "families/__init__.py": "import importlib\nfor n in ('a', 'b'):\n"
            "    importlib.import_module(f'{__name__}.{n}')\n",
            "families/a/__init__.py": "",
            "families/b/__init__.py": "",
        },
    )
    edges = _edges(package)
    assert ("pkg", "pkg.tasks.semantic", False) in edges  # `from .tasks import semantic`: the sub-package
    assert ("pkg.tasks.semantic", "pkg.tasks.semantic.data", False) in edges  # `from . import data`
    assert ("pkg.tasks.semantic.data", "pkg.labels", False) in edges
    assert ("pkg.tasks.semantic.data", "pkg.labels", True) in edges  # `from ...labels` inside a function
    assert ("pkg.families", "pkg.families.a", False) in edges and ("pkg.families", "pkg.families.b", False) in edges
    assert not any(imp.target == "os" for imp in package.imports)


def test_checker_finds_each_kind_of_kernel_import(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "labels.py": "",
            "modeling/__init__.py": "",
            "modeling/deform_conv.py": "",
            "modeling/configuration_a.py": "from .deform_conv import X\n",  # fine
            "modeling/modeling_a.py": '"""Example:\n\nfrom .missing import Y\n"""\nfrom . import deform_conv\n'
            "from ..labels import L\nimport pkg.modeling.deform_conv\n",
        },
    )
    text = "\n".join(kernel_violations(package))
    assert "configuration_a" not in text
    assert "`from . import x` is not shipped" in text
    assert "outside the shipped pkg.modeling" in text and "modeling_a.py:6" in text
    assert "an absolute import of the package" in text
    assert "asks for `missing.py`" in text and "modeling_a.py:3" in text  # transformers' scan sees the docstring


def test_checker_finds_family_crossings_layers_and_cycles(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "from .training import run\n",
            "modeling/__init__.py": "",
            "modeling/remote_code.py": "from .modeling_b import B\n",  # kernel -> family
            "modeling/modeling_a.py": "from .modeling_b import B\nfrom .remote_code import R\n",  # a -> b
            "modeling/modeling_b.py": "",
            "families/__init__.py": "",
            "families/a/__init__.py": "from ..b import presets\n",  # a -> b
            "families/b/__init__.py": "",
            "families/b/presets.py": "from ...modeling.modeling_a import A\nfrom ...modeling.modeling_b import B\n",
            "tasks/__init__.py": "from ..convert import x\n",  # forbidden peer
            "convert/__init__.py": "",
            "convert/x.py": "from ..labels import L\n",
            "labels.py": "def f():\n    from .training.run import go\n",  # upward, lazily
            "training/__init__.py": "",
            "training/run.py": "from .. import labels\nfrom ..inference import p\ngo = 1\n",
            "inference/__init__.py": "",
            "inference/p.py": "from ..training import run\n",  # peers in a cycle (and a module cycle)
            "space/__init__.py": "",  # in no layer
            "_version.py": "from . import labels\n",
        },
    )
    family_files = "\n".join(family_file_violations(package))
    assert "kernel module remote_code imports modeling_b of family 'b'" in family_files
    assert "family 'a' (modeling_a) imports modeling_b of family 'b'" in family_files
    assert "family 'a' imports family 'b'" in "\n".join(family_independence_violations(package))
    shipped = family_shipped_file_violations(package)
    assert (
        len(shipped) == 1
        and "presets.py:1" in shipped[0]
        and "family 'b' imports modeling_a, a shipped file of family 'a'" in shipped[0]
    )
    layers = "\n".join(layer_violations(package))
    assert "pkg/space: in no layer" in layers
    assert "tasks may not import convert" in layers
    assert "labels.py:2" in layers and "labels (layer 1) imports training (layer 3)" in layers
    assert "peers inference -> training -> inference" in layers
    assert "_version imports nothing" in layers
    assert "pkg/__init__.py" not in layers  # the root stands outside the layers
    cycles = cycle_violations(package)
    assert any("pkg.labels -> pkg.training.run -> pkg.labels" in c and "(in a function)" in c for c in cycles)
    assert any("pkg.inference.p -> pkg.training.run -> pkg.inference.p" in c for c in cycles)
    assert len(cycles) == len(set(cycles)) == 2  # each cycle once, whichever module it is entered from


def test_elementary_cycles_reports_each_cycle_once():
    graph = {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a"}, "d": {"d"}}
    cycles = sorted(tuple(c) for c in elementary_cycles(graph))
    assert cycles == [("a", "b"), ("a", "b", "c"), ("a", "c"), ("d",)]
