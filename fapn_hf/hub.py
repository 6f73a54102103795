"""Model cards for FaPN folders: Hub metadata (`model-index` with the measured mIoU), usage and citation."""

from __future__ import annotations

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
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Semantic Segmentation",
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=metric_type,
            metric_name=display,
            metric_value=round(float(metrics[key]), 4),
        )
        for key, metric_type, display in CARD_METRICS
        if isinstance(metrics.get(key), (int, float))
    ]
    data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license="apache-2.0",
        tags=["fapn", "semantic-segmentation", "vision", "image-segmentation"],
        datasets=[dataset] if dataset_name and "/" in dataset_name else None,
        eval_results=eval_results or None,
    )
    rows = "\n".join(
        f"| {display} | {float(metrics[key]):.4f} |"
        for key, _, display in CARD_METRICS
        if isinstance(metrics.get(key), (int, float))
    )
    results = f"| metric | value |\n|---|---|\n{rows}" if rows else "No evaluation results yet."
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


def write_model_card(folder: str | Path, config: FaPNConfig, **kwargs: Any) -> Path:
    """Writes `README.md` (the model card) into `folder`; see `model_card` for the arguments."""
    path = Path(folder) / "README.md"
    kwargs.setdefault("model_name", Path(folder).name)
    model_card(config, **kwargs).save(path)
    return path


__all__ = ["CITATION", "describe_architecture", "model_card", "write_model_card"]
