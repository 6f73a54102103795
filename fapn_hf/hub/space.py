"""The folder of a Hugging Face Space that serves one FaPN model: `build_space(model_id, output_dir)`.

The folder works on its own, the way a Space's builder sees it after a push:

- `app.py`: the Gradio app (`space_app/app.py` of the source checkout);
- `README.md`: front matter by the Spaces configuration reference (`sdk_version` = the gradio installed here,
  `python_version`, `app_file`, `models:` naming the model repo the app serves, `license`, a `short_description` of
  at most 60 characters), then the page's API with a `gradio_client` example;
- `requirements.txt`: the packages the app, the predictor and `import fapn_hf` import (fapn_hf's dependencies less
  the training-only ones, and gradio), pinned to the versions installed where the folder is built (the versions the
  tests ran with); for a CPU Space torch and torchvision are PyTorch's CPU-only builds from its own wheel index
  (`+cpu`: no CUDA libraries, a few hundred MB instead of several GB), for a GPU Space (`gpu=True`) the default build;
- `fapn_hf/`: the package itself, vendored next to the app, so `import fapn_hf` needs neither a git URL nor a wheel
  path that depends on the directory the Space's builder installs requirements.txt from;
- `examples/`: example images. For a model trained on the synthetic demo data (its card's tag), the demo
  validation images it segments best are chosen by measuring it; other models take the images passed in.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import Version

from ..tasks.base import Task
from ..tasks.detection import INSTANCE_SEGMENTATION, OBJECT_DETECTION, PANOPTIC_SEGMENTATION
from ..tasks.semantic import TASK as SEMANTIC_SEGMENTATION
from .cards import check_repo_id, is_synthetic_demo, load_model_card

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_ROOT = PACKAGE_DIR.parent
APP_SOURCE = SOURCE_ROOT / "space_app" / "app.py"
PYPROJECT = SOURCE_ROOT / "pyproject.toml"
SHORT_DESCRIPTION_LIMIT = 60  # characters, by the Spaces configuration reference
DEFAULT_SHORT_DESCRIPTION = "FaPN semantic segmentation: upload an image"
EXAMPLE_SIZE = (256, 256)
EXAMPLE_CANDIDATES = 16
# Dependencies of fapn_hf that only training and evaluation import; the app, the predictor and `import fapn_hf` run
# without them (tests/test_space_folder.py starts the app in a virtualenv that lacks them).
TRAINING_ONLY = frozenset({"datasets", "accelerate", "matplotlib"})
# PyTorch's own index of CPU-only wheels; its Linux builds carry the local version `+cpu`. Elsewhere (macOS, Windows)
# the registry's torch has no CUDA libraries anyway.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CPU_PACKAGES = ("torch", "torchvision")
CPU_PLATFORM, OTHER_PLATFORMS = 'sys_platform == "linux"', 'sys_platform != "linux"'  # PEP 508 markers have no `not`
CPU_HARDWARE, GPU_HARDWARE = "cpu-basic", "t4-small"  # the front matter's `suggested_hardware`


@dataclass
class SpaceFolder:
    """What `build_space` wrote: the folder, the served model, the pinned requirements and the examples (with the
    mIoU the model reached on each demo example, when they were chosen by measuring it)."""

    folder: Path
    model_id: str
    requirements: list[str]
    examples: list[Path]
    example_scores: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"Space folder {self.folder} for {self.model_id}:"]
        lines += [f"  {path.relative_to(self.folder)}" for path in sorted(self.folder.rglob("*")) if path.is_file()]
        lines.append("requirements: " + ", ".join(self.requirements))
        for name, score in self.example_scores.items():
            lines.append(f"example {name}: mIoU {score:.3f} against its ground truth")
        if not self.examples:
            lines.append(
                "no examples: the model is not the demo model; pass images that show it doing well (--examples)"
            )
        return "\n".join(lines)


def pinned_requirements(gpu: bool = False) -> list[str]:
    """The Space's requirements, one line each: `name==version` for every dependency of `fapn_hf` (pyproject.toml)
    but `TRAINING_ONLY`, and for gradio, at the installed versions.

    Without `gpu`, torch and torchvision are pinned to PyTorch's CPU-only builds on Linux (`torch==2.14.1+cpu;
    sys_platform == "linux"`, from `TORCH_CPU_INDEX`, which `requirements_file` names) and to the registry's build
    elsewhere; with `gpu`, to the registry's build (CUDA on Linux). Raises `ModuleNotFoundError` naming a dependency
    that is not installed here (its version cannot be pinned)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ModuleNotFoundError(
            "building a Space reads pyproject.toml with tomllib: use Python 3.11 or newer"
        ) from None
    from packaging.requirements import Requirement

    names = [Requirement(spec).name for spec in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]
    pins = []
    for name in [*(name for name in names if name not in TRAINING_ONLY), "gradio"]:
        try:
            version = Version(metadata.version(name)).public  # without a local build tag such as +cu130
        except metadata.PackageNotFoundError:
            raise ModuleNotFoundError(
                f"{name} is not installed, so the Space's requirements cannot pin it: pip install {name}"
            ) from None
        if name in TORCH_CPU_PACKAGES and not gpu:
            pins += [f"{name}=={version}+cpu; {CPU_PLATFORM}", f"{name}=={version}; {OTHER_PLATFORMS}"]
        else:
            pins.append(f"{name}=={version}")
    return pins


def requirements_file(requirements: list[str]) -> str:
    """The text of the Space's requirements.txt: a comment, PyTorch's CPU index when a requirement pins a `+cpu`
    build, then `requirements`."""
    lines = [
        "# What the Space's app imports, at the versions fapn_hf was tested with; fapn_hf is the folder next to app.py."
    ]
    if any("+cpu" in requirement for requirement in requirements):
        lines += [
            "# CPU-only torch and torchvision (no CUDA libraries) from PyTorch's own index; a GPU Space is built with",
            "# `fapn-build-space --gpu`.",
            f"--extra-index-url {TORCH_CPU_INDEX}",
        ]
    return "\n".join([*lines, *requirements]) + "\n"


_SEMANTIC_INTRO = """\
Semantic segmentation with [{model_id}](https://huggingface.co/{model_id}), a FaPN model (Feature-aligned Pyramid
Network, ICCV 2021). Upload an image and get the class overlay (its opacity and a "hide background" switch are
controls), a legend, the area of each class and the time the request took. Flip and multi-scale test-time
augmentation are switches."""
_DETECTION_INTRO = """\
Object detection with [{model_id}](https://huggingface.co/{model_id}), a detector with the FaPN neck
(Feature-aligned Pyramid Network, ICCV 2021). Upload an image and get its boxes, labels and scores (and instance
masks for Mask R-CNN) above a score threshold, a table of the detections and the time the request took."""
_PANOPTIC_INTRO = """\
Panoptic segmentation with [{model_id}](https://huggingface.co/{model_id}), Panoptic FPN with the FaPN neck
(Feature-aligned Pyramid Network, ICCV 2021). Upload an image and get every object and every stuff region as a
named segment, a table of the segments and the time the request took."""
_SEMANTIC_API = """\
## API

One endpoint, `/segment`, with these parameters:

| name | type | meaning |
|---|---|---|
| `image` | image file | the image to segment (PNG, JPEG, WebP, GIF, TIFF or BMP) |
| `flip` | bool | also predict the mirrored image and average (default `False`) |
| `multiscale` | bool | predict at 0.75, 1 and 1.25 times the processor's size and average (default `False`) |
| `opacity` | float in [0, 1] | opacity of the class colours over the image (default 0.5) |
| `hide_background` | bool | leave pixels of the background class unpainted (models with such a class) |

It returns, in this order:

| name | type | meaning |
|---|---|---|
| `Overlay` | image file (PNG) | the class colours over the (reduced) image |
| `Legend` | str (HTML) | the classes present, in the overlay's colours, largest first |
| `Areas` | table | a row per class present: `class` (str), `area (%)` (number, 3 significant digits), `pixels` (int) |
| `Status` | str (Markdown) | the image size, any reduction, the number of views and the timings |

A file that cannot be segmented fails the call with the message (`gradio_client` raises `AppError`).

```python
from gradio_client import Client, handle_file

