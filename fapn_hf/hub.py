"""Model cards for FaPN folders: Hub metadata (`model-index` with the measured mIoU), usage and citation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_fapn import FaPNConfig

CITATION = """@inproceedings{huang2021fapn,
  title     = {FaPN: Feature-aligned Pyramid Network for Dense Image Prediction},
  author    = {Huang, Shihua and Lu, Zhichao and Cheng, Ran and He, Cheng},
  booktitle = {International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""

PAPER_URL = "https://arxiv.org/abs/2108.07058"

# The authors' released semantic models (SPEC 3): (backbone, PointRend, label set) -> (data set, split, mIoU).
REPORTED_RESULTS: dict[tuple[str, bool, str], tuple[str, str, float]] = {
    ("resnet50", True, "cityscapes"): ("cityscapes", "val", 80.0),
    ("resnet101", True, "cityscapes"): ("cityscapes", "val", 80.1),
}

# Metrics written to `model-index`: (key in the evaluation metrics, metric type, display name).
CARD_METRICS = (
    ("mean_iou", "mean_iou", "mIoU"),
    ("boundary_mean_iou", "boundary_mean_iou", "boundary mIoU (mean of 3/5/8/12 px)"),
    ("pixel_accuracy", "accuracy", "pixel accuracy"),
)


def describe_architecture(config: FaPNConfig) -> str:
    """One line such as 'FaPN (FAM + FSM) on resnet50, semantic FPN head + PointRend, 19 classes'."""
    if config.use_fam and config.use_fsm:
        neck = "FaPN (FAM + FSM)"
    elif config.use_fam:
        neck = "FPN + FAM"
    elif config.use_fsm:
        neck = "FPN + FSM"
    else:
        neck = "FPN"
    backbone = getattr(config.backbone_config, "backbone", None) or config.backbone_config.model_type
    head = "semantic FPN head" + (" + PointRend" if config.use_point_rend else "")
    return f"{neck} on {backbone}, {head}, {config.num_labels} classes"


def reported_result(config: FaPNConfig) -> tuple[str, str, float] | None:
    """The authors' reported mIoU for a configuration that matches one of their released models, else None."""
    from .labels import CITYSCAPES_LABELS

    if not (config.use_fam and config.use_fsm) or config.neck_channels != 256:
        return None
    backbone = (getattr(config.backbone_config, "backbone", None) or "").split(".")[0]
    names = tuple(config.id2label[i] for i in range(config.num_labels))
    label_set = "cityscapes" if names == CITYSCAPES_LABELS else None
    return REPORTED_RESULTS.get((backbone, bool(config.use_point_rend), label_set or ""))


def model_card(
    config: FaPNConfig,
    eval_metrics: dict[str, Any] | None = None,
    dataset_name: str | None = None,
    model_name: str = "fapn",
    training_summary: dict[str, Any] | None = None,
) -> ModelCard:
    """A `ModelCard` whose metadata holds the measured metrics (keys with or without the `eval_` prefix)."""
    metrics = {key.removeprefix("eval_"): value for key, value in (eval_metrics or {}).items()}
    dataset = dataset_name or "unknown"
    measured = [
        (metric_type, display, float(metrics[key]))
        for key, metric_type, display in CARD_METRICS
        if isinstance(metrics.get(key), (int, float))
    ]
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Semantic Segmentation",
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=metric_type,
            metric_name=display,
            metric_value=round(value, 4),
        )
        for metric_type, display, value in measured
    ]
    reported = reported_result(config)
    if reported is not None:
        reported_dataset, reported_split, reported_miou = reported
        eval_results.append(
            EvalResult(
                task_type="image-segmentation",
                task_name="Semantic Segmentation",
                dataset_type=reported_dataset,
                dataset_name=f"{reported_dataset.capitalize()} ({reported_split}), reported by the authors",
                dataset_split=reported_split,
                metric_type="mean_iou",
                metric_name="mIoU (reported by the FaPN authors, not measured here)",
                metric_value=reported_miou,
                source_name="FaPN paper (Huang et al., ICCV 2021)",
                source_url=PAPER_URL,
            )
        )
    data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license="apache-2.0",
        tags=["fapn", "semantic-segmentation", "vision", "image-segmentation"],
        datasets=[dataset] if dataset_name and "/" in dataset_name else None,
        eval_results=eval_results or None,
    )
    rows = "\n".join(f"| {display} | {value:.4f} |" for _, display, value in measured)
    results = f"| metric | value |\n|---|---|\n{rows}" if rows else "No evaluation results yet."
    if reported is not None:
        results += (
            f"\n\nThe authors report **{reported[2]} mIoU** on {reported[0].capitalize()} {reported[1]} for this "
            f"architecture ([paper]({PAPER_URL})); that figure is theirs, not measured with these weights."
        )
    settings = "\n".join(f"- `{k}`: `{v}`" for k, v in (training_summary or {}).items() if v is not None)
    content = f"""---
{data.to_yaml()}
---

# {model_name}

{describe_architecture(config)}. FaPN (Feature-aligned Pyramid Network, ICCV 2021) aligns upsampled features with
a learnt deformable convolution (FAM) and re-weights lateral features (FSM) in the top-down path of an FPN.

## Results on {dataset} (measured)

{results}

## Usage

```python
import fapn_hf  # registers FaPN with transformers
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{model_name}")
segments = segmenter("image.jpg")
```

Without the `fapn_hf` package, the modeling code shipped in this repository loads with remote code:

```python
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

model = AutoModelForSemanticSegmentation.from_pretrained("{model_name}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{model_name}", trust_remote_code=True)
```

## Training settings

{settings or "Not recorded."}

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


# What a Hub model repo gets from a run folder; checkpoints, pickles (training_args.bin) and overlays stay local.
UPLOAD_PATTERNS = ("config.json", "model*.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
                   "*.py", "README.md", "metrics.json", "training_curves.png")  # fmt: skip
REQUIRED_FILES = ("config.json", "preprocessor_config.json")


@dataclass
class UploadPlan:
    """Files of a model folder to upload (path in the repo -> local path), and the card to upload as README.md."""

    folder: Path
    files: dict[str, Path]
    card: ModelCard

    def describe(self) -> str:
        lines = [f"{len(self.files) + 1} files from {self.folder}:"]
        for name, path in sorted(self.files.items()):
            lines.append(f"  {name:32s} {path.stat().st_size / 1e6:10.3f} MB")
        lines.append(f"  {'README.md':32s} {len(str(self.card).encode()) / 1e6:10.3f} MB  (model card)")
        lines.append("card metadata:")
        lines.extend(f"  {line}" for line in self.card.data.to_yaml().splitlines())
        return "\n".join(lines)


def plan_upload(folder: str | Path, repo_id: str | None = None, keep_card: bool = False) -> UploadPlan:
    """Checks a model folder and lists what `push_folder` uploads. The card is generated from the folder's config
    and metrics.json, named after `repo_id` (or, with `keep_card`, the folder's own README.md). Nothing is written.
    """
    import fnmatch
    import json

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not list(folder.glob("model*.safetensors")):
        missing.append("model.safetensors")
    config = FaPNConfig.from_pretrained(folder) if (folder / "config.json").is_file() else None
    for module in {v.split(".")[0] + ".py" for v in (getattr(config, "auto_map", None) or {}).values()}:
        if not (folder / module).is_file():
            missing.append(f"{module} (remote code named in config.json's auto_map)")
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete FaPN model folder; missing: {', '.join(missing)}")
    files = {
        path.name: path
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != "README.md" and any(fnmatch.fnmatch(path.name, p) for p in UPLOAD_PATTERNS)
    }
    if keep_card:
        if not (folder / "README.md").is_file():
            raise FileNotFoundError(f"keep_card: {folder} has no README.md")
        card = ModelCard.load(folder / "README.md")
    else:
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        card = model_card(
            config,
            eval_metrics=metrics.get("eval"),
            dataset_name=metrics.get("dataset"),
            model_name=repo_id or folder.name,
            training_summary=metrics.get("settings"),
        )
    return UploadPlan(folder, files, card)


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
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise PermissionError(
            "no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token; nothing was uploaded"
        )
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


def write_model_card(folder: str | Path, config: FaPNConfig, **kwargs: Any) -> Path:
    """Writes `README.md` (the model card) into `folder`; see `model_card` for the arguments."""
    path = Path(folder) / "README.md"
    kwargs.setdefault("model_name", Path(folder).name)
    model_card(config, **kwargs).save(path)
    return path


__all__ = [
    "CITATION",
    "REPORTED_RESULTS",
    "UploadPlan",
    "describe_architecture",
    "model_card",
    "plan_upload",
    "push_folder",
    "reported_result",
    "write_model_card",
]
