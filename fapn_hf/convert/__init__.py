"""The toolkit that converts the authors' checkpoints into package models, family-free: safe reading
(`read_checkpoint`), explicit rename tables (`RenameTable`, with fragments several families share), a family's
`Converter` and its released `OriginalModel`s, the strict fill (`convert_state_dict`), the provenance record
(`conversion_record`) and what an unknown checkpoint looks like (`describe_checkpoint`).

It imports nothing of the package but the shipped model code (`fapn_hf.modeling`) and the label sets. Each family's
tables live with the family (`fapn_hf.families.<name>.convert`: `CONVERTER`, `ORIGINAL_MODELS`); writing a Hub folder
from a checkpoint is `fapn_hf.hub.conversion.convert_checkpoint` (the `fapn-convert` command).
"""

from .checkpoint_io import Checkpoint, CheckpointError, file_sha256, read_checkpoint
from .core import (
    DETECTRON2_MODEL_SIGNATURES,
    DETECTRON2_PART_SIGNATURES,
    CheckpointSignature,
    Converter,
    OriginalModel,
    ReportedResult,
    conversion_record,
    convert_state_dict,
    describe_checkpoint,
    pixel_statistic,
)
from .renames import (
    PLACEHOLDER_PATTERNS,
    RenameRule,
    RenameTable,
    detectron2_resnet_renames,
    detectron2_resnet_to_transformers,
    feature_alignment_renames,
)

__all__ = [
    "DETECTRON2_MODEL_SIGNATURES",
    "DETECTRON2_PART_SIGNATURES",
    "PLACEHOLDER_PATTERNS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointSignature",
    "Converter",
    "OriginalModel",
    "RenameRule",
    "RenameTable",
    "ReportedResult",
    "conversion_record",
    "convert_state_dict",
    "describe_checkpoint",
    "detectron2_resnet_renames",
    "detectron2_resnet_to_transformers",
    "feature_alignment_renames",
    "file_sha256",
    "pixel_statistic",
    "read_checkpoint",
]
