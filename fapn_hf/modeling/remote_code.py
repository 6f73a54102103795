"""How a saved FaPN folder finds its code: the one owner of Auto-class registration, `auto_map` and remote code.

Each model family is a `CodeFamily`: its config, its model classes per Auto class and its image processor, named as
`"module.Class"` (the form of config.json's `auto_map`). From that one declaration:

* `register_family` registers the classes with transformers' Auto classes (what `import fapn_hf` does), and marks
  the config and models for `register_for_auto_class`, so that `save_pretrained` ships their code;
* `FamilyCodeSavingMixin.save_pretrained` (on the models) writes an `auto_map` naming every head and the image
  processor into config.json, whichever head is saved, and ships the processor's code next to the model's;
* `ProcessorCodeMixin` (on the image processors) keeps `auto_map` and the processor class out of
  preprocessor_config.json (`defer_processor_class_to_model_config`): declared there, transformers' pipeline would
  look for a remote video processor and prompt about remote code even with fapn_hf imported. `AutoImageProcessor`
  then takes the class from the model config: the registered class with fapn_hf imported, the shipped code with
  `trust_remote_code=True` otherwise.

This module is the mechanism only: each family declares its `CodeFamily` in its own configuration module
(`configuration_fapn.FAPN_CODE`, ...), and the package registers them. It is part of the shipped kernel
(`KERNEL_MODULES`: the modules every family's shipped code may import, and that import nothing else of the package),
depends on nothing of the package (no relative imports), and names classes instead of importing them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
from transformers.dynamic_module_utils import get_relative_import_files

# The shared kernel of the shipped code: every family's configuration, modeling and image-processing modules import
# only these (and their own family's modules), and these import only each other (tests/test_remote_code_closure.py).
KERNEL_MODULES: tuple[str, ...] = (
    "backbone_utils",
    "config_checks",
    "deform_conv",
    "fapn_layers",
    "image_decoding",
    "initialisation",
    "label_checks",
    "remote_code",
    "shortest_edge_resize",
)


@dataclass(frozen=True)
class CodeFamily:
    """One model family's classes, each as `"module.Class"` (a flat module of the package).

    Args:
        config: the config class, registered with `AutoConfig`.
        models: Auto class name -> model class. A model class is marked for the first Auto class that names it.
        processor: the image processor class, registered with `AutoImageProcessor` for the config.
    """

    config: str
    models: dict[str, str] = field(default_factory=dict)
    processor: str = ""

    def auto_map(self) -> dict[str, str]:
        """config.json's `auto_map`: the config, every model head and the image processor."""
        return {"AutoConfig": self.config, **self.models, "AutoImageProcessor": self.processor}

    def module_files(self, package: str) -> list[Path]:
        """The file of the processor's own module, `package.<module>` (the package the family's classes are found in:
        `fapn_hf.modeling`, or a `transformers_modules` folder for remote code), and the files it imports
        relatively; empty when that module cannot be found (remote code loaded without the processor)."""
        try:
            spec = importlib.util.find_spec(f"{package}.{self.processor.split('.')[0]}")
        except ImportError:  # `package` itself is not importable
            spec = None
        if spec is None or spec.origin is None or not Path(spec.origin).is_file():
            return []
        processor_file = Path(spec.origin)
        return [processor_file, *map(Path, get_relative_import_files(str(processor_file)))]


# What marks a folder as saved by `save_pretrained` (a model, or an image processor saved on its own).
_SAVED_FILES = ("config.json", "preprocessor_config.json")


def check_pretrained_source(name: Any) -> None:
    """Raises `FileNotFoundError` ("model not found: there is no folder ... (did you mean ...?)") when a
    `from_pretrained` source is meant as a local folder that does not exist: a `Path`, or a string that starts with
    `.`, `/` or `~` or cannot be a Hub repo id (e.g. `runs/a/b/model`). transformers would answer "Repo id must be in
    the form 'repo_name' or 'namespace/repo_name'". The hint names the closest saved folder beside it, as the
    package's commands do. Existing paths and valid Hub ids are left to transformers."""
    if not isinstance(name, (str, os.PathLike)):
        return
    path = Path(name).expanduser()
    if path.exists():
        return
    local = isinstance(name, os.PathLike) or str(name).startswith((".", "/", "~"))
    if not local:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(str(name))
        except HFValidationError:
            local = True
    if not local:
        return
    raise FileNotFoundError(f"model not found: there is no folder {name}{closest_folder_hint(path)}")


def closest_folder_hint(path: str | os.PathLike) -> str:
    """` (did you mean PARENT/NAME?)` naming the saved model folder beside `path` whose name is closest to its name,
    or "" when there is none."""
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return ""
    saved = [p.name for p in parent.iterdir() if p.is_dir() and any((p / f).is_file() for f in _SAVED_FILES)]
    match = difflib.get_close_matches(path.name, saved, n=1, cutoff=0.6)
    return f" (did you mean {parent / match[0]}?)" if match else ""


