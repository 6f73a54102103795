"""No family or task `if` outside the family's or task's own folder, read from the source with `ast` (so docstrings,
comments and messages that name a family never count, and nothing is imported).

A family owns `fapn_hf/families/<family>/` and its shipped files `fapn_hf/modeling/{configuration,modeling,
image_processing}_<family>.py`; a task owns `fapn_hf/tasks/<task>/`. Everywhere else (the engines: training,
inference, export, hub, cli, benchmark, convert, the Space's app; and also tasks, labels, the kernel and the registry)
asks the registry instead of naming a family. The one exception is `fapn_hf/__init__.py`, whose public API re-exports
the family classes. One test per kind of family knowledge:

1. comparisons that pick a family or task: a `model_type` (or a family's or task's name, a pipeline tag) compared
   (`==`, `!=`, `in`, `is`, `match`) with a family's model type or registry name or a task's name or pipeline tag (a
   string, or a name bound to such strings in the module) or with a family class (`MaskFormerFaPNConfig.model_type`);
2. preset lists (`PRESETS`, `MASKFORMER_PRESETS`, any `*_PRESETS`) used outside the family that defines them;
3. family class names (`FaPNConfig`, `FaPNForSemanticSegmentation`, `FaPNImageProcessor`, `MaskFormerFaPN...`, every
   class of a family file that carries the family's name) and the family predicate `is_mask_classification_model`.

What counts as a family is read from the tree too: the folders under `fapn_hf/families/`, the shipped family files, the
`model_type` of each family's config class, and the `Family(...)` / `Task(...)` entries' `name`, `model_type` and
`pipeline_tag`. The scanner itself is tested on a synthetic package at the end of this file.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FAMILY_FILE_PREFIXES = ("configuration_", "modeling_", "image_processing_")
PRESET_LIST = re.compile(r"^(?:[A-Z0-9]+_)*PRESETS$")
# Family predicates that are not classes: the family each one tests for.
FAMILY_PREDICATES = {"is_mask_classification_model": "maskformer_fapn"}
PUBLIC_API = "fapn_hf/__init__.py"  # re-exports the family classes: the one place outside a family allowed to name them
EXTRA_FILES = ("space_app/app.py",)
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)
SELECTOR_NAMES = frozenset({"family", "task", "family_name", "task_name", "pipeline_tag"})

Owner = tuple[str, str]  # ("family", "fapn") or ("task", "semantic")


def _describe(owner: Owner) -> str:
    return f"{owner[0]} {owner[1]!r}"


@dataclass
class Knowledge:
    """What the tree says a family or task is: its strings, class names and preset lists, each with its owners."""

    strings: dict[str, set[Owner]] = field(default_factory=lambda: defaultdict(set))
    identifiers: dict[str, set[Owner]] = field(default_factory=lambda: defaultdict(set))
    preset_lists: dict[str, set[Owner]] = field(default_factory=lambda: defaultdict(set))
    families: set[str] = field(default_factory=set)
    tasks: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the repository
    line: int
    text: str  # the source line
    what: str
    owners: frozenset[Owner] = frozenset()  # the families or tasks it names (empty: a name no family defines)


def owners_of(path: str, knowledge: Knowledge, package: str = "fapn_hf") -> set[Owner]:
    """The families and tasks whose folder (or shipped family file) `path` (relative to the repository) is in."""
    parts = Path(path).parts
    if len(parts) < 2 or parts[0] != package:
        return set()
    if len(parts) >= 4 and parts[1] == "families" and parts[2] in knowledge.families:
        return {("family", parts[2])}
    if len(parts) >= 4 and parts[1] == "tasks" and parts[2] in knowledge.tasks:
        return {("task", parts[2])}
    if len(parts) == 3 and parts[1] == "modeling":
        family = family_of_file(Path(parts[2]).stem)
        if family is not None:
            return {("family", family)}
    return set()


def family_of_file(stem: str) -> str | None:
    for prefix in FAMILY_FILE_PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix) :]
    return None


def _keyword_strings(call: ast.Call, names: Iterable[str]) -> Iterable[str]:
    wanted = set(names)
    for keyword in call.keywords:
        if keyword.arg in wanted and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
            yield keyword.value.value


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def learn(repo: Path, package: str = "fapn_hf") -> Knowledge:
    """Reads the families and tasks from the tree (see the module docstring)."""
    root = repo / package
    knowledge = Knowledge()
    families_dir, tasks_dir = root / "families", root / "tasks"
    knowledge.families = {p.parent.name for p in families_dir.glob("*/__init__.py")}
    knowledge.tasks = {p.parent.name for p in tasks_dir.glob("*/__init__.py")}
    # The shipped family files: the config class's model type, and the family's classes (named like its config).
    for path in sorted((root / "modeling").glob("*.py")):
        family = family_of_file(path.stem)
        if family is None:
            continue
        knowledge.families.add(family)
    for family in sorted(knowledge.families):
        owner = ("family", family)
        knowledge.strings[family].add(owner)
        classes: list[str] = []
        prefix = None
        for stem in (f"{p}{family}" for p in FAMILY_FILE_PREFIXES):
            path = root / "modeling" / f"{stem}.py"
            if not path.exists():
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                classes.append(node.name)
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "model_type" for t in statement.targets)
                        and isinstance(statement.value, ast.Constant)
                        and isinstance(statement.value.value, str)
                        and stem.startswith("configuration_")
                    ):
                        knowledge.strings[statement.value.value].add(owner)
                        prefix = node.name.removesuffix("Config")
        for name in classes:
            if prefix is None or name.startswith(prefix):
                knowledge.identifiers[name].add(owner)
    for name, family in FAMILY_PREDICATES.items():
        knowledge.identifiers[name].add(("family", family))
    # Registry entries and preset lists, from the families' and tasks' own folders.
    for kind, folder, names in (
        ("family", families_dir, ("name", "model_type")),
        ("task", tasks_dir, ("name", "pipeline_tag")),
    ):
        for owner_name in sorted(knowledge.families if kind == "family" else knowledge.tasks):
            owner = (kind, owner_name)
            for path in sorted((folder / owner_name).rglob("*.py")):
                tree = ast.parse(path.read_text(encoding="utf-8"))
                for node in ast.walk(tree):
                    if isinstance(node, ast.Call) and _call_name(node) == kind.capitalize():
                        for value in _keyword_strings(node, names):
                            knowledge.strings[value].add(owner)
                if kind == "family":
                    for node in tree.body:
                        targets = node.targets if isinstance(node, ast.Assign) else []
                        if isinstance(node, ast.AnnAssign):
                            targets = [node.target]
                        for target in targets:
                            if isinstance(target, ast.Name) and PRESET_LIST.match(target.id):
                                knowledge.preset_lists[target.id].add(owner)
    for name in ("PRESETS", "MASKFORMER_PRESETS"):  # named in no family: then no folder may use them
        knowledge.preset_lists.setdefault(name, set())
    return knowledge


def scanned_files(repo: Path, package: str = "fapn_hf") -> list[Path]:
    files = [p for p in sorted((repo / package).rglob("*.py")) if "__pycache__" not in p.parts]
    return files + [repo / extra for extra in EXTRA_FILES if (repo / extra).exists()]


# ------------------------------------------------------------------------------------------------------------------
# The scan of one file.


def _is_model_type(node: ast.expr) -> bool:
    """`x.model_type`, `model_type`, `getattr(x, "model_type", ...)`, `x["model_type"]`, `x.get("model_type")`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "model_type"
    if isinstance(node, ast.Name):
        return node.id == "model_type"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "model_type"
    if isinstance(node, ast.Call) and node.args:
        name = _call_name(node)
        argument = node.args[1] if name == "getattr" and len(node.args) > 1 else node.args[0] if name == "get" else None
        return isinstance(argument, ast.Constant) and argument.value == "model_type"
    return False


