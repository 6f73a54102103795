"""ONNX export of FaPN and MaskFormer + FaPN models and an ONNX Runtime model that the predictor runs in their place.

    fapn-export-onnx outputs/demo                 # writes outputs/demo/model.onnx, verified by onnxruntime
    python -m fapn_hf export-onnx outputs/demo --opset 19    # the same command (fapn_hf.cli.export_onnx_main)

- `export_onnx(model, folder_or_file)`: the model's outputs (`onnx_output_names`: a FaPN's `logits`, MaskFormer +
  FaPN's `class_queries_logits` and `masks_queries_logits`) as an ONNX graph (opset 19 by default, the first with
  the standard `DeformConv` that torchvision's kernel exports to; the pure-PyTorch kernel exports as one
  `GridSample` of the offset positions, the mask's `Mul` and one `MatMul` per deformable convolution, which
  onnxruntime runs faster than eager PyTorch runs the model), with a dynamic batch, height and width, then checked
  by onnxruntime against PyTorch at two input sizes. In a model folder the file is `model.onnx`, next to
  `model.safetensors`, and ships with the folder to the Hub (`fapn-push --onnx` exports it on the way when the
  folder has none).
- `OnnxRuntimeModel`: runs that file like the PyTorch model (`model(pixel_values=...)` gives the same output
  class), so `SegmentationPredictor(..., backend="onnxruntime")` keeps the one pre- and post-processing path, the
  image processor's. It pads inputs with zeros to a multiple of `size_divisibility`, exactly what the PyTorch model
  does inside `forward`, and crops a FaPN's logits back (MaskFormer's masks stay at the padded size, with the
  `pixel_mask` that tells the post-processing what to crop, as the PyTorch model returns them); the graph itself
  takes sides that are multiples of it.

onnxruntime is an optional dependency: `pip install fapn_hf[onnx]`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..families import ExportSpec, family_of
from ..modeling.fapn_layers import pad_to_multiple

ONNX_FILE_NAME = "model.onnx"
# The first opset with ONNX's DeformConv (what torchvision's kernel exports to); onnxruntime runs it.
DEFAULT_OPSET = 19
INPUT_NAME = "pixel_values"
# Largest side (in multiples of size_divisibility) the exported graph accepts: 256 * 32 = 8192 pixels.
MAX_SIDE_MULTIPLE = 256


class OnnxVerificationError(ValueError):
    """The exported graph's logits differ from PyTorch's by more than the tolerance."""


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "the ONNX Runtime backend needs onnxruntime: pip install 'fapn_hf[onnx]' (or onnxruntime-gpu)"
        ) from error
    return onnxruntime


def onnx_file(folder_or_file: str | Path) -> Path:
    """`model.onnx` in a model folder, or the given `.onnx` path itself."""
    path = Path(folder_or_file)
    return path if path.suffix == ".onnx" else path / ONNX_FILE_NAME


def export_spec(config: Any) -> ExportSpec:
    """The family's ONNX outputs (`Family.export`); `ValueError` saying why for a family that cannot be exported."""
    family = family_of(config)
    if family.export is None:
        if not family.predicts_pixel_classes:
            # The detectors: RPN top-k, NMS and per-image score filtering make every output's size data-dependent.
            raise ValueError(
                f"{family.display_name} models cannot be exported to ONNX: region proposals, non-maximum suppression "
                "and score filtering give a variable number of detections per image, which this exporter does not "
                "trace; run the PyTorch model instead (`fapn-predict --model FOLDER`, `DetectionPredictor`, or "
                "transformers' `pipeline('object-detection' / 'image-segmentation', model=FOLDER)`)"
            )
        raise ValueError(f"{family.display_name} models cannot be exported to ONNX")
    return family.export


def onnx_output_names(config: Any) -> tuple[str, ...]:
    """The graph's outputs, fields of the model's output class (the family's `ExportSpec`): a FaPN's `logits`,
    MaskFormer + FaPN's class and mask logits."""
    return export_spec(config).output_names