def _resolve(package: str, name: str) -> type:
    """`"module.Class"` -> the class, from `package.module`."""
    module, class_name = name.split(".")
    return getattr(importlib.import_module(f"{package}.{module}"), class_name)


def register_family(family: CodeFamily, package: str) -> None:
    """Registers `family`'s classes (found in the modules of `package`) with transformers' Auto classes, and marks
    the config and each model class for `register_for_auto_class` so that `save_pretrained` ships their code."""
    config_class = _resolve(package, family.config)
    transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    config_class.register_for_auto_class()
    marked: set[type] = set()
    for auto_class_name, model_name in family.models.items():
        model_class = _resolve(package, model_name)
        auto_class = getattr(transformers, auto_class_name)
        auto_class.register(config_class, model_class, exist_ok=True)
        # transformers' pipelines check a model against the class names of their Auto classes' static tables, not
        # against registered classes: without an entry there every pipeline logs "The model ... is not supported".
        names = getattr(getattr(auto_class, "_model_mapping", None), "_model_mapping", None)
        if isinstance(names, dict) and auto_class_name != "AutoModel":
            names.setdefault(config_class.model_type, model_class.__name__)
        if model_class not in marked:
            model_class.register_for_auto_class(auto_class_name)
            marked.add(model_class)
    processor_class = _resolve(package, family.processor)
    transformers.AutoImageProcessor.register(
        config_class, image_processor_classes={"torchvision": processor_class}, exist_ok=True
    )


def defer_processor_class_to_model_config(folder: str | Path) -> None:
    """In a model folder that ships the code (its config.json maps `AutoImageProcessor`), drops
    `image_processor_type` from preprocessor_config.json so that `AutoImageProcessor` takes the class from the model
    config. A processor saved on its own keeps its type and reloads with `AutoImageProcessor` directly. Called after
    either the model or the processor is saved, whichever comes second does it."""
    folder = Path(folder)
    config_file, processor_file = folder / "config.json", folder / "preprocessor_config.json"
    if not (config_file.is_file() and processor_file.is_file()):
        return
    auto_map = json.loads(config_file.read_text()).get("auto_map") or {}
    processor_config = json.loads(processor_file.read_text())
    if "AutoImageProcessor" in auto_map and processor_config.pop("image_processor_type", None) is not None:
        processor_file.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")


class FamilyCodeSavingMixin:
    """For the models of a family (`code_family`): `save_pretrained` as transformers', plus, when the class ships its
    code (`register_for_auto_class`), the family's full `auto_map` in config.json and the processor's code."""

    code_family: CodeFamily

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Loads like any transformers model; a mistyped local folder is named with the closest saved one
        (`check_pretrained_source`) instead of transformers' "Repo id must be in the form ..."."""
        check_pretrained_source(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Saves like any transformers model; for `trust_remote_code=True` users also writes an `auto_map` entry for
        every Auto class of the family and copies the image processor's code."""
        ships_code = self._auto_class is not None
        processor_files = self.code_family.module_files(self._code_package()) if ships_code else []
        if ships_code:
            auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self.code_family.auto_map()}
            if not processor_files:
                auto_map.pop("AutoImageProcessor")
            self.config.auto_map = auto_map
        result = super().save_pretrained(save_directory, *args, **kwargs)
        for source in processor_files:
            shutil.copyfile(source, Path(save_directory) / source.name)
        if processor_files:
            defer_processor_class_to_model_config(save_directory)  # a processor saved there first
        return result

    @classmethod
    def _code_package(cls) -> str:
        """The package of the module that declares `code_family` (a subclass defined elsewhere, e.g. in a user's
        script, still ships the family's processor from where the family's code sits)."""
        owner = next(klass for klass in cls.__mro__ if "code_family" in vars(klass))
        return owner.__module__.rpartition(".")[0]


class ProcessorCodeMixin:
    """For the image processors: preprocessor_config.json never names code (no `auto_map`, and no processor class
    where the model's config.json maps `AutoImageProcessor`)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Loads like any transformers image processor; a mistyped local folder is named with the closest saved one
        (`check_pretrained_source`)."""
        check_pretrained_source(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> list[str]:
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        defer_processor_class_to_model_config(save_directory)  # a model saved there first ships the class
        return saved

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("auto_map", None)  # the model's config.json carries it
        return output


__all__ = [
    "KERNEL_MODULES",
    "CodeFamily",
    "FamilyCodeSavingMixin",
    "ProcessorCodeMixin",
    "check_pretrained_source",
    "closest_folder_hint",
    "defer_processor_class_to_model_config",
    "register_family",
]
