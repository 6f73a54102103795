"""Convert the authors' detectron2 checkpoints into Hub-ready FaPN folders whose models give the original outputs.

    fapn-convert --checkpoint model_final.pth --model fapn-r50-pointrend-cityscapes --output_dir fapn-r50-pointrend
    python -m fapn_hf convert --checkpoint model_final.pkl --model fapn-r101-pointrend-cityscapes \
        --output_dir fapn-r101-pointrend

(The command line is `fapn_hf.cli.convert_main`.)

The pieces, each usable on its own:

- `read_checkpoint`: a detectron2 `.pth` through `torch.load(weights_only=True)` (refused files are named, never
  opened with plain pickle unless `trust_pickle`), a detectron2/Caffe2 `.pkl` through an unpickler that builds
  numpy arrays, numbers, strings and containers and nothing else.
- `RenameTable`: one explicit table per model family, original name -> package name.
- `convert_checkpoint`: recognises the checkpoint's architecture, renames, applies the family's transformations,
  fills the model strictly (every original tensor consumed, every model tensor filled, shapes equal) and writes
  the same folder training writes: safetensors, config with `auto_map`, processor, remote code, model card, plus
  `conversion.json`, the record of where the weights come from (the only way reported figures enter a card).

A model family (`ModelFamily`) brings its rename table, its config and processor builders and its
transformations; reading, the strict check and the folder are shared. `SEMANTIC_FAPN` is the detectron2
`SemanticSegmentor` with the FaPN backbone (`FAN`) and a semantic FPN head, optionally refined by PointRend.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..families.fapn.presets import preset_image_processor
from ..hub.cards import CONVERSION_RECORD, file_sha256, weights_digest, write_model_card
from ..labels import label_maps
from ..modeling.configuration_fapn import FaPNConfig
from ..modeling.image_processing_fapn import FaPNImageProcessor
from ..modeling.modeling_fapn import FaPNForSemanticSegmentation


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message says which file and why."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


def _numpy_core() -> Any:
    """numpy's core package: `numpy._core` (numpy 2) or `numpy.core` (numpy 1)."""
    try:
        import numpy._core as core
    except ImportError:  # numpy 1.x
        import numpy.core as core
    return core


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only callables a `.pkl` checkpoint may name: numpy's array and scalar constructors, `dtype`,
    `OrderedDict`, and `_codecs.encode` (protocol-2 pickles store array bytes through it). Released files were
    written with numpy 1.x (`numpy.core...`); numpy 2 writes `numpy._core...`: both names are accepted."""
    import _codecs

    core = _numpy_core()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and scalars, numbers, strings and containers; refuses anything else."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # detectron2/Caffe2 pickles were often written by Python 2
        self.path = path
        self.allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise CheckpointError(
            f"{self.path}: refusing to unpickle {module}.{name}: a .pkl checkpoint may only hold numpy arrays, "
            "numbers, strings and containers (the restricted reader builds nothing else)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.path}: refusing a pickle with persistent references ({pid!r})")


def _reason(error: BaseException) -> str:
    """The telling part of a torch.load failure (its messages run to paragraphs)."""
    message = str(error)
    refused = re.search(r"GLOBAL ([\w.]+)", message)
    if refused:
        return f"it holds {refused.group(1)}, which is neither a tensor nor a plain container"
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", message, flags=re.DOTALL)
    if unpickler:
        return unpickler.group(1)
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return first_line.split(". ")[0]


def _load_pth(path: Path, trust_pickle: bool) -> Any:
    unreadable = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, OverflowError)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refused it: {_reason(error)}. Opening it with full pickle "
                "would run code from the file; if you trust it, re-run with --trust_pickle (or trust_pickle=True)"
            ) from None
        warnings.warn(
            f"{path}: loading with full pickle because trust_pickle is set ({_reason(error)}): this runs code from "
            "the file",
            stacklevel=3,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except unreadable as error:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({_reason(error)})") from None
    except unreadable as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_reason(error)})") from None


def _load_pkl(path: Path) -> Any:
    with path.open("rb") as file:
        try:
            return _NumpyOnlyUnpickler(file, path).load()
        except CheckpointError:
            raise
        except Exception as error:  # truncated or corrupt files fail in many ways inside pickle
            raise CheckpointError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None


@dataclass
class Checkpoint:
    """An original checkpoint: its model tensors by original name, its other top-level entries, its file."""

    path: Path
    tensors: dict[str, torch.Tensor]
    extras: dict[str, Any]
    sha256: str

    @property
    def keys(self) -> list[str]:
        return list(self.tensors)


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Reads a detectron2 checkpoint: `{"model": state_dict, ...}` (or a bare state dict) in a `.pth` file
    (`torch.load(weights_only=True)`) or a `.pkl` file of numpy arrays (restricted unpickler).

    Raises `CheckpointError` naming the file for a missing, unreadable or refused file, or one without a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    is_torch_zip = zipfile.is_zipfile(path)
    if path.suffix == ".pkl" and not is_torch_zip:
        content = _load_pkl(path)
    elif path.suffix in (".pth", ".pt", ".pkl"):
        content = _load_pth(path, trust_pickle)
    else:
        raise CheckpointError(f"{path}: expected a detectron2 .pth or .pkl checkpoint, got a {path.suffix!r} file")
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: expected a dict holding a 'model' state dict, got {type(content).__name__}")
    if isinstance(content.get("model"), Mapping):
        state, extras = content["model"], {k: v for k, v in content.items() if k != "model"}
    elif content and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in content.values()):
        state, extras = content, {}
    else:
        raise CheckpointError(
            f"{path}: no 'model' state dict; its top-level entries are {sorted(map(str, content))[:10]}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: model entry {name!r} is a {type(value).__name__}, not an array")
        tensors[str(name)] = value
    return Checkpoint(path, tensors, extras, file_sha256(path))


# ---------------------------------------------------------------------------------------------------------------------
# Recognising what a checkpoint holds
# ---------------------------------------------------------------------------------------------------------------------

# (prefixes any of which marks the architecture, description). The first match wins.
_ARCHITECTURE_SIGNATURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("roi_heads.", "proposal_generator."), "a detectron2 R-CNN model (Faster/Mask R-CNN or Panoptic FPN)"),
    (("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.transformer"), "a MaskFormer model"),
    (("head.cls_subnet.", "head.bbox_subnet."), "a detectron2 RetinaNet detector"),
    (("backbone.fpn_lateral",), "a model with detectron2's plain FPN neck (no FaPN modules)"),
    (("backbone.fan_align",), "a FaPN semantic segmentation model"),
    (("stem.conv1.", "res2.0."), "a backbone alone (an ImageNet-pretrained detectron2 ResNet)"),
    (("conv1.weight", "layer1.0."), "a torchvision-style ResNet classifier"),
)


def describe_checkpoint(keys: Iterable[str]) -> str:
    """What a state dict looks like, e.g. "a detectron2 R-CNN model (roi_heads.*, proposal_generator.*)"."""
    keys = list(keys)
    for prefixes, description in _ARCHITECTURE_SIGNATURES:
        found = [p for p in prefixes if any(k.startswith(p) for k in keys)]
        if found:
            return f"{description} ({', '.join(p + '*' for p in found)})"
    if any(re.match(r"res\d_\d+_branch", k) or k.endswith("_w") for k in keys):
        return "a Caffe2/Detectron checkpoint with underscore names (e.g. res2_0_branch2a_w)"
    return f"an unknown layout (first keys: {', '.join(keys[:5])})"


# ---------------------------------------------------------------------------------------------------------------------
# Rename tables
# ---------------------------------------------------------------------------------------------------------------------

# What a `{name}` placeholder matches in an original name. Integer fields may be shifted in the package name:
# `{stage-2}`, `{level+1}`, `{layer/2}` (exact division only).
PLACEHOLDER_PATTERNS: dict[str, str] = {
    "stage": r"\d+",
    "block": r"\d+",
    "conv": r"\d+",
    "level": r"\d+",
    "layer": r"\d+",
    "param": r"weight|bias",
    "stat": r"weight|bias|running_mean|running_var",
    "head": r"sem_seg_head|sem_seg_head\.coarse_sem_seg_head",
    "fam_level": r"[1-3]",  # MaskFormer's BasePixelFANDecoder: adapter_k / align_k / layer_k below the top layer_4
}
_ORIGINAL_FIELD = re.compile(r"\{(\w+)\}")
_CONVERTED_FIELD = re.compile(r"\{(\w+)(?:([-+/])(\d+))?\}")


@dataclass(frozen=True)
class RenameRule:
    """`original` -> `converted`, e.g. `backbone.bottom_up.res{stage}.{block}.conv{conv}.weight` ->
    `fapn.backbone.encoder.stages.{stage-2}.layers.{block}.layer.{conv-1}.convolution.weight`."""

    original: str
    converted: str
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts, last = [], 0
        for match in _ORIGINAL_FIELD.finditer(self.original):
            parts.append(re.escape(self.original[last : match.start()]))
            parts.append(f"(?P<{match.group(1)}>{PLACEHOLDER_PATTERNS[match.group(1)]})")
            last = match.end()
        parts.append(re.escape(self.original[last:]))
        object.__setattr__(self, "pattern", re.compile("".join(parts)))

    def apply(self, name: str) -> str | None:
        """The package name of `name`, or None when the rule does not cover it."""
        match = self.pattern.fullmatch(name)
        if match is None:
            return None
        invalid = False

        def substitute(field_match: re.Match) -> str:
            nonlocal invalid
            value, operator, operand = match.group(field_match.group(1)), field_match.group(2), field_match.group(3)
            if operator is None:
                return value
            number, operand = int(value), int(operand)
            if operator == "/":
                invalid |= number % operand != 0
                number //= operand
            else:
                number += operand if operator == "+" else -operand
            invalid |= number < 0
            return str(number)

        converted = _CONVERTED_FIELD.sub(substitute, self.converted)
        return None if invalid else converted


@dataclass(frozen=True)
class RenameTable:
    """One model family's explicit renaming, original name -> package name."""

    rules: tuple[RenameRule, ...]

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, str]]) -> RenameTable:
        return cls(tuple(RenameRule(original, converted) for original, converted in pairs))

    def __len__(self) -> int:
        return len(self.rules)

    def rename(self, names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """Maps every name a rule covers to its package name; returns the mapping and the names no rule covers."""
        mapping, unmatched = {}, []
        for name in names:
            targets = [(rule, target) for rule in self.rules if (target := rule.apply(name)) is not None]
            if len(targets) > 1:
                overlapping = ", ".join(rule.original for rule, _ in targets)
                raise RuntimeError(f"rename table bug: {name!r} matches several rules: {overlapping}")
            if targets:
                mapping[name] = targets[0][1]
            else:
                unmatched.append(name)
        return mapping, unmatched


# ---------------------------------------------------------------------------------------------------------------------
# Families and models
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportedResult:
    """A figure the authors report for a released checkpoint (quoted on the card as reported, not measured)."""

    dataset: str
    split: str
    metric: str
    value: float
    source: str
    source_url: str


@dataclass(frozen=True)
class OriginalModel:
    """A checkpoint layout users name on the command line, with the original test-time settings.

    `evaluate_arguments`: what `fapn-evaluate` needs besides `--model` to measure it on a local copy of the
    data. `release_url`, `reported`: the authors' download page and figures when they released weights of it.
    """

    name: str
    family: ModelFamily
    description: str
    depth: int
    point_rend: bool
    labels: str
    original_config: str
    test_shortest_edge: int
    test_longest_edge: int
    evaluate_arguments: str
    release_url: str | None = None
    reported: tuple[ReportedResult, ...] = ()


@dataclass(frozen=True)
class ModelFamily:
    """What a family of original models brings to the shared conversion: its rename table and how to build the
    package model, its processor and the tensors renaming alone cannot produce.

    Args:
        name: e.g. "detectron2 SemanticSegmentor + FaPN".
        renames: the explicit rename table.
        recognise: whether a state dict's names belong to this family.
        build_config: the package config of an `OriginalModel`.
        build_model: the package model of a config (randomly initialised; the conversion fills it).
        transform: `(converted tensors, checkpoint, model)` -> converted tensors, e.g. BGR -> RGB.
        processor_tensors: original names consumed by `build_processor` rather than renamed (e.g. `pixel_mean`).
        build_processor: `(original model, checkpoint)` -> the image processor reproducing the original input.
        check: `(original model, checkpoint)` -> None, raising `CheckpointError` when the checkpoint is another
            variant of the family than the one named (a clearer message than the strict check's key lists).
    """

    name: str
    renames: RenameTable
    recognise: Callable[[Sequence[str]], bool]
    build_config: Callable[[OriginalModel], Any]
    build_model: Callable[[Any], torch.nn.Module]
    transform: Callable[[dict[str, torch.Tensor], Checkpoint, torch.nn.Module], dict[str, torch.Tensor]]
    processor_tensors: tuple[str, ...]
    build_processor: Callable[[OriginalModel, Checkpoint], Any]
    check: Callable[[OriginalModel, Checkpoint], None]


# --- detectron2 SemanticSegmentor with the FaPN backbone (SPEC 2.2-2.6, 3) ------------------------------------------

_BOTTOM_UP, _TRUNK = "backbone.bottom_up", "fapn.backbone.encoder.stages.{stage-2}.layers.{block}"
_STEM = "fapn.backbone.embedder.embedder"
_ALIGN, _FSM, _FAM = "backbone.fan_align{level}", "fapn.neck.lateral_convs.{level-2}", "fapn.neck.alignments.{level-2}"
SEMANTIC_FAPN_RENAMES = RenameTable.of(
    [
        # MSRA ResNet (stride in the 1x1 conv, FrozenBN) -> transformers ResNetBackbone(downsample_in_bottleneck).
        (f"{_BOTTOM_UP}.stem.conv1.weight", f"{_STEM}.convolution.weight"),
        (f"{_BOTTOM_UP}.stem.conv1.norm.{{stat}}", f"{_STEM}.normalization.{{stat}}"),
        (f"{_BOTTOM_UP}.res{{stage}}.{{block}}.conv{{conv}}.weight", f"{_TRUNK}.layer.{{conv-1}}.convolution.weight"),
        (
            f"{_BOTTOM_UP}.res{{stage}}.{{block}}.conv{{conv}}.norm.{{stat}}",
            f"{_TRUNK}.layer.{{conv-1}}.normalization.{{stat}}",
        ),
        (f"{_BOTTOM_UP}.res{{stage}}.{{block}}.shortcut.weight", f"{_TRUNK}.shortcut.convolution.weight"),
        (f"{_BOTTOM_UP}.res{{stage}}.{{block}}.shortcut.norm.{{stat}}", f"{_TRUNK}.shortcut.normalization.{{stat}}"),
        # The FaPN neck (FAN): fan_align5 is the top 1x1 lateral conv; fan_align2..4 are FSM + FAM per level.
        ("backbone.fan_align5.{param}", "fapn.neck.top_lateral_conv.conv.{param}"),
        (f"{_ALIGN}.lateral_conv.conv_atten.weight", f"{_FSM}.attention.conv.weight"),
        (f"{_ALIGN}.lateral_conv.conv.weight", f"{_FSM}.projection.conv.weight"),
        (f"{_ALIGN}.offset.weight", f"{_FAM}.offset_conv.conv.weight"),
        (f"{_ALIGN}.dcpack_L2.{{param}}", f"{_FAM}.deform_conv.{{param}}"),
        (f"{_ALIGN}.dcpack_L2.conv_offset_mask.{{param}}", f"{_FAM}.deform_conv.offset_mask_conv.{{param}}"),
        ("backbone.fpn_output{level}.{param}", "fapn.neck.output_convs.{level-2}.conv.{param}"),
        # SemSegFPNHead (under PointRend: coarse_sem_seg_head): p{level}.{2k} is conv k, odd indices are upsamples.
        ("{head}.p{level}.{layer}.weight", "decode_head.scale_heads.{level-2}.{layer/2}.conv.weight"),
        ("{head}.p{level}.{layer}.norm.{param}", "decode_head.scale_heads.{level-2}.{layer/2}.norm.{param}"),
        ("{head}.predictor.{param}", "decode_head.predictor.conv.{param}"),
        # PointRend's StandardPointHead: fc1..fcN, predictor.
        ("sem_seg_head.point_head.fc{layer}.{param}", "point_head.layers.{layer-1}.{param}"),
        ("sem_seg_head.point_head.predictor.{param}", "point_head.predictor.{param}"),
    ]
)

RESNET_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
# detectron2's default normalisation (BGR order, 0..255 input), used when a checkpoint does not store its own.
DETECTRON2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
DETECTRON2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)
STEM_CONV = f"{_STEM}.convolution.weight"