class _OutputTensors(nn.Module):
    """The model as a function of `pixel_values` alone, returning the tensors `onnx_output_names` names."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = onnx_output_names(model.config)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values=pixel_values, return_dict=True)
        return tuple(getattr(outputs, name) for name in self.names)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> Path:
    """Exports a FaPN semantic segmentation model's logits, or a MaskFormer + FaPN model's class and mask logits, to
    ONNX and checks the file with onnxruntime.

    Args:
        model: a [`FaPNForSemanticSegmentation`] or [`MaskFormerFaPNForInstanceSegmentation`] (exported in eval mode;
            its mode is restored afterwards).
        path: a model folder (the file becomes `model.onnx` there) or a file path ending in `.onnx`.
        opset: ONNX opset, at least 19 when the model uses torchvision's deformable convolution.
        verify: run the file in onnxruntime at two input sizes and compare with PyTorch.
        atol, rtol: the verification tolerance, `|onnx - torch| <= atol + rtol * |torch|` elementwise, per output.

    The graph's input is `pixel_values` `(N, 3, H, W)` float32 with dynamic N and H, W multiples of the model's
    `size_divisibility` (up to 8192 pixels); its outputs `logits` `(N, num_labels, H, W)`, or
    `class_queries_logits` `(N, Q, num_labels + 1)` and `masks_queries_logits` `(N, Q, H / 4, W / 4)`.

    Returns:
        The path of the written file.

    Raises:
        OnnxVerificationError: when the verification finds a larger difference (the file is kept for inspection).
    """
    config = model.config
    divisor = config.size_divisibility
    path = onnx_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    num_channels = getattr(config.backbone_config, "num_channels", 3)
    # Batch 2 and sides of 2 and 3 multiples: export specialises sizes 0 and 1, and these stay symbolic.
    example = torch.randn(2, num_channels, 2 * divisor, 3 * divisor, device=device)
    dynamic_shapes = {
        INPUT_NAME: {
            0: torch.export.Dim("batch", min=1, max=1024),
            2: torch.export.Dim("height_blocks", min=1, max=MAX_SIDE_MULTIPLE) * divisor,
            3: torch.export.Dim("width_blocks", min=1, max=MAX_SIDE_MULTIPLE) * divisor,
        }
    }
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on decompositions and deprecated arguments
            torch.onnx.export(
                _OutputTensors(model),
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(onnx_output_names(config)),
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
        if verify:
            # Sides that are multiples of the divisor: PointRend refines the most uncertain cells, and the equal
            # uncertainty of a zero-padded border would let onnxruntime's TopK pick other (equally valid) cells.
            sizes = [(2 * divisor, 3 * divisor), (3 * divisor, 2 * divisor)]
            verify_onnx(model, path, sizes, atol=atol, rtol=rtol)
    finally:
        model.train(was_training)
    return path


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]],
    atol: float = 1e-3,
    rtol: float = 1e-3,
    seed: int = 0,
) -> None:
    """Runs the ONNX file at each `(height, width)` of `sizes` on a random image and raises `OnnxVerificationError`
    unless each of its outputs matches `model`'s within `atol + rtol * |output|`."""
    onnx_model = OnnxRuntimeModel(path, model.config)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    num_channels = getattr(model.config.backbone_config, "num_channels", 3)
    for height, width in sizes:
        pixel_values = torch.randn(1, num_channels, height, width, generator=generator)
        expected_outputs = model(pixel_values=pixel_values.to(device))
        actual_outputs = onnx_model(pixel_values=pixel_values)
        for name in onnx_output_names(model.config):
            expected = getattr(expected_outputs, name).float().cpu()
            actual = getattr(actual_outputs, name)
            excess = (actual - expected).abs() - (atol + rtol * expected.abs())
            if excess.max() > 0:
                raise OnnxVerificationError(
                    f"{path}: onnxruntime's {name} differ from PyTorch's by up to "
                    f"{(actual - expected).abs().max():.3g} at input {height}x{width} (tolerance {atol:g} + "
                    f"{rtol:g} * |{name}|)"
                )


class OnnxRuntimeModel:
    """An exported FaPN or MaskFormer + FaPN model run by onnxruntime, called like the PyTorch model.

    `model(pixel_values=...)` takes `(N, 3, H, W)` float tensors of any size, zero-padded here to multiples of
    `config.size_divisibility` as the PyTorch model does, and returns float32 CPU tensors in the PyTorch model's
    output class: a [`FaPNSemanticSegmenterOutput`] whose `logits` `(N, num_labels, H, W)` are cropped back to the
    input, or a [`MaskFormerFaPNForSegmentationOutput`] with `class_queries_logits`, `masks_queries_logits` of the
    padded input and `pixel_mask` `(N, H, W)` ones (what the post-processing crops to).

    Args:
        path: a model folder holding `model.onnx`, or the `.onnx` file.
        config: the model's config (`id2label`, `size_divisibility`); read from the folder when not given.
        providers: onnxruntime execution providers in order of preference (default: every available one, so a
            CUDA provider comes first where onnxruntime-gpu is installed).
        num_threads: onnxruntime's intra-op threads (default: onnxruntime's choice, one per physical core).
    """

    device = torch.device("cpu")  # where inputs are read from and logits returned

    def __init__(
        self,
        path: str | Path,
        config: Any | None = None,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        onnxruntime = _import_onnxruntime()
        self.path = onnx_file(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no ONNX model at {self.path}; export one with fapn_hf.export.onnx.export_onnx(model, folder) or "
                f"`fapn-export-onnx {self.path.parent}`"
            )
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.path.parent)
        self.config = config
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(
            str(self.path), options, providers=list(providers or onnxruntime.get_available_providers())
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs: Any) -> OnnxRuntimeModel:
        """The `model.onnx` of a saved model folder, with the folder's config."""
        return cls(folder, **kwargs)

    def __call__(self, pixel_values: torch.Tensor, **_: Any) -> Any:
        if pixel_values.dim() != 4 or not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be float (batch, channels, height, width), got {pixel_values.dtype} "
                f"{tuple(pixel_values.shape)}"
            )
        padded = pad_to_multiple(pixel_values.detach().float().cpu(), self.config.size_divisibility)
        spec = export_spec(self.config)
        arrays = self.session.run(list(spec.output_names), {INPUT_NAME: padded.contiguous().numpy()})
        outputs = {name: torch.from_numpy(array) for name, array in zip(spec.output_names, arrays)}
        return spec.wrap(outputs, pixel_values, self.config)

    # The parts of the nn.Module interface that the predictor uses.
    def eval(self) -> OnnxRuntimeModel:
        return self

    def to(self, device: str | torch.device) -> OnnxRuntimeModel:
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"OnnxRuntimeModel takes and returns CPU tensors (onnxruntime picks its own provider), got device "
                f"{device}; use device='cpu'"
            )
        return self

    def __repr__(self) -> str:
        return f"OnnxRuntimeModel({self.path}, providers={self.session.get_providers()})"


__all__ = [
    "DEFAULT_OPSET",
    "ONNX_FILE_NAME",
    "OnnxRuntimeModel",
    "OnnxVerificationError",
    "export_onnx",
    "export_spec",
    "onnx_output_names",
    "onnx_file",
    "verify_onnx",
]