def _is_selector(node: ast.expr) -> bool:
    """An expression that says which family or task something is: a model type (`_is_model_type`), `family`,
    `task`, `family_name`, `task_name`, `pipeline_tag` (as names or attributes), or the `.name` of something called
    family or task (`family.name`, `model_family.task.name`). Other string options are not family tests even where
    their values look alike (MaskFormer's `pixel_decoder == "fapn"` names a decoder, not the family)."""
    if _is_model_type(node):
        return True
    if isinstance(node, ast.Name):
        return node.id in SELECTOR_NAMES
    if isinstance(node, ast.Attribute):
        if node.attr in SELECTOR_NAMES:
            return True
        if node.attr == "name":
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            return any(word in owner.lower() for word in ("family", "task"))
    return False


def _module_strings(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level names bound to a string or a literal tuple/list/set of strings (`SUPPORTED = ("fapn", ...)`)."""
    bound: dict[str, list[str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        strings = _literal_strings(node.value)
        if strings:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    bound[target.id] = strings
    return bound


def _literal_strings(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _literal_strings(element)]
    if isinstance(node, ast.Dict):
        return [s for key in node.keys if key is not None for s in _literal_strings(key)]
    return []


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, source: str, knowledge: Knowledge) -> None:
        self.path = path
        self.lines = source.splitlines()
        self.knowledge = knowledge
        self.tree = ast.parse(source)
        self.bound = _module_strings(self.tree)
        self.comparisons: list[Finding] = []
        self.preset_lists: list[Finding] = []
        self.identifiers: list[Finding] = []

    def scan(self) -> _Scanner:
        self.visit(self.tree)
        return self

    def _finding(self, node: ast.AST, what: str, owners: set[Owner]) -> Finding:
        line = getattr(node, "lineno", 0)
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        return Finding(self.path, line, text, what, frozenset(owners))

    # -- 1: comparisons ------------------------------------------------------------------------------------------
    def _strings_of(self, node: ast.expr) -> list[str]:
        strings = _literal_strings(node)
        if isinstance(node, ast.Name):
            strings += self.bound.get(node.id, [])
        return strings

    def _comparison_owners(self, left: ast.expr, right: ast.expr) -> dict[str, set[Owner]]:
        """What a comparison of `left` with `right` tests for, where one side says which family or task something is
        (`_is_selector`): {the family or task value shown: its owners}."""
        found: dict[str, set[Owner]] = {}
        for side, other in ((left, right), (right, left)):
            if not _is_selector(side):
                continue
            for value in self._strings_of(other):
                if value in self.knowledge.strings:
                    found[repr(value)] = self.knowledge.strings[value]
            for node in ast.walk(other):
                name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
                if name in self.knowledge.identifiers:
                    found[name] = self.knowledge.identifiers[name]
        return found

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            if isinstance(op, COMPARISONS):
                for shown, owners in self._comparison_owners(left, right).items():
                    what = f"compares with {shown} ({_owners_text(owners)})"
                    self.comparisons.append(self._finding(node, what, owners))
        self.generic_visit(node)

    def visit_Match(self, node: ast.Match) -> None:
        if _is_selector(node.subject):
            for case in node.cases:
                for pattern in ast.walk(case.pattern):
                    if isinstance(pattern, ast.MatchValue):
                        for value in self._strings_of(pattern.value):
                            if value in self.knowledge.strings:
                                owners = self.knowledge.strings[value]
                                what = f"matches {value!r} ({_owners_text(owners)})"
                                self.comparisons.append(self._finding(pattern, what, owners))
        self.generic_visit(node)

    # -- 2 and 3: names --------------------------------------------------------------------------------------------
    def _name(self, node: ast.AST, name: str) -> None:
        if name in self.knowledge.preset_lists:
            owners = self.knowledge.preset_lists[name]
            where = _owners_text(owners) if owners else "defined in no family folder"
            self.preset_lists.append(self._finding(node, f"preset list {name} ({where})", owners))
        if name in self.knowledge.identifiers:
            owners = self.knowledge.identifiers[name]
            self.identifiers.append(self._finding(node, f"{name} ({_owners_text(owners)})", owners))

    def visit_Name(self, node: ast.Name) -> None:
        self._name(node, node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._name(node, node.attr)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self._name(node, alias.name)

    def _definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self._name(node, node.name)
        self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _definition


def _owners_text(owners: set[Owner]) -> str:
    return ", ".join(_describe(owner) for owner in sorted(owners))


def _outside(findings: list[Finding], owners: set[Owner]) -> list[Finding]:
    """The findings that name a family or task other than the ones whose folder the file is in (all of them where
    the name belongs to no family)."""
    return [finding for finding in findings if not finding.owners or not finding.owners <= owners]


@dataclass
class Scan:
    comparisons: list[Finding]
    preset_lists: list[Finding]
    identifiers: list[Finding]


def scan(repo: Path, package: str = "fapn_hf") -> Scan:
    knowledge = learn(repo, package)
    result = Scan([], [], [])
    for path in scanned_files(repo, package):
        relative = str(path.relative_to(repo))
        if relative == PUBLIC_API.replace("fapn_hf", package, 1):
            continue
        owners = owners_of(relative, knowledge, package)
        scanner = _Scanner(relative, path.read_text(encoding="utf-8"), knowledge).scan()
        result.comparisons += _outside(scanner.comparisons, owners)
        result.preset_lists += _outside(scanner.preset_lists, owners)
        result.identifiers += _outside(scanner.identifiers, owners)
    return result


def by_file(findings: list[Finding]) -> str:
    """The findings grouped by file, one line each: `  line: what  | source`."""
    grouped: dict[str, dict[tuple[int, str], str]] = defaultdict(dict)
    for finding in findings:
        grouped[finding.path].setdefault((finding.line, finding.what), finding.text)
    blocks = []
    for path in sorted(grouped):
        lines = [f"  {line}: {what}  | {text}" for (line, what), text in sorted(grouped[path].items())]
        blocks.append(f"{path} ({len(lines)})\n" + "\n".join(lines))
    return "\n".join(blocks)


def _count(findings: list[Finding]) -> int:
    return len({(f.path, f.line, f.what) for f in findings})


# ------------------------------------------------------------------------------------------------------------------
# The rules on this repository.


@functools.cache
def _repository_scan() -> Scan:
    return scan(REPO_ROOT)


def test_the_scan_knows_the_families_and_tasks():
    """Guards the rules below against passing because nothing was recognised."""
    knowledge = learn(REPO_ROOT)
    assert {"fapn", "maskformer_fapn"} <= knowledge.families
    assert {("family", "maskformer_fapn")} == knowledge.strings["maskformer_fapn"]
    for name in ("FaPNConfig", "FaPNForSemanticSegmentation", "FaPNImageProcessor", "MaskFormerFaPNConfig"):
        assert name in knowledge.identifiers, name
    assert "semantic" in knowledge.tasks


def test_no_family_or_task_comparisons_outside_their_folders():
    findings = _repository_scan().comparisons
    assert not findings, f"{_count(findings)} family or task comparisons outside their folders:\n" + by_file(findings)


def test_no_preset_lists_outside_their_family():
    findings = _repository_scan().preset_lists
    assert not findings, f"{_count(findings)} uses of a family's preset list outside it:\n" + by_file(findings)


def test_no_family_class_names_outside_their_family():
    findings = _repository_scan().identifiers
    assert not findings, (
        f"{_count(findings)} family class names outside the family (ask the registry, fapn_hf.families):\n"
        + by_file(findings)
    )


# ------------------------------------------------------------------------------------------------------------------
# The scanner, on a synthetic repository with known family knowledge in known places.


def _synthetic(tmp_path: Path) -> Path:
    files = {
        "pkg/__init__.py": "from .modeling.modeling_a import AModel\nfrom .families.a.presets import PRESETS\n",
        "pkg/modeling/__init__.py": "",
        "pkg/modeling/configuration_a.py": "class AConfig:\n    model_type = 'a_type'\n",
        "pkg/modeling/modeling_a.py": "class AModel:\n    pass\nclass Helper:\n    pass\n"
        "def f(config):\n    return config.model_type == 'a_type'\n",  # its own family: fine
        "pkg/modeling/configuration_b.py": "class BConfig:\n    model_type = 'b_type'\n",
        "pkg/families/__init__.py": "",
        "pkg/families/a/__init__.py": "FAMILY = Family(name='a', model_type='a_type')\n",
        "pkg/families/a/presets.py": "PRESETS = {}\nB_PRESETS = {}\n",
        "pkg/families/b/__init__.py": "from ..a.presets import PRESETS\nif x.model_type == 'a_type': pass\n",
        "pkg/tasks/__init__.py": "",
        "pkg/tasks/sem/__init__.py": "TASK = Task(name='sem-seg', pipeline_tag='image-seg')\n",
        "pkg/training/__init__.py": "",
        "pkg/training/run.py": (
            '"""Builds an AModel when model_type == "a_type" (a docstring: never counts)."""\n'  # 1
            "from ..modeling.modeling_a import AModel, Helper  # AConfig in a comment\n"  # 2
            "KINDS = ('a_type', 'b_type')\n"  # 3: a tuple, compared below
            "def build(config, family):\n"  # 4
            "    if getattr(config, 'model_type', None) == 'a_type':\n"  # 5
            "        return AModel()\n"  # 6
            "    if config.model_type in KINDS:\n"  # 7
            "        pass\n"  # 8
            "    if config.model_type == AConfig.model_type:\n"  # 9
            "        pass\n"  # 10
            "    if config.model_type == family.model_type or config.backbone_type == 'resnet':\n"  # 11: generic
            "        pass\n"  # 12
            "    if task.name != 'sem-seg':\n"  # 13
            "        pass\n"  # 14
            "    match config.model_type:\n"  # 15
            "        case 'b_type':\n"  # 16
            "            pass\n"  # 17
            "    return B_PRESETS, f'{family.name} is not a_type'\n"  # 18: a preset list; an f-string
            "def decoder(config):\n"  # 19
            "    return config.pixel_decoder == 'a' or family.name == 'a'\n"  # 20: an option value; a family name
        ),
    }
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def _lines(findings: list[Finding], path: str) -> list[int]:
    return sorted({f.line for f in findings if f.path == path})


def test_scanner_on_a_synthetic_repository(tmp_path):
    repo = _synthetic(tmp_path)
    knowledge = learn(repo, "pkg")
    assert knowledge.families == {"a", "b"} and knowledge.tasks == {"sem"}
    assert set(knowledge.identifiers) == {"AConfig", "AModel", "BConfig", "is_mask_classification_model"}
    assert knowledge.preset_lists["PRESETS"] == knowledge.preset_lists["B_PRESETS"] == {("family", "a")}
    result = scan(repo, "pkg")
    run = "pkg/training/run.py"
    assert _lines(result.comparisons, run) == [5, 7, 9, 13, 16, 20]
    assert [f.what for f in result.comparisons if f.line == 20] == ["compares with 'a' (family 'a')"]
    assert _lines(result.identifiers, run) == [2, 6, 9]  # Helper has no family name; docstring and comment skipped
    assert _lines(result.preset_lists, run) == [18]
    # A family's own files may compare with its own model type; another family's folder may not use its lists.
    assert _lines(result.comparisons, "pkg/modeling/modeling_a.py") == []
    assert _lines(result.comparisons, "pkg/families/b/__init__.py") == [2]
    assert _lines(result.preset_lists, "pkg/families/b/__init__.py") == [1]
    assert not any(f.path == "pkg/families/a/presets.py" for f in result.preset_lists)
    assert not any(f.path == "pkg/__init__.py" for f in result.identifiers + result.preset_lists)  # the public API
    report = by_file(result.comparisons)
    assert report.startswith("pkg/families/b/__init__.py (1)\n  2: compares with 'a_type' (family 'a')")
    assert "pkg/training/run.py (7)" in report and "16: matches 'b_type' (family 'b')" in report
