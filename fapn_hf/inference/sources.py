"""Where a model comes from: a saved folder or a Hub id, checked before loading so that a mistyped path is named
with the closest existing folder, and loaded with its family's Auto class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..families import find_family
from ..modeling.remote_code import check_pretrained_source, closest_folder_hint


def check_model_source(name: str) -> None:
    """Raises `FileNotFoundError` when `name` can be neither a saved model folder nor a Hub model id, with the
    closest existing folder as a hint (the kernel's `check_pretrained_source`, which the families' own
    `from_pretrained` calls too); a Hub id is left for the loader to find."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model not found: {name} is a folder without config.json (not a saved model)")
        return
    if path.exists():
        raise FileNotFoundError(f"model not found: {name} is a file; a model is a folder (save_pretrained) or Hub id")
    check_pretrained_source(name)


def load_model(model_name_or_path: str, trust_remote_code: bool = False, with_processor: bool = False) -> Any:
    """A model (eval mode, its family's head class) from a folder or Hub id, and with `with_processor` a
    `(model, image processor)` pair; a name that is neither raises `FileNotFoundError` saying so (not transformers'
    "Repo id must be in the form ...")."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

    check_model_source(model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        family = find_family(config)
        # A family's head class; a semantic segmentation model of transformers outside the registry as it is.
        auto_class = AutoModelForSemanticSegmentation if family is None else family.auto_class
        model = auto_class.from_pretrained(model_name_or_path, config=config, trust_remote_code=trust_remote_code)
        if not with_processor:
            return model.eval()
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except OSError as error:
        if Path(model_name_or_path).expanduser().is_dir():
            raise
        raise model_not_found_error(model_name_or_path, error) from error
    return model.eval(), processor


def load_model_and_processor(model_name_or_path: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A model (eval mode, its family's head class) and its image processor from a folder or Hub id (`load_model`)."""
    return load_model(model_name_or_path, trust_remote_code, with_processor=True)


def model_not_found_error(name: str, error: Exception) -> FileNotFoundError:
    """The error for a model name that is no local folder and failed to load as a Hub id (`error`)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return FileNotFoundError(
        f"model not found: {name} is not a local folder{closest_folder_hint(name)}, and as a Hub id it "
        f"failed to load ({first_line})"
    )


def find_onnx_file(model_name_or_path: str) -> Path | None:
    """The `model.onnx` of a model folder or Hub repo (downloaded to the Hub cache), or None when there is none."""
    from ..export.onnx import ONNX_FILE_NAME

    folder = Path(model_name_or_path).expanduser()
    if folder.is_dir():
        path = folder / ONNX_FILE_NAME
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(model_name_or_path, ONNX_FILE_NAME))
    except (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError):
        return None  # the PyTorch loader then says what is missing, in its own words


__all__ = ["check_model_source", "find_onnx_file", "load_model", "load_model_and_processor", "model_not_found_error"]