client = Client("OWNER/SPACE-NAME")  # this Space's id, or http://127.0.0.1:7860 when run locally
overlay, legend, areas, status = client.predict(
    image=handle_file("photo.jpg"), flip=False, multiscale=False, opacity=0.5, hide_background=True,
    api_name="/segment",
)
print(status)
print(areas["headers"], areas["data"])
```

"""

_DETECTION_API = """\
## API

One endpoint, `/detect`, with these parameters:

| name | type | meaning |
|---|---|---|
| `image` | image file | the image to run the detector on (PNG, JPEG, WebP, GIF, TIFF or BMP) |
| `threshold` | float in [0, 1] | draw and list the detections scoring at least this (default 0.5) |
| `opacity` | float in [0, 1] | opacity of the instance masks over the image (default 0.5) |

It returns, in this order:

| name | type | meaning |
|---|---|---|
| `Overlay` | image file (PNG) | the boxes, masks and labels over the (reduced) image |
| `Legend` | str (HTML) | the classes detected, with their counts |
| `Detections` | table | a row per detection drawn: class, score, box (x0, y0, x1, y1 in the image's pixels) |
| `Status` | str (Markdown) | the image size, any reduction and the timings |

A file that cannot be read fails the call with the message (`gradio_client` raises `AppError`).

```python
from gradio_client import Client, handle_file

