"""The shipped code (fapn_hf/modeling): what a saved folder of each family carries and runs on.

transformers copies a shipped module and its relative-import closure by basename (STACK_NOTES, "Remote code"), so
the import rules of fapn_hf/modeling decide what every saved folder holds:

- each family's configuration, modeling and image-processing modules import the kernel (`KERNEL_MODULES`) and their
  own family's modules, never another family's: a family's closure is exactly kernel + its own files;
- kernel modules import only kernel modules, and no shipped module imports the package (`fapn_hf`) or a sub-package;
- a saved folder holds that closure, and a clean interpreter that cannot import fapn_hf loads it with
  `trust_remote_code=True` and reproduces the package's outputs.

The families come from the registry (`fapn_hf.families.FAMILIES`): a new family is checked without an edit here,
once it has a small config in `SMALL_CONFIGS`.
"""

from __future__ import annotations

import ast
import importlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_hub import _run_offline
from test_maskformer_fapn import tiny_maskformer_config
from test_modeling_fapn_rcnn import tiny_rcnn_config
from transformers.dynamic_module_utils import get_relative_import_files

import fapn_hf.modeling
from fapn_hf.families import FAMILIES, SHIPPED_PACKAGE
from fapn_hf.modeling.remote_code import KERNEL_MODULES, CodeFamily

MODELING = Path(fapn_hf.modeling.__file__).parent

# A small config of each family (timm resnet18 backbones): the models build, save and run in about a second.
SMALL_CONFIGS = {
    "fapn": lambda: tiny_config(use_point_rend=True),
    "maskformer_fapn": tiny_maskformer_config,
    "fapn_rcnn": lambda: tiny_rcnn_config("panoptic_fpn"),
}


def family_modules(code: CodeFamily) -> set[str]:
    """The modules a family's `CodeFamily` names: its configuration, modeling and image-processing modules."""
    names = [code.config, *code.models.values(), code.processor]
    return {name.split(".")[0] for name in names}


def closure(module: str) -> set[str]:
    """`module` and every module transformers ships with it (its relative-import closure), by module name."""
    path = MODELING / f"{module}.py"
    return {module, *(Path(file).stem for file in get_relative_import_files(str(path)))}


def shipped_modules() -> set[str]:
    return {path.stem for path in MODELING.glob("*.py") if path.stem != "__init__"}


def test_small_configs_cover_every_family():
    assert set(SMALL_CONFIGS) == set(FAMILIES)


def test_every_shipped_module_is_the_kernels_or_one_familys():
    owners: dict[str, list[str]] = {}
    for name, family in FAMILIES.items():
        for module in family_modules(family.code):
            owners.setdefault(module, []).append(name)
    shared = {module: names for module, names in owners.items() if len(names) > 1}
    assert not shared, f"modules claimed by several families: {shared}"
    assert not set(owners) & set(KERNEL_MODULES), "a family names a kernel module as its own"
    assert shipped_modules() == set(KERNEL_MODULES) | set(owners)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_familys_shipped_closure_is_the_kernel_and_its_own_files(name):
    own = family_modules(FAMILIES[name].code)
    shipped = set().union(*(closure(module) for module in own))
    assert shipped == set(KERNEL_MODULES) | own, (
        f"{name} ships {sorted(shipped - set(KERNEL_MODULES) - own)} beyond the kernel and its own modules, and lacks "
        f"{sorted((set(KERNEL_MODULES) | own) - shipped)}"
    )


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernel_modules_import_only_the_kernel(module):
    assert closure(module) <= set(KERNEL_MODULES), f"{module} imports {sorted(closure(module) - set(KERNEL_MODULES))}"


