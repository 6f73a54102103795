"""Model cards for fapn_hf folders of every family: Hub metadata (`model-index` with the measured scores of the
family's task), usage and citation. The family (`fapn_hf.families`) and its task fill in what differs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..convert.checkpoint_io import file_sha256
from ..families import family_of

CITATION = """@inproceedings{huang2021fapn,
  title     = {FaPN: Feature-aligned Pyramid Network for Dense Image Prediction},
  author    = {Huang, Shihua and Lu, Zhichao and Cheng, Ran and He, Cheng},
  booktitle = {International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""

PAPER_URL = "https://arxiv.org/abs/2108.07058"

# The provenance record the converter writes next to converted weights (see `read_conversion_record`).
CONVERSION_RECORD = "conversion.json"

# The data set name of the built-in synthetic demo data (`fapn_hf.tasks.semantic.demo_data`), and the card tag that
# marks models trained on it: the Space reads the tag to tell visitors that the model knows synthetic shapes, not
# photos.
DEMO_DATASET = "demo"
SYNTHETIC_DATA_TAG = "synthetic-shapes"

# What a card says about the data sets the original FaPN models were trained on (facts of the data sets).
KNOWN_DATASETS = {
    "cityscapes": "[Cityscapes](https://www.cityscapes-dataset.com/) (fine annotations: 2,975 training and 500 "
    "validation images of street scenes from 50 European cities, 2048x1024, 19 evaluation classes)",
    "ade20k": "[ADE20K SceneParsing](http://sceneparsing.csail.mit.edu/) (20,210 training and 2,000 validation "
    "images of indoor and outdoor scenes, 150 classes)",
}


def describe_architecture(config: Any) -> str:
    """One line naming the model's architecture, by its family (`Family.describe`), e.g. 'FaPN (FAM + FSM) on
    resnet50, semantic FPN head + PointRend, 19 classes'."""
    return family_of(config).describe(config)


def check_repo_id(repo_id: str, kind: str = "model") -> str:
    """`repo_id` when it is a valid Hub repo id of the form ORG/NAME; else `ValueError` in one line saying why."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"invalid {kind} repo id {repo_id!r}: expected ORG/NAME, e.g. my-org/fapn-r18-demo")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"invalid {kind} repo id {repo_id!r}: {reason}") from None
    return repo_id


def require_token(token: str | None = None) -> str:
    """`token`, or the logged-in one / HF_TOKEN; `PermissionError` saying how to log in when there is none."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PermissionError(
            "no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token; nothing was uploaded"
        )
    return token


def is_synthetic_demo(card_data: Any) -> bool:
    """Whether a card's metadata (`ModelCardData` or its dict) marks a model trained on the synthetic demo data."""
    tags = card_data.get("tags") if isinstance(card_data, dict) else getattr(card_data, "tags", None)
    return SYNTHETIC_DATA_TAG in (tags or [])


def load_model_card(source: str | Path) -> ModelCard | None:
    """The card of a model folder (its README.md) or Hub id (from the Hub or its cache), or None when it has none or
    it cannot be reached."""
    folder = Path(source)
    try:
        return ModelCard.load(folder / "README.md") if folder.is_dir() else ModelCard.load(str(source))
    except Exception:  # missing, unreachable or unparsable: the caller goes on without what the card would say
        return None


def describe_training_data(dataset_name: str | None, conversion: dict[str, Any] | None = None) -> str:
    """The card's "Training data" paragraph: the synthetic demo set, the original data set of converted weights, or
    the data set named in metrics.json."""
    if conversion:
        dataset = conversion.get("dataset") or ""
        known = KNOWN_DATASETS.get(dataset, f"the data set of the original model ({conversion.get('description')})")
        return (
            f"The authors of FaPN trained the original weights on {known}; these weights are converted from theirs, "
            "not retrained here."
        )
    if dataset_name == DEMO_DATASET:
        return (
            "Synthetic shapes: `fapn_hf.tasks.semantic.demo_data` draws coloured blobs, boxes, shards, clusters of "
            "dots and thin wires on textured backgrounds, with random colour casts and noise. The data is generated, "
            "not photographed: the model has never seen a real photo."
        )
    if dataset_name:
        known = KNOWN_DATASETS.get(dataset_name.lower().rsplit("/", 1)[-1])
        return f"{known}, as `{dataset_name}`." if known else f"`{dataset_name}` (see metrics.json for its splits)."
    return "Not recorded."


def _intended_use(dataset_name: str | None, conversion: dict[str, Any] | None) -> str:
    if dataset_name == DEMO_DATASET and not conversion:
        return (
            "A demonstration of the FaPN architecture and of this package's training, evaluation and publishing "
            "path. It segments images like its synthetic training data; on photos its output means nothing. Do not "
            "use it for any decision about real scenes."
        )
    return (
        "Semantic segmentation of images like those of its training data (one class per pixel, from the classes "
        "below). Expect lower accuracy on other kinds of images (other cameras, weather, countries, drawings), and "
        "validate it on your own data before relying on it. It is not meant for safety-critical use (driving, "
        "medical, surveillance of people) without that validation."
    )


def weights_digest(folder: str | Path) -> dict[str, str]:
    """sha256 of each weights file (`model*.safetensors`) in `folder`, by file name."""
    return {path.name: file_sha256(path) for path in sorted(Path(folder).glob("model*.safetensors"))}


def read_conversion_record(folder: str | Path) -> dict[str, Any] | None:
    """The converter's record of `folder` (`conversion.json`) when it still describes the folder's weights, else None.

    The record names the converted weights by sha256: once they are fine-tuned or re-saved, the record no longer
    matches and is ignored (with a warning), so the authors' reported figures never reach a card of other weights.
    A config field would not do: `from_pretrained` -> train -> `save_pretrained` carries config fields along.
    """
    import json
    import warnings

    path = Path(folder) / CONVERSION_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("weights_sha256") != weights_digest(folder):
        warnings.warn(
            f"{path} describes other weights than {Path(folder)}'s (they were re-saved or fine-tuned after the "
            "conversion): the card leaves out its provenance and reported figures",
            stacklevel=2,
        )
        return None
    return record


def model_card(
    config: Any,
    eval_metrics: dict[str, Any] | None = None,
    dataset_name: str | None = None,
    model_name: str = "fapn",
    training_summary: dict[str, Any] | None = None,
    conversion: dict[str, Any] | None = None,
) -> ModelCard:
    """A `ModelCard` whose metadata holds the measured metrics (keys with or without the `eval_` prefix) and, for
    weights converted from the authors' release (`conversion`, the converter's record), their reported figures."""
    family = family_of(config)
    task = family.task_for(config)
    metrics = {key.removeprefix("eval_"): value for key, value in (eval_metrics or {}).items()}
    dataset = dataset_name or "unknown"
    measured = [
        (metric_type, display, float(metrics[key]))
        for key, metric_type, display in task.card_metrics
        if isinstance(metrics.get(key), (int, float))
    ]
    eval_results = [
        EvalResult(
            task_type=task.pipeline_tag,
            task_name=task.display_name,
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=metric_type,
            metric_name=display,
            metric_value=round(value, 4),
        )
        for metric_type, display, value in measured
    ]
    synthetic = dataset_name == DEMO_DATASET and not conversion
    reported = conversion.get("reported", []) if conversion else []
    display_names = {metric_type: display for _, metric_type, display in task.card_metrics}
    for result in reported:
        eval_results.append(
            EvalResult(
                task_type=task.pipeline_tag,
                task_name=task.display_name,
                dataset_type=result["dataset"],
                dataset_name=f"{result['dataset'].capitalize()} ({result['split']}), reported by the authors",
                dataset_split=result["split"],
                metric_type=result["metric"],
                metric_name=f"{display_names.get(result['metric'], result['metric'])} (reported by the FaPN authors, "
                "not measured here)",
                metric_value=result["value"],
                source_name=result["source"],
                source_url=result["source_url"],
            )
        )
    data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=task.pipeline_tag,
        license="apache-2.0",
        tags=["fapn", *task.card_tags] + ([SYNTHETIC_DATA_TAG] if synthetic else []),
        datasets=[dataset] if dataset_name and "/" in dataset_name else None,
        eval_results=eval_results or None,
    )
    rows = "\n".join(f"| {display} | {value:.4f} |" for _, display, value in measured)
    results = f"| metric | value |\n|---|---|\n{rows}" if rows else "No evaluation results yet."
    for result in reported:
        metric = display_names.get(result["metric"], result["metric"])
        results += (
            f"\n\nThe authors report **{result['value']} {metric}** on {result['dataset'].capitalize()} "
            f"{result['split']} for the released weights these were converted from ([source]({result['source_url']})); "
            "that figure is theirs, not measured here."
        )
    provenance = _provenance(conversion, model_name) if conversion else ""
    settings = "\n".join(f"- `{k}`: `{v}`" for k, v in (training_summary or {}).items() if v is not None)
    classes = ", ".join(f"`{config.id2label[i]}`" for i in range(config.num_labels))
    content = f"""---
{data.to_yaml()}
---

# {model_name}

{family.describe(config)}. {family.card_summary}
{provenance}
## Training data

{describe_training_data(dataset_name, conversion)}

## Classes

The model gives every pixel one of {config.num_labels} classes (ids in this order): {classes}.

## Intended use and limitations

{_intended_use(dataset_name, conversion)} Images are read as 8-bit RGB (EXIF orientation applied, 16-bit images
scaled, transparency composited over white, the first frame of an animation); the image processor resizes them to
its own size rule and the class map comes back at the input size.

## Results{f" on {dataset_name}" if dataset_name else ""} (measured)

{results}

## Install

```bash
pip install fapn_hf          # the FaPN classes, registered with transformers on import
```

For the remote-code path below, transformers, torch, torchvision and timm are all it needs.

## Usage

```python
import fapn_hf  # registers FaPN with transformers
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{model_name}")
segments = segmenter(fapn_hf.open_image("image.jpg"))  # [{{"label": ..., "mask": PIL image}}, ...]
```

Test-time augmentation (multi-scale, flip) and class maps at the image's resolution:

```python
from fapn_hf import SegmentationPredictor, TTAConfig

predictor = SegmentationPredictor.from_pretrained("{model_name}")
class_ids = predictor.predict("image.jpg", TTAConfig(scales=(0.75, 1.0, 1.25), flip=True))  # (H, W) int64
```

Without the `fapn_hf` package, the modeling code shipped in this repository loads with remote code:

```python
from transformers import AutoImageProcessor, {family.head_auto_class}

model = {family.head_auto_class}.from_pretrained("{model_name}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{model_name}", trust_remote_code=True)
```

## Training settings

{settings or ("The authors' (see Provenance)." if reported else "Not recorded.")}

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def _provenance(record: dict[str, Any], model_name: str) -> str:
    """The card's "Provenance" section for converted weights."""
    source = record["source"]
    if record.get("converted_from_release"):
        origin = "Converted from the authors' release"
        link = f" ([download page]({source['release_url']}))" if source.get("release_url") else ""
    else:
        origin = "Converted from a detectron2 checkpoint in the layout of the authors' code (not their released file)"
        link = ""
    converter = record["converter"]
    return f"""
## Provenance

{origin}{link}: `{source["file"]}` (sha256 `{source["sha256"]}`), original config `{source["original_config"]}`.
Converted by `{converter["package"]}` with {converter["rename_rules"]} rename rules, every one of the
{converter["tensors"]} tensors accounted for. The model reproduces the original network, input normalisation included:
it takes RGB, and the processor's mean and std equal detectron2's BGR `PIXEL_MEAN` and `PIXEL_STD`. To measure it on a
local copy of the data with the original test-time settings (the processor's resize, no test-time augmentation):

```bash
fapn-evaluate --model {model_name} {record["evaluate_arguments"]}
```
"""