client = Client("OWNER/SPACE-NAME")  # this Space's id, or http://127.0.0.1:7860 when run locally
overlay, legend, detections, status = client.predict(
    image=handle_file("photo.jpg"), threshold=0.5, opacity=0.5, api_name="/detect"
)
print(detections["headers"], detections["data"])
```

"""

_PANOPTIC_API = """\
## API

One endpoint, `/segment`, with these parameters:

| name | type | meaning |
|---|---|---|
| `image` | image file | the image to segment (PNG, JPEG, WebP, GIF, TIFF or BMP) |
| `opacity` | float in [0, 1] | opacity of the segments' colours over the image (default 0.5) |

It returns, in this order:

| name | type | meaning |
|---|---|---|
| `Overlay` | image file (PNG) | the panoptic segments (things and stuff) over the (reduced) image, with their names |
| `Legend` | str (HTML) | the classes present |
| `Segments` | table | a row per segment: segment id, class, score, area (%), pixels |
| `Status` | str (Markdown) | the image size, any reduction and the timings |

A file that cannot be read fails the call with the message (`gradio_client` raises `AppError`).

```python
from gradio_client import Client, handle_file

client = Client("OWNER/SPACE-NAME")  # this Space's id, or http://127.0.0.1:7860 when run locally
overlay, legend, segments, status = client.predict(image=handle_file("photo.jpg"), opacity=0.5, api_name="/segment")
print(segments["headers"], segments["data"])
```

"""

# Per task (`Task.name`): the card's introduction (with `{model_id}`) and its API section, as the app serves it.
_SPACE_KINDS: dict[str, tuple[str, str]] = {
    SEMANTIC_SEGMENTATION.name: (_SEMANTIC_INTRO, _SEMANTIC_API),
    OBJECT_DETECTION.name: (_DETECTION_INTRO, _DETECTION_API),
    INSTANCE_SEGMENTATION.name: (_DETECTION_INTRO, _DETECTION_API),
    PANOPTIC_SEGMENTATION.name: (_PANOPTIC_INTRO, _PANOPTIC_API),
}


def space_card(
    model_id: str,
    title: str,
    short_description: str,
    requirements: list[str],
    emoji: str = "🧩",
    hardware: str = CPU_HARDWARE,
    task: Task = SEMANTIC_SEGMENTATION,
) -> Any:
    """The Space's README.md (a `huggingface_hub.SpaceCard`): front matter (`suggested_hardware`: `hardware`) and the
    API with a client example, for a model of `task` (what the app draws, and its endpoint)."""
    if task.name not in _SPACE_KINDS:
        raise ValueError(f"no Space page for task {task.name!r}; known: {', '.join(_SPACE_KINDS)}")
    from huggingface_hub import SpaceCard, SpaceCardData

    if len(short_description) > SHORT_DESCRIPTION_LIMIT:
        raise ValueError(
            f"short_description has {len(short_description)} characters; the Spaces configuration allows at most "
            f"{SHORT_DESCRIPTION_LIMIT}: {short_description!r}"
        )
    data = SpaceCardData(
        title=title,
        sdk="gradio",
        sdk_version=metadata.version("gradio"),
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        app_file="app.py",
        license="apache-2.0",
        models=[model_id],
        tags=["fapn", *dict.fromkeys(task.card_tags)],
        emoji=emoji,
        colorFrom="indigo",
        colorTo="green",
        pinned=False,
        short_description=short_description,
        suggested_hardware=hardware,
    )
    what, api = _SPACE_KINDS[task.name]
    body = f"""
# {title}

{what.format(model_id=model_id)}

Images are read like everywhere in `fapn_hf`: phone photos upright by their EXIF orientation, 16-bit images scaled
by their range, transparent pixels composited over white, the first frame of an animation (said in the status).
Images above one megapixel are reduced right after reading (the status says to what size); the result is shown at
that size. A format browsers cannot display (TIFF) is previewed as a PNG of the decoded image; the file itself is
what gets segmented. What the page shows always belongs to the image in the input: a new image clears the result, and
a file that cannot be segmented (empty, cut short, not an image) clears it and says why in the status.

The model is `models:` above, or the `FAPN_MODEL` variable when one is set in the Space settings. If it cannot be
loaded, the page says why and what to do, and the Space's log says so with the traceback.

{api}## Run it locally

```bash
pip install -r requirements.txt
python app.py                      # serves {model_id}; FAPN_MODEL=ORG/NAME or --model FOLDER for another
```

Built by `fapn_hf`'s `fapn-build-space` with {", ".join(requirements)}.
"""
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n{body}")


def pick_demo_examples(
    predictor: Any, count: int, candidates: int = EXAMPLE_CANDIDATES, size: tuple[int, int] = EXAMPLE_SIZE
) -> list[tuple[np.ndarray, float, int]]:
    """The `count` demo validation images (of `candidates`, without unlabelled regions) that the model segments
    best: `(image, mIoU against the ground truth, sample index)`, best first."""
    from ..tasks.semantic.demo_data import VALIDATION_START_INDEX, render_sample
    from ..tasks.semantic.metrics import SegmentationMetrics

    scored = []
    num_labels = len(predictor.id2label)
    for index in range(VALIDATION_START_INDEX, VALIDATION_START_INDEX + candidates):
        image, truth = render_sample(index, size=size, ignore_region=False)
        metrics = SegmentationMetrics(num_labels, boundary_widths=())
        metrics.update(predictor.predict(image)[None], truth[None].astype(np.int64))
        scored.append((image, float(metrics.compute()["mean_iou"]), index))
    scored.sort(key=lambda item: -item[1])
    return scored[:count]


def _served_task(source: str) -> tuple[Task, bool]:
    """`(task, per-pixel classes?)` of the model at `source` (a folder, or a Hub id in the local cache: nothing is
    downloaded), from its config. A config that cannot be read gets the semantic page's card, with a warning (the
    app itself serves whatever model it loads)."""
    from transformers import AutoConfig

    from ..families import find_family

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        warnings.warn(
            f"cannot read the config of {source} locally: the Space card describes the semantic segmentation page; "
            "pass model_path (--model_path) with a local copy of a detector to describe its page",
            stacklevel=3,
        )
        return SEMANTIC_SEGMENTATION, True
    family = find_family(config)
    if family is None:
        return SEMANTIC_SEGMENTATION, True
    return family.task_for(config), family.predicts_pixel_classes


def build_space(
    model_id: str,
    output_dir: str | Path,
    *,
    model_path: str | Path | None = None,
    examples: list[str | Path] | None = None,
    num_examples: int = 3,
    title: str | None = None,
    short_description: str | None = None,
    gpu: bool = False,
) -> SpaceFolder:
    """Writes the Space folder serving Hub model `model_id` into `output_dir` (new or empty; nothing is overwritten).

    Args:
        model_id: the model repo the Space serves (ORG/NAME), written to the front matter's `models:`.
        output_dir: the folder to write.
        model_path: a local copy of the model (a saved folder) to read its card from and to choose demo examples
            with; default: `model_id` itself, from the Hub or its cache.
        examples: image files to ship as examples; default: for a model trained on the synthetic demo data, the
            `num_examples` demo images it segments best, else none.
        num_examples: how many demo examples to choose.
        title, short_description: the Space's title and card description (at most 60 characters); default: by
            the model's task ("FaPN semantic segmentation", "FaPN object detection", ...).
        gpu: the Space runs on a GPU: requirements.txt pins the registry's (CUDA) torch, the front matter suggests
            GPU hardware; default: a CPU Space with PyTorch's CPU-only build.

    Raises `ValueError` for an invalid id, a description that is too long or a non-empty `output_dir`,
    `FileNotFoundError` outside a source checkout (no `space_app/app.py`) or for missing example files.
    """
    from PIL import Image

    check_repo_id(model_id)
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"{output_dir} exists and is not an empty folder; choose a new one (nothing was written)")
    if not APP_SOURCE.is_file():
        raise FileNotFoundError(f"the Space's app is missing: {APP_SOURCE} (build from a source checkout of fapn_hf)")
    missing = [str(path) for path in examples or [] if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"example images not found: {', '.join(missing)}")
    requirements = pinned_requirements(gpu=gpu)
    source = str(model_path or model_id)
    task, pixel_classes = _served_task(source)
    title = title or f"FaPN {task.display_name.lower()}"
    if short_description is None:
        short_description = f"FaPN {task.display_name.lower()}: upload an image"
    # Checks the description before writing.
    hardware = GPU_HARDWARE if gpu else CPU_HARDWARE
    card = space_card(model_id, title, short_description, requirements, hardware=hardware, task=task)

    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(APP_SOURCE, output_dir / "app.py")
    card.save(output_dir / "README.md")
    (output_dir / "requirements.txt").write_text(requirements_file(requirements))
    shutil.copytree(PACKAGE_DIR, output_dir / "fapn_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    example_dir = output_dir / "examples"
    example_dir.mkdir()
    written, scores = [], {}
    if examples:
        for i, path in enumerate(examples):
            target = example_dir / f"example_{i}{Path(path).suffix.lower()}"
            shutil.copy2(path, target)  # as it is: the app reads it like any upload (EXIF orientation included)
            written.append(target)
    elif pixel_classes:  # demo examples are chosen by mIoU: for the semantic families' demo models
        card = load_model_card(source)
        if card is not None and is_synthetic_demo(card.data):
            from ..inference.predictor import SegmentationPredictor

            predictor = SegmentationPredictor.from_pretrained(source, device="cpu")
            for rank, (image, score, index) in enumerate(pick_demo_examples(predictor, num_examples)):
                target = example_dir / f"demo_{rank}_sample_{index}.png"
                Image.fromarray(image).save(target)
                written.append(target)
                scores[target.name] = score
    (output_dir / "build.json").write_text(
        json.dumps({"model_id": model_id, "requirements": requirements, "example_miou": scores}, indent=2) + "\n"
    )
    return SpaceFolder(output_dir, model_id, requirements, written, scores)


__all__ = [
    "SpaceFolder",
    "build_space",
    "pick_demo_examples",
    "pinned_requirements",
    "requirements_file",
    "space_card",
]