def _package_imports(path: Path) -> list[str]:
    """Every import statement of `path` (at any depth: functions too) that a saved folder cannot resolve: the package
    by name, a parent package (`from ..x`), a sub-package (`from .x.y`) or a bare `from . import x`, which
    transformers does not ship."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            problems += [f"import {alias.name}" for alias in node.names if alias.name.split(".")[0] == "fapn_hf"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.split(".")[0] == "fapn_hf":
                problems.append(f"from {module} import ...")
            elif node.level > 1 or (node.level == 1 and (not module or "." in module)):
                problems.append(f"from {'.' * node.level}{module} import ...")
    return problems


@pytest.mark.parametrize("module", sorted(shipped_modules()))
def test_shipped_modules_import_siblings_only_as_from_dot_name(module):
    assert _package_imports(MODELING / f"{module}.py") == []


def test_the_import_check_finds_what_a_saved_folder_cannot_resolve(tmp_path):
    """The oracle of the test above, on a module that breaks each rule once."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import fapn_hf\nfrom fapn_hf.modeling import x\nfrom ..labels import y\nfrom .sub.mod import z\n"
        "from . import w\nfrom .fine import v\ndef f():\n    import fapn_hf.labels\n"
    )
    assert _package_imports(bad) == [
        "import fapn_hf",
        "from fapn_hf.modeling import ...",
        "from ..labels import ...",
        "from .sub.mod import ...",
        "from . import ...",
        "import fapn_hf.labels",
    ]


def _processor(family):
    module, class_name = family.code.processor.split(".")
    processor_class = getattr(importlib.import_module(f"{SHIPPED_PACKAGE}.{module}"), class_name)
    return processor_class(size={"shortest_edge": 64, "longest_edge": 128})


@pytest.fixture(params=sorted(FAMILIES))
def saved_family_folder(request, tmp_path):
    """A small model of each family and its processor, saved as `save_pretrained` writes a Hub folder."""
    family = FAMILIES[request.param]
    torch.manual_seed(0)
    model = family.head_class(SMALL_CONFIGS[request.param]()).eval()
    with torch.no_grad():  # non-zero offsets: the deformable sampling differs from the regular grid
        for module in model.modules():
            if hasattr(module, "offset_mask_conv"):
                module.offset_mask_conv.weight.normal_(std=0.05)
    processor = _processor(family)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return family, model, processor, folder


def test_a_saved_folder_holds_the_kernel_and_its_familys_code(saved_family_folder):
    family, _, _, folder = saved_family_folder
    shipped = {path.stem for path in folder.glob("*.py")}
    assert shipped == set(KERNEL_MODULES) | family_modules(family.code)
    assert json.loads((folder / "config.json").read_text())["auto_map"] == family.code.auto_map()


@pytest.mark.slow
def test_a_clean_interpreter_without_fapn_hf_reproduces_the_package(saved_family_folder, tmp_path):
    """`trust_remote_code=True` in a process where fapn_hf cannot be found (its editable-install finder removed, a
    fresh module cache), on a copy of the folder: the head, the base model and the processor load from the folder's
    code, and the outputs and the semantic map equal the package's."""
    family, model, processor, folder = saved_family_folder
    work = tmp_path / "clean"
    work.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)
    np.save(work / "image.npy", image)
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        # The package is installed in editable mode: its finder is the only way to it. Without it, fapn_hf cannot
        # be found at all (a regular install would fail the assertion instead of passing silently).
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        assert importlib.util.find_spec("fapn_hf") is None, "fapn_hf is importable"
        import numpy as np, torch, transformers
        from safetensors.torch import save_file
        folder = {str(folder)!r}
        model = getattr(transformers, {family.head_auto_class!r}).from_pretrained(folder, trust_remote_code=True)
        model = model.eval()
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
        processor = transformers.AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        for loaded in (model, base, processor):
            assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
        names = (type(model).__name__, type(processor).__name__)
        assert names == {(type(model).__name__, type(processor).__name__)!r}, names
        inputs = processor(np.load({str(work / "image.npy")!r}), return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        tensors = {{k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}}
        if {family.predicts_pixel_classes!r}:
            tensors["semantic"] = processor.post_process_semantic_segmentation(outputs, target_sizes=[(45, 61)])[0]
        save_file(tensors, {str(work / "outputs.safetensors")!r})
        assert not [name for name in sys.modules if name.split(".")[0] == "fapn_hf"]
        """
    )
    _run_offline(["-c", script], cwd=work, PYTHONPATH="", HF_MODULES_CACHE=str(work / "modules"))

    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    remote = load_file(str(work / "outputs.safetensors"))
    expected = {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    assert set(remote) == {*expected, "semantic"} if family.predicts_pixel_classes else set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(remote[name], tensor, atol=1e-5, rtol=1e-5, msg=name)
    if family.predicts_pixel_classes:
        semantic = processor.post_process_semantic_segmentation(outputs, [(45, 61)])[0]
        assert torch.equal(remote["semantic"], semantic)