def _semantic_fapn_config(model: OriginalModel) -> FaPNConfig:
    """The package config of the authors' model: the MSRA trunk as a transformers ResNet, FaPN without neck norm,
    the semantic FPN head, PointRend as in their Cityscapes config, the backbone frozen as they trained it."""
    from transformers import ResNetConfig

    id2label, label2id = label_maps(model.labels)
    trunk = ResNetConfig(
        layer_type="bottleneck",
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=RESNET_DEPTHS[model.depth],
        downsample_in_bottleneck=True,  # STRIDE_IN_1X1: the MSRA layout
        hidden_act="relu",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return FaPNConfig(
        backbone_config=trunk,
        use_fam=True,
        use_fsm=True,
        neck_channels=256,
        deformable_groups=8,
        neck_norm="",
        head_channels=128,
        size_divisibility=32,
        semantic_loss_ignore_index=255,
        use_point_rend=model.point_rend,
        point_head_channels=256,
        point_head_num_layers=3,
        point_head_coarse_pred_each_layer=False,
        point_rend_train_num_points=2048,
        point_rend_oversample_ratio=3.0,
        point_rend_importance_sample_ratio=0.75,
        point_rend_subdivision_steps=2,
        point_rend_subdivision_num_points=8192,
        # RESNETS.NORM FrozenBN; BACKBONE.FREEZE_AT 0 in the authors' Base-PointRend-Semantic-FAN.yaml.
        freeze_backbone_norm=True,
        freeze_backbone_stages=0,
        id2label=id2label,
        label2id=label2id,
    )


def _semantic_fapn_transform(
    tensors: dict[str, torch.Tensor], checkpoint: Checkpoint, model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """BGR -> RGB by reversing the stem conv's input channels; a zero `num_batches_tracked` for every FrozenBN
    turned BatchNorm (FrozenBN has none; in eval it is unused)."""
    tensors = dict(tensors)
    if STEM_CONV in tensors:
        tensors[STEM_CONV] = tensors[STEM_CONV].flip(1).contiguous()
    for name in [n for n in tensors if n.endswith(".running_mean")]:
        tensors[name.removesuffix("running_mean") + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return tensors


def _bgr_statistic(checkpoint: Checkpoint, name: str, default: Sequence[float]) -> list[float]:
    """`pixel_mean`/`pixel_std` from the checkpoint (older detectron2 saves them) or detectron2's default."""
    if name not in checkpoint.tensors:
        return list(default)
    values = checkpoint.tensors[name].reshape(-1)
    if values.numel() != 3:
        raise CheckpointError(f"{checkpoint.path}: {name} has {values.numel()} values, expected 3 (B, G, R)")
    # The shortest decimal of each float32 (e.g. 123.675), the number the config was written with.
    return [float(np.format_float_positional(np.float32(v), unique=True)) for v in values.tolist()]


def _semantic_fapn_processor(model: OriginalModel, checkpoint: Checkpoint) -> FaPNImageProcessor:
    """RGB in, `(x / 255 - mean) / std` with mean = PIXEL_MEAN[::-1] / 255 and std = PIXEL_STD[::-1] / 255: exactly
    detectron2's `(x_bgr - PIXEL_MEAN) / PIXEL_STD` on the 0..255 image, channels reordered like the stem conv.
    Resize: the shorter side to the original MIN_SIZE_TEST, the longer capped at MAX_SIZE_TEST."""
    mean = _bgr_statistic(checkpoint, "pixel_mean", DETECTRON2_PIXEL_MEAN_BGR)[::-1]
    std = _bgr_statistic(checkpoint, "pixel_std", DETECTRON2_PIXEL_STD_BGR)[::-1]
    if min(std) <= 0:
        raise CheckpointError(f"{checkpoint.path}: pixel_std must be positive, got {std[::-1]} (B, G, R)")
    return preset_image_processor(
        model.labels,
        image_mean=[value / 255 for value in mean],
        image_std=[value / 255 for value in std],
        do_resize=True,
        size={"shortest_edge": model.test_shortest_edge, "longest_edge": model.test_longest_edge},
    )


def _recognise_semantic_fapn(keys: Sequence[str]) -> bool:
    return (
        any(k.startswith("backbone.bottom_up.") for k in keys)
        and any(k.startswith("backbone.fan_align") for k in keys)
        and any(k.startswith("sem_seg_head.") for k in keys)
        and not any(k.startswith(("roi_heads.", "proposal_generator.", "sem_seg_head.pixel_decoder.")) for k in keys)
    )


def _check_semantic_fapn(model: OriginalModel, checkpoint: Checkpoint) -> None:
    keys = checkpoint.keys
    has_point_head = any(k.startswith("sem_seg_head.point_head.") for k in keys)
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", k))}
    depth = next((d for d, depths in RESNET_DEPTHS.items() if depths[2] == len(blocks)), None)
    found = f"R{depth}" if depth else f"a ResNet with {len(blocks)} res4 blocks"
    found += " with PointRend" if has_point_head else " without PointRend (plain semantic FPN head)"
    if depth != model.depth or has_point_head != model.point_rend:
        matching = [m.name for m in ORIGINAL_MODELS.values() if (m.depth, m.point_rend) == (depth, has_point_head)]
        hint = f"; use --model {matching[0]}" if matching else ""
        raise CheckpointError(
            f"{checkpoint.path} is a FaPN semantic model on {found}, but {model.name} is R{model.depth} "
            f"{'with' if model.point_rend else 'without'} PointRend{hint}"
        )


SEMANTIC_FAPN = ModelFamily(
    name="detectron2 SemanticSegmentor with the FaPN backbone (FAN) and a semantic FPN head",
    renames=SEMANTIC_FAPN_RENAMES,
    recognise=_recognise_semantic_fapn,
    build_config=_semantic_fapn_config,
    build_model=FaPNForSemanticSegmentation,
    transform=_semantic_fapn_transform,
    processor_tensors=("pixel_mean", "pixel_std"),
    build_processor=_semantic_fapn_processor,
    check=_check_semantic_fapn,
)

_AUTHORS_REPO = "https://github.com/EMI-Group/FaPN"
_POINTREND_CONFIGS = "projects/PointRend/configs/SemanticSegmentation"


# Cityscapes is not on the Hub: a save_to_disk DatasetDict of leftImg8bit images and gtFine_labelIds maps.
_CITYSCAPES_EVALUATION = "--dataset /data/cityscapes --split validation --label_mapping cityscapes"


def _cityscapes_miou(value: float) -> ReportedResult:
    return ReportedResult("cityscapes", "val", "mean_iou", value, "FaPN authors' model table", _AUTHORS_REPO)


ORIGINAL_MODELS: dict[str, OriginalModel] = {
    model.name: model
    for model in (
        OriginalModel(
            name="fapn-r50-pointrend-cityscapes",
            family=SEMANTIC_FAPN,
            description="PointRend + FaPN, ResNet-50 (MSRA), Cityscapes",
            depth=50,
            point_rend=True,
            labels="cityscapes",
            original_config=f"{_POINTREND_CONFIGS}/pointrend_semantic_R_50_FAN_1x_cityscapes.yaml",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
            release_url="https://drive.google.com/file/d/1R6af03eqnUufmYl7cf-eixbI_En8WN-8/view",
            reported=(_cityscapes_miou(80.0),),
        ),
        OriginalModel(
            name="fapn-r101-pointrend-cityscapes",
            family=SEMANTIC_FAPN,
            description="PointRend + FaPN, ResNet-101 (MSRA), Cityscapes",
            depth=101,
            point_rend=True,
            labels="cityscapes",
            original_config=f"{_POINTREND_CONFIGS}/pointrend_semantic_R_101_FAN_1x_cityscapes.yaml",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
            release_url="https://drive.google.com/file/d/1JSg9hweCIYZOhSceZAeF6CcbqIAiLKfr/view",
            reported=(_cityscapes_miou(80.1),),
        ),
        # Semantic FPN + FaPN without PointRend (SEM_SEG_HEAD.NAME: SemSegFPNHead): no released weights; for
        # checkpoints trained with the authors' code.
        OriginalModel(
            name="fapn-r50-cityscapes",
            family=SEMANTIC_FAPN,
            description="semantic FPN + FaPN, ResNet-50 (MSRA), Cityscapes",
            depth=50,
            point_rend=False,
            labels="cityscapes",
            original_config="SemanticSegmentor + build_resnet_fan_backbone + SemSegFPNHead, R-50",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
        ),
        OriginalModel(
            name="fapn-r101-cityscapes",
            family=SEMANTIC_FAPN,
            description="semantic FPN + FaPN, ResNet-101 (MSRA), Cityscapes",
            depth=101,
            point_rend=False,
            labels="cityscapes",
            original_config="SemanticSegmentor + build_resnet_fan_backbone + SemSegFPNHead, R-101",
            test_shortest_edge=1024,
            test_longest_edge=2048,
            evaluate_arguments=_CITYSCAPES_EVALUATION,
        ),
    )
}


# ---------------------------------------------------------------------------------------------------------------------
# Converting
# ---------------------------------------------------------------------------------------------------------------------


def _listing(items: Sequence[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


def convert_state_dict(
    family: ModelFamily, checkpoint: Checkpoint, model: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict made from the checkpoint: renamed, transformed, cast to the model's dtypes, and
    strictly checked. Returns it with the original -> package name mapping.

    Raises `CheckpointError` listing every original tensor left over, every model tensor left empty and every
    shape that differs.
    """
    weight_names = [k for k in checkpoint.keys if k not in family.processor_tensors]
    mapping, unmatched = family.renames.rename(weight_names)
    converted = family.transform({mapping[k]: checkpoint.tensors[k] for k in mapping}, checkpoint, model)
    expected = model.state_dict()
    original_of = {target: source for source, target in mapping.items()}
    unexpected = [f"{name} (no rename rule)" for name in unmatched]
    unexpected += [f"{original_of.get(n, n)} -> {n} (not in the model)" for n in converted if n not in expected]
    missing = [name for name in expected if name not in converted]
    misshaped = [
        f"{original_of.get(n, n)} -> {n}: checkpoint {tuple(converted[n].shape)}, model {tuple(expected[n].shape)}"
        for n in converted
        if n in expected and converted[n].shape != expected[n].shape
    ]
    problems = [
        (f"{len(unexpected)} original tensors not consumed", unexpected),
        (f"{len(missing)} model tensors not filled", missing),
        (f"{len(misshaped)} tensors with different shapes", misshaped),
    ]
    if any(items for _, items in problems):
        report = "\n".join(f"  {title}:\n{_listing(items)}" for title, items in problems if items)
        raise CheckpointError(f"{checkpoint.path} does not fit {family.name}:\n{report}")
    state = {name: converted[name].to(dtype=expected[name].dtype) for name in expected}
    return state, mapping


@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote, and the figures of the conversion."""

    output_dir: Path
    model_name: str
    num_rename_rules: int
    num_tensors: int
    checkpoint_sha256: str
    record: dict[str, Any]


def conversion_record(
    model: OriginalModel, checkpoint: Checkpoint, output_dir: Path, num_tensors: int, from_release: bool
) -> dict[str, Any]:
    """The provenance record written next to the weights (`conversion.json`). It names the weights it describes by
    their sha256, so a folder whose weights were re-trained or re-saved no longer matches it."""
    from .._version import __version__

    return {
        "model": model.name,
        "description": model.description,
        "dataset": model.labels,
        "converted_from_release": from_release,
        "source": {
            "file": checkpoint.path.name,
            "sha256": checkpoint.sha256,
            "size_bytes": checkpoint.path.stat().st_size,
            "release_url": model.release_url if from_release else None,
            "original_config": model.original_config,
        },
        "reported": [vars(result) for result in model.reported] if from_release else [],
        "evaluate_arguments": model.evaluate_arguments,
        "converter": {
            "package": f"fapn_hf {__version__}",
            "family": model.family.name,
            "rename_rules": len(model.family.renames),
            "tensors": num_tensors,
        },
        "weights_sha256": weights_digest(output_dir),
    }


def convert_checkpoint(
    checkpoint_path: str | Path,
    model_name: str,
    output_dir: str | Path,
    trust_pickle: bool = False,
    from_release: bool = True,
) -> ConversionResult:
    """Converts an original checkpoint into a Hub-ready folder (see the module docstring).

    Args:
        checkpoint_path: the detectron2 `.pth` or `.pkl` file.
        model_name: one of `ORIGINAL_MODELS`, e.g. `"fapn-r50-pointrend-cityscapes"`.
        output_dir: the folder to write (created; files of the same names are replaced).
        trust_pickle: allow full pickle for a `.pth` that `weights_only` refuses (runs code from the file).
        from_release: the file is the authors' released checkpoint: the card quotes their reported figures. Pass
            False for weights trained by anyone else with the original code.
    """
    if model_name not in ORIGINAL_MODELS:
        raise CheckpointError(f"unknown model {model_name!r}; available: {', '.join(ORIGINAL_MODELS)}")
    model_spec = ORIGINAL_MODELS[model_name]
    family = model_spec.family
    checkpoint = read_checkpoint(checkpoint_path, trust_pickle=trust_pickle)
    if not family.recognise(checkpoint.keys):
        heuristics = (
            " It asks for detectron2's name matching heuristics."
            if checkpoint.extras.get("matching_heuristics")
            else ""
        )
        raise CheckpointError(
            f"{checkpoint.path} looks like {describe_checkpoint(checkpoint.keys)}, not like {family.name}; "
            f"{model_name} cannot be made from it.{heuristics}"
        )
    family.check(model_spec, checkpoint)

    config = family.build_config(model_spec)
    model = family.build_model(config).eval()
    state, _ = convert_state_dict(family, checkpoint, model)
    model.load_state_dict(state, strict=True)
    processor = family.build_processor(model_spec, checkpoint)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    _check_saved_folder(output_dir, state, type(model))
    record = conversion_record(model_spec, checkpoint, output_dir, len(state), from_release)
    (output_dir / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(output_dir, config, model_name=model_spec.name)
    return ConversionResult(output_dir, model_name, len(family.renames), len(state), checkpoint.sha256, record)


def _check_saved_folder(folder: Path, state: Mapping[str, torch.Tensor], model_class: type) -> None:
    """Reloads the written folder with `model_class.from_pretrained` and checks that every tensor came back bit for
    bit (through transformers' loading: tied tensors are stored once and some models rename keys on saving)."""
    saved = model_class.from_pretrained(folder).state_dict()
    differing = [name for name, tensor in state.items() if name not in saved or not torch.equal(saved[name], tensor)]
    if differing:
        raise RuntimeError(f"the weights written to {folder} differ from the converted ones: {differing[:10]}")


__all__ = [
    "ORIGINAL_MODELS",
    "SEMANTIC_FAPN",
    "SEMANTIC_FAPN_RENAMES",
    "Checkpoint",
    "CheckpointError",
    "ConversionResult",
    "ModelFamily",
    "OriginalModel",
    "RenameRule",
    "RenameTable",
    "ReportedResult",
    "convert_checkpoint",
    "convert_state_dict",
    "describe_checkpoint",
    "read_checkpoint",
]

# MaskFormer + FaPN lives in its own module, built on the pieces above; importing it adds its models to
# ORIGINAL_MODELS (and so to the command line). Last, so that the module is complete whichever is imported first.
from ..families.maskformer_fapn import convert  # noqa: E402, F401