# What a Hub model repo gets from a run folder; checkpoints, pickles (training_args.bin) and overlays stay local.
UPLOAD_PATTERNS = ("config.json", "model*.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
                   "*.py", "README.md", "metrics.json", "training_curves.png", CONVERSION_RECORD,
                   "model.onnx")  # fmt: skip
REQUIRED_FILES = ("config.json", "preprocessor_config.json")


@dataclass
class UploadPlan:
    """Files of a model folder to upload (path in the repo -> local path), and the card to upload as README.md."""

    folder: Path
    files: dict[str, Path]
    card: ModelCard
    # Holds files made for the upload only (an ONNX export), deleted with the plan.
    scratch: Any = None

    def describe(self) -> str:
        lines = [f"{len(self.files) + 1} files from {self.folder}:"]
        for name, path in sorted(self.files.items()):
            lines.append(f"  {name:32s} {path.stat().st_size / 1e6:10.3f} MB")
        lines.append(f"  {'README.md':32s} {len(str(self.card).encode()) / 1e6:10.3f} MB  (model card)")
        lines.append("card metadata:")
        lines.extend(f"  {line}" for line in self.card.data.to_yaml().splitlines())
        return "\n".join(lines)


def plan_upload(
    folder: str | Path, repo_id: str | None = None, keep_card: bool = False, onnx: bool = False
) -> UploadPlan:
    """Checks a model folder (and `repo_id`: `ValueError` when invalid) and lists what `push_folder` uploads. The
    card is generated from the folder's config and metrics.json, named after `repo_id` (or, with `keep_card`, the
    folder's own README.md). The folder's `model.onnx` goes with it; with `onnx=True` a folder without one gets it
    exported (and verified) into a temporary directory for the upload (`fapn_hf.export.onnx.export_onnx`). Nothing is
    written into the folder.
    """
    import fnmatch
    import json

    if repo_id is not None:
        check_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not list(folder.glob("model*.safetensors")):
        missing.append("model.safetensors")
    saved = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    for module in {v.split(".")[0] + ".py" for v in (saved.get("auto_map") or {}).values()}:
        if not (folder / module).is_file():
            missing.append(f"{module} (remote code named in config.json's auto_map)")
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete fapn_hf model folder; missing: {', '.join(missing)}")
    files = {
        path.name: path
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != "README.md" and any(fnmatch.fnmatch(path.name, p) for p in UPLOAD_PATTERNS)
    }
    scratch = None
    if onnx and "model.onnx" not in files:
        import tempfile

        from ..export.onnx import export_onnx
        from ..inference.sources import load_model

        scratch = tempfile.TemporaryDirectory(prefix="fapn_onnx_")
        files["model.onnx"] = export_onnx(load_model(str(folder)), scratch.name)
    if keep_card:
        if not (folder / "README.md").is_file():
            raise FileNotFoundError(f"keep_card: {folder} has no README.md")
        card = ModelCard.load(folder / "README.md")
    else:
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        from transformers import AutoConfig

        card = model_card(
            AutoConfig.from_pretrained(folder),
            eval_metrics=metrics.get("eval"),
            dataset_name=metrics.get("dataset"),
            model_name=repo_id or folder.name,
            training_summary=metrics.get("settings"),
            conversion=read_conversion_record(folder),
        )
    return UploadPlan(folder, files, card, scratch)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests), and OSError."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module_name, attribute in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "RequestException"),
    ):
        try:
            errors.append(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def push_folder(
    plan: UploadPlan, repo_id: str, private: bool = False, revision: str | None = None, token: str | None = None
) -> str:
    """Uploads `plan` to the Hub model repo `repo_id` (created if needed) in one commit; returns the commit URL.

    Raises `PermissionError` without a token and `ConnectionError` when the Hub cannot be reached; the local folder is
    never modified.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    token = require_token(token)
    api = HfApi(token=token)
    operations = [CommitOperationAdd(name, str(path)) for name, path in plan.files.items()]
    operations.append(CommitOperationAdd("README.md", str(plan.card).encode()))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id, operations, commit_message=f"Upload FaPN model from {plan.folder.name}", revision=revision
        )
    except HfHubHTTPError as error:
        raise ConnectionError(f"the Hub refused the upload to {repo_id}: {error}") from error
    except _network_errors() as error:  # DNS failures, refused connections, time-outs
        raise ConnectionError(f"cannot reach the Hugging Face Hub to upload {repo_id}: {error}") from error
    return commit.commit_url


def write_model_card(folder: str | Path, config: Any, **kwargs: Any) -> Path:
    """Writes `README.md` (the model card) into `folder`; see `model_card` for the arguments."""
    path = Path(folder) / "README.md"
    kwargs.setdefault("model_name", Path(folder).name)
    kwargs.setdefault("conversion", read_conversion_record(folder))
    model_card(config, **kwargs).save(path)
    return path


__all__ = [
    "CITATION",
    "CONVERSION_RECORD",
    "DEMO_DATASET",
    "KNOWN_DATASETS",
    "SYNTHETIC_DATA_TAG",
    "UploadPlan",
    "check_repo_id",
    "describe_architecture",
    "describe_training_data",
    "file_sha256",
    "is_synthetic_demo",
    "load_model_card",
    "model_card",
    "plan_upload",
    "push_folder",
    "read_conversion_record",
    "require_token",
    "weights_digest",
    "write_model_card",
]
