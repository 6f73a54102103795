"""PyTorch MaskFormer + FaPN: transformers' MaskFormer (transformer decoder, queries, Hungarian matcher, mask
classification loss) with the FaPN pixel decoder of the paper's ADE20K and COCO-Stuff models (SPEC 2.7).

The pixel decoder reuses FaPN's feature alignment module (`FeatureAlignmentModule`, over the package's
`ModulatedDeformConv2d`) with plain 1x1 + GroupNorm laterals in place of FSM; each level's offset conv and 3x3
output conv share one GroupNorm, as in the original. `pixel_decoder="fpn"` gives MaskFormer's own FPN decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init
from transformers.backbone_utils import load_backbone
from transformers.models.maskformer.modeling_maskformer import (
    MaskFormerDetrDecoder,
    MaskFormerForInstanceSegmentation,
    MaskFormerForInstanceSegmentationOutput,
    MaskFormerHungarianMatcher,
    MaskFormerLoss,
    MaskformerMLPPredictionHead,
    MaskFormerModel,
    MaskFormerPixelDecoder,
    MaskFormerPixelDecoderOutput,
    MaskFormerPixelLevelModuleOutput,
    MaskFormerPreTrainedModel,
    MaskFormerTransformerModule,
)

from .backbone_utils import (
    PretrainedBackboneMixin,
    adapt_timm_swin,
    channels_first,
    check_feature_strides,
    returns_channels_last,
    timm_model,
    warn_unloaded_pretrained_backbone,
)
from .configuration_maskformer_fapn import MASKFORMER_FAPN_CODE, MaskFormerFaPNConfig
from .fapn_layers import (
    ConvNormAct,
    FeatureAlignmentModule,
    check_pixel_mask,
    check_pixel_values,
    check_semantic_labels,
    explain_batch_norm_error,
    pad_to_multiple,
    padded_size,
)
from .initialisation import InitWeightsMixin, init_linear_default, tag_init
from .label_checks import REDUCE_LABELS_HINT, check_label_values
from .remote_code import FamilyCodeSavingMixin

# ---------------------------------------------------------------------------------------------------------------------
# Mask-classification targets
# ---------------------------------------------------------------------------------------------------------------------


def semantic_to_mask_targets(
    labels: torch.Tensor | Sequence[torch.Tensor], num_labels: int, ignore_index: int = 255, hint: str = ""
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-class binary masks and their classes from semantic label maps, as the original MaskFormer's semantic
    dataset mapper (`MaskFormerSemanticDatasetMapper`) makes them: one mask per class present, the ignore label no
    class (its pixels, the padding included, belong to no mask), and an image with only ignored pixels no mask at all.

    Args:
        labels: `(N, H, W)` integer class ids, or a sequence of `(H_i, W_i)` maps (sizes may differ; NumPy arrays and
            nested lists too).
        num_labels: every label other than `ignore_index` must lie in `[0, num_labels)`.
        ignore_index: the label of pixels that belong to no class (no mask is made for it).
        hint: appended to the message of a value outside the label map.

    Returns:
        `(mask_labels, class_labels)`: per image a float `(K_i, H_i, W_i)` tensor of 0/1 masks, one per class
        present in increasing class order, and the `(K_i,)` int64 tensor of those classes; `K_i = 0` for an image
        whose pixels are all `ignore_index`. On the device of the labels.
    """
    if isinstance(labels, torch.Tensor) and labels.dim() != 3:
        raise ValueError(f"labels must be (batch, height, width) or a list of (height, width) maps, got {labels.shape}")
    mask_labels, class_labels = [], []
    for index, label_map in enumerate(labels):
        label_map = torch.as_tensor(label_map)
        if label_map.dim() != 2:
            raise ValueError(f"label map {index} must be (height, width), got shape {tuple(label_map.shape)}")
        if label_map.is_floating_point() or label_map.is_complex() or label_map.dtype == torch.bool:
            raise ValueError(f"label map {index} must hold integer class ids, got dtype {label_map.dtype}")
        check_label_values(label_map, num_labels, ignore_index, name=f"label map {index}", hint=hint)
        classes = torch.unique(label_map)  # sorted
        classes = classes[classes != ignore_index]
        mask_labels.append((label_map[None] == classes[:, None, None]).float())
        class_labels.append(classes.long())
    return mask_labels, class_labels


def _no_object_hint(num_labels: int) -> Any:
    """The hint of a class id outside `[0, num_labels)`: `num_labels` itself is the "no object" class."""

    def hint(values: list[int]) -> str:
        if num_labels not in values:
            return ""
        return f'; {num_labels} is the id of the "no object" class, never a target' + REDUCE_LABELS_HINT

    return hint


def _per_image(name: str, value: Any, batch: int) -> list[Any]:
    """`mask_labels` / `class_labels` as a list of one entry per image, or `ValueError`."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 or not isinstance(value, (list, tuple, torch.Tensor)):
        raise ValueError(
            f"{name} must be a list with one entry per image ({batch}), got {type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else "")
        )
    if len(value) != batch:
        shape = f" (a tensor of shape {tuple(value.shape)})" if isinstance(value, torch.Tensor) else ""
        raise ValueError(f"{name} must have one entry per image ({batch}), got {len(value)}{shape}")
    return list(value)


def check_mask_targets(
    mask_labels: Any, class_labels: Any, pixel_values: torch.Tensor, num_labels: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """MaskFormer's targets as its loss takes them, or `ValueError` naming what is wrong.

    Args:
        mask_labels: per image `(K_i, H, W)` masks holding 0 and 1, at the size of `pixel_values` `(N, C, H, W)`:
            float, integer or bool tensors, NumPy arrays or nested lists.
        class_labels: per image `(K_i,)` integer class ids in `[0, num_labels)` (`num_labels` is the "no object"
            class): tensors of any integer dtype, NumPy arrays or lists.
        pixel_values: the model's input (its batch size, size and device).
        num_labels: the number of classes.

    Returns:
        `(mask_labels, class_labels)` as lists of float masks and int64 classes on the device of `pixel_values`.

    The 0/1 and class-id checks read the values on the host (a synchronisation); they are left out while
    `torch.compile` traces the forward.
    """
    batch, (height, width) = pixel_values.shape[0], tuple(pixel_values.shape[-2:])
    masks_per_image = _per_image("mask_labels", mask_labels, batch)
    classes_per_image = _per_image("class_labels", class_labels, batch)
    check_values = not torch.compiler.is_compiling()
    checked_masks, checked_classes = [], []
    for index, (masks, classes) in enumerate(zip(masks_per_image, classes_per_image)):
        classes = torch.as_tensor(classes, device=pixel_values.device)
        if classes.dim() != 1:
            raise ValueError(
                f"class_labels[{index}] must be 1-D (num_targets,) class ids, got shape {tuple(classes.shape)}"
            )
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise ValueError(
                f"class_labels[{index}] must hold integer class ids, got dtype {classes.dtype}; convert with .long()"
            )
        classes = classes.long()
        if check_values:
            check_label_values(
                classes,
                num_labels,
                None,
                name=f"class_labels[{index}]",
                hint=_no_object_hint(num_labels),
                unit="targets",
            )
        masks = torch.as_tensor(masks, device=pixel_values.device)
        if masks.dim() == 2:
            raise ValueError(
                f"mask_labels[{index}] must be (num_targets, height, width), got one mask of shape "
                f"{tuple(masks.shape)}: add the mask axis (mask[None]), even for a single target"
            )
        if masks.dim() != 3 or tuple(masks.shape[-2:]) != (height, width) or masks.shape[0] != len(classes):
            raise ValueError(
                f"mask_labels[{index}] must be ({len(classes)}, {height}, {width}): one mask per class of "
                f"class_labels[{index}], at the size of pixel_values; got shape {tuple(masks.shape)}"
            )
        if masks.is_complex():
            raise ValueError(f"mask_labels[{index}] must hold 0 and 1, got dtype {masks.dtype}")
        if masks.dtype == torch.bool:
            masks = masks.to(pixel_values.dtype)  # False / True are the mask values 0 / 1
        elif check_values and masks.numel() and not ((masks == 0) | (masks == 1)).all():
            other = torch.unique(masks[(masks != 0) & (masks != 1)])
            shown = ", ".join(f"{float(v):g}" for v in other[:10].tolist())
            raise ValueError(
                f"mask_labels[{index}] must hold 0 and 1 (binary masks), got also [{shown}]"
                + (", ..." if len(other) > 10 else "")
                + "; with a batch padded by transformers' processor, 255 is its padding"
            )
        checked_masks.append(masks.to(pixel_values.dtype))  # the loss compares them with the mask logits
        checked_classes.append(classes)
    return checked_masks, checked_classes


# ---------------------------------------------------------------------------------------------------------------------
# Pixel decoder
# ---------------------------------------------------------------------------------------------------------------------


class MaskFormerFaPNPixelDecoder(nn.Module):
    """FaPN's MaskFormer pixel decoder (the original `BasePixelFANDecoder`), D = `fpn_feature_size`:

    - top: `relu(GN(conv3x3(C5)))`;
    - levels C4, C3, C2: `lateral = GN(conv1x1(C_i))`, `P_i = FAM(lateral, P_{i+1})` whose offset conv is
      `GN_i(conv1x1(concat(lateral, 2 * up)))`, then `relu(GN_i(conv3x3(P_i)))` with the **same** `GN_i`;
    - `mask_features = conv3x3(finest output)` (bias, no norm), at stride 4.

    Input: the backbone maps C2..C5 (NCHW). Output: [`MaskFormerPixelDecoderOutput`] whose `last_hidden_state` is
    the mask features `(N, mask_feature_size, H / 4, W / 4)` and whose `hidden_states` (when asked) are the four
    decoder outputs, coarsest first.
    """

    # The shared GroupNorms (one module under two names): save_pretrained stores a shared tensor once, under the name
    # these patterns do not match (`output_convs.k.norm.*`, the canonical one). On loading, the tensor fills the module
    # both names refer to; `from_pretrained` treats the other name as loaded with it (transformers' module tying).
    _tied_weights_keys = {r"alignments\.(\d+)\.offset_conv\.norm\.(weight|bias)": r"output_convs.\1.norm.\2"}

    def __init__(self, config: MaskFormerFaPNConfig, in_channels: Sequence[int]) -> None:
        super().__init__()
        width = config.fpn_feature_size
        self.top_conv = ConvNormAct(in_channels[-1], width, 3, padding=1, norm="GN", activation=True)
        # Index 0 is the finest level (C2).
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, width, 1, norm="GN") for c in in_channels[:-1])
        # The output convs are registered before the alignments so that their GroupNorms, shared with the alignments'
        # offset convs, are the parameters' canonical names (`named_parameters` lists a shared tensor once, by the
        # first name) and the tie's source.
        self.output_convs = nn.ModuleList(
            ConvNormAct(width, width, 3, padding=1, norm="GN", activation=True) for _ in in_channels[:-1]
        )
        self.alignments = nn.ModuleList(
            FeatureAlignmentModule(width, config.deformable_groups, "GN", config.deform_conv_implementation)
            for _ in in_channels[:-1]
        )
        for alignment, output_conv in zip(self.alignments, self.output_convs):
            # One GroupNorm for the offset conv and the output conv of a level, as the original.
            alignment.offset_conv.norm = output_conv.norm
        self.mask_projection = ConvNormAct(width, config.mask_feature_size, 3, padding=1)

    def forward(
        self, features: Sequence[torch.Tensor], output_hidden_states: bool = False, return_dict: bool = True
    ) -> MaskFormerPixelDecoderOutput | tuple:
        top_down = self.top_conv(features[-1])
        outputs = [top_down]
        for level in reversed(range(len(features) - 1)):
            lateral = self.lateral_convs[level](features[level])
            top_down = self.output_convs[level](self.alignments[level](lateral, top_down))
            outputs.append(top_down)
        mask_features = self.mask_projection(top_down)
        hidden_states = tuple(outputs) if output_hidden_states else ()
        if not return_dict:
            return (mask_features, hidden_states) if output_hidden_states else (mask_features,)
        return MaskFormerPixelDecoderOutput(last_hidden_state=mask_features, hidden_states=hidden_states)


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class MaskFormerFaPNPixelLevelModule(nn.Module):
    """Backbone (transformers' backbone API) + pixel decoder. Backbone maps are NCHW (timm Swin's NHWC maps are
    permuted) and, with `backbone_output_norms`, layer-normalised per stage like detectron2's Swin."""

    def __init__(self, config: MaskFormerFaPNConfig) -> None:
        super().__init__()
        self.encoder = load_backbone(config)
        adapt_timm_swin(self.encoder)
        channels = list(self.encoder.channels)
        self.encoder_is_timm = timm_model(self.encoder) is not None
        # timm's transformer backbones (Swin) return NHWC maps.
        self.encoder_channels_last = returns_channels_last(self.encoder)
        self.encoder_output_norms = (
            nn.ModuleList(nn.LayerNorm(c) for c in channels) if config.backbone_output_norms else None
        )
        if config.pixel_decoder == "fapn":
            self.decoder = MaskFormerFaPNPixelDecoder(config, channels)
        else:
            self.decoder = MaskFormerPixelDecoder(
                in_features=channels[-1],
                feature_size=config.fpn_feature_size,
                mask_feature_size=config.mask_feature_size,
                lateral_widths=channels[:-1],
            )
            for conv in self.decoder.modules():  # c2_xavier_fill, as the original's BasePixelDecoder
                if isinstance(conv, nn.Conv2d):
                    tag_init(conv, "xavier")

    def backbone_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """C2..C5 as NCHW maps (after the per-stage output norms, when configured)."""
        # Attention maps are the transformer decoder's; timm backbones refuse to be asked for theirs.
        kwargs = {"output_attentions": False} if self.encoder_is_timm else {}
        features = tuple(self.encoder(pixel_values, **kwargs).feature_maps)
        if self.encoder_output_norms is None:
            return channels_first(features, self.encoder_channels_last)
        normed = []
        for feature, norm in zip(features, self.encoder_output_norms):
            channels_last = feature if self.encoder_channels_last else feature.permute(0, 2, 3, 1)
            normed.append(norm(channels_last).permute(0, 3, 1, 2).contiguous())
        return tuple(normed)

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True
    ) -> MaskFormerPixelLevelModuleOutput | tuple:
        try:
            features = self.backbone_features(pixel_values)
        except ValueError as error:
            if (explained := explain_batch_norm_error(error, pixel_values)) is None:
                raise
            raise explained from error
        check_feature_strides(features, tuple(pixel_values.shape[-2:]))
        decoder_output = self.decoder(features, output_hidden_states, return_dict=True)
        output = MaskFormerPixelLevelModuleOutput(
            encoder_last_hidden_state=features[-1],
            decoder_last_hidden_state=decoder_output.last_hidden_state,
            encoder_hidden_states=features if output_hidden_states else (),
            decoder_hidden_states=decoder_output.hidden_states if output_hidden_states else (),
        )
        if return_dict:
            return output
        outputs = (features[-1], decoder_output.last_hidden_state)
        if output_hidden_states:
            outputs += (features, decoder_output.hidden_states)
        return outputs


class MaskFormerFaPNPreTrainedModel(
    FamilyCodeSavingMixin, PretrainedBackboneMixin, InitWeightsMixin, MaskFormerPreTrainedModel
):
    """Base of the MaskFormer + FaPN models. Initialisation (`InitWeightsMixin`, the kernel's one rule) gives the
    original MaskFormer's, which training from scratch depends on, through the tags set where the layers are built:

    - pixel decoders: FaPN's as the original (c2_xavier_fill convs, zero offset/mask convs, the deformable conv's
      U(+-1 / sqrt(fan_in))), MaskFormer's FPN with c2_xavier_fill convs (zero biases);
    - the transformer decoder: `MaskFormerFaPNTransformerDecoder` initialises its own layers (DETR's scheme); its
      input projection c2_xavier_fill, the object queries N(0, 1) (`nn.Embedding`'s default);
    - the class and mask-embedding heads at `nn.Linear`'s default, U(+-1 / sqrt(fan_in));
    - BatchNorm at weight 1, bias 0; the rest (LayerNorms, the loss's class weights) as transformers' MaskFormer;
    - a timm backbone's weights that a checkpoint lacks as a fresh timm model's.
    """

    config_class = MaskFormerFaPNConfig
    config: MaskFormerFaPNConfig
    # forward() takes no loss kwargs: the Trainer must not rescale the loss under DDP.
    accepts_loss_kwargs = False
    # save_pretrained() ships the code of every head and the image processor (remote_code.py).
    code_family = MASKFORMER_FAPN_CODE
    backbone_module_name = "pixel_level_module.encoder"

    # Activation checkpointing: the transformer decoder's layers, the FAMs (GradientCheckpointingLayers), transformers
    # backbones that support it, and timm backbones through timm's own switch (`PretrainedBackboneMixin`).
    supports_gradient_checkpointing = True

    def check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` as the model takes them (the kernel's `check_pixel_values`, as FaPN's: a float
        `(N, C, H, W)` tensor with the backbone's channel count, cast to the model's dtype), or `ValueError`."""
        channels = getattr(self.config.backbone_config, "num_channels", 3)
        return check_pixel_values(pixel_values, channels, self.dtype, "MaskFormerFaPNImageProcessor")


class MaskFormerFaPNTransformerDecoder(MaskFormerDetrDecoder):
    """transformers' MaskFormer transformer decoder (DETR's post-norm decoder) with the original's initialisation.

    The original builds it with DETR's `Transformer`, whose `_reset_parameters` draws every weight matrix
    Xavier-uniform. Its attention keeps the query, key and value projections in one `(3D, D)` matrix, so each of
    transformers' separate `(D, D)` projections is drawn with that matrix's bound, sqrt(6 / 4D); output projections
    and both feed-forward layers are Xavier over their own shapes. Attention biases start at zero (as in
    `nn.MultiheadAttention`), feed-forward biases at `nn.Linear`'s default, LayerNorms at weight 1, bias 0.

    transformers' MaskFormer draws all of these N(0, 0.02): cross-attention then adds about 0.1% to the queries'
    states, every query ends up predicting the same class and mask, and a small model trained from scratch does not
    leave that state (the demo recipe stayed below chance). The weights and their names are transformers' own, so
    checkpoints load either way.
    """

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        role = self._detr_roles().get(module)
        if role == "attention_input":
            bound = math.sqrt(6 / (4 * module.in_features))
            hf_init.uniform_(module.weight, -bound, bound)
        elif role == "attention_output":
            hf_init.xavier_uniform_(module.weight)
        elif role == "feed_forward":
            init_linear_default(module)
            hf_init.xavier_uniform_(module.weight)
        else:
            super()._init_weights(module)
            return
        if role != "feed_forward" and module.bias is not None:
            hf_init.zeros_(module.bias)

    def _detr_roles(self) -> dict[nn.Module, str]:
        """Each linear layer's part in DETR's scheme, found by structure: attention blocks have `q_proj`, `k_proj`,
        `v_proj`, `o_proj`, feed-forward blocks `fc1`, `fc2`."""
        roles = {}
        for block in self.modules():
            if all(hasattr(block, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
                roles |= {block.q_proj: "attention_input", block.k_proj: "attention_input"}
                roles |= {block.v_proj: "attention_input", block.o_proj: "attention_output"}
            elif hasattr(block, "fc1") and hasattr(block, "fc2"):
                roles |= {block.fc1: "feed_forward", block.fc2: "feed_forward"}
        return roles


def _keep_the_decoders_checkpoint_layout() -> None:
    """Saves and loads `MaskFormerFaPNTransformerDecoder` in the checkpoint layout of transformers' own MaskFormer
    decoder. transformers renames that decoder's keys between the checkpoint (`out_proj`, `layers.N.fc1`) and the
    modules (`o_proj`, `layers.N.mlp.fc1`) by its class name, and applies no renaming to a class in custom code
    unless a mapping is registered for it; without this, folders saved before the subclass existed would load with
    their decoder weights missing."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:  # a transformers without checkpoint conversions: module names are the checkpoint's
        return
    mapping = get_checkpoint_conversion_mapping(MaskFormerDetrDecoder.__name__)
    if mapping is not None:
        register_checkpoint_conversion_mapping(MaskFormerFaPNTransformerDecoder.__name__, mapping, overwrite=True)


_keep_the_decoders_checkpoint_layout()


class MaskFormerFaPNModel(MaskFormerFaPNPreTrainedModel, MaskFormerModel):
    """MaskFormer's backbone + pixel decoder + transformer decoder with the FaPN pixel decoder.

    Forward: `pixel_values` `(N, 3, H, W)`, zero-padded to `size_divisibility` -> [`MaskFormerModelOutput`]:
    `encoder_last_hidden_state` C5, `pixel_decoder_last_hidden_state` the mask features `(N, mask_feature_size,
    H' / 4, W' / 4)` of the padded input `(H', W')`, `transformer_decoder_last_hidden_state` `(N, num_queries, D)`.
    """

    def __init__(self, config: MaskFormerFaPNConfig) -> None:
        MaskFormerFaPNPreTrainedModel.__init__(self, config)
        self.pixel_level_module = MaskFormerFaPNPixelLevelModule(config)
        self.transformer_module = MaskFormerTransformerModule(
            in_features=self.pixel_level_module.encoder.channels[-1], config=config
        )
        # The original's initialisation (see `MaskFormerFaPNPreTrainedModel`): its decoder (replacing the one
        # transformers' module built, which costs less than copying that module's constructor), queries and input
        # projection.
        self.transformer_module.decoder = MaskFormerFaPNTransformerDecoder(config.decoder_config)
        # transformers' N(0, 0.02) starts the queries so close together that they stay interchangeable.
        tag_init(self.transformer_module.queries_embedder, "unit_normal")
        if self.transformer_module.input_projection is not None:
            tag_init(self.transformer_module.input_projection, "xavier")
        self.post_init()
        warn_unloaded_pretrained_backbone(config, self.pixel_level_module.encoder)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        """
        Args:
            pixel_values: `(N, 3, H, W)` normalised images of any size (zero-padded to `size_divisibility` here).
            pixel_mask: `(N, H, W)`; MaskFormer's decoder does not use it (padding is zeros, as in the original).
        """
        pixel_values = self.check_pixel_values(pixel_values)
        check_pixel_mask(pixel_mask, pixel_values)
        padded = pad_to_multiple(pixel_values, self.config.size_divisibility)
        return MaskFormerModel.forward(
            self,
            padded,
            None,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=return_dict,
        )


@dataclass
class MaskFormerFaPNForSegmentationOutput(MaskFormerForInstanceSegmentationOutput):
    """[`MaskFormerForInstanceSegmentationOutput`] (`class_queries_logits` `(N, Q, num_labels + 1)`,
    `masks_queries_logits` `(N, Q, H' / 4, W' / 4)` for the input zero-padded to `(H', W')`, the loss with labels)
    plus `pixel_mask` `(N, H, W)`: the mask the model was given, or ones for the unpadded input. With it
    `MaskFormerFaPNImageProcessor.post_process_semantic_segmentation` crops the padding as the original does."""

    pixel_mask: torch.LongTensor | None = None


class MaskFormerFaPNForInstanceSegmentation(MaskFormerFaPNPreTrainedModel, MaskFormerForInstanceSegmentation):
    """MaskFormer + FaPN with the class and mask heads: semantic (and instance / panoptic) segmentation by mask
    classification. `mask_labels` / `class_labels` as transformers' MaskFormer takes them (the processor makes them
    from semantic maps); the masks are zero-padded with the input, as the original pads its targets."""

    def __init__(self, config: MaskFormerFaPNConfig) -> None:
        MaskFormerFaPNPreTrainedModel.__init__(self, config)
        self.model = MaskFormerFaPNModel(config)
        hidden_size = config.decoder_config.hidden_size
        self.class_predictor = nn.Linear(hidden_size, config.num_labels + 1)  # + the "no object" class
        self.mask_embedder = MaskformerMLPPredictionHead(hidden_size, hidden_size, config.mask_feature_size)
        for linear in [self.class_predictor, *self.mask_embedder.modules()]:
            if isinstance(linear, nn.Linear):
                tag_init(linear, "linear_default")  # the original's nn.Linear heads
        self.matcher = MaskFormerHungarianMatcher(
            cost_class=1.0, cost_dice=config.dice_weight, cost_mask=config.mask_weight
        )
        self.weight_dict: dict[str, float] = {
            "loss_cross_entropy": config.cross_entropy_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
        }
        self.criterion = MaskFormerLoss(
            config.num_labels, matcher=self.matcher, weight_dict=self.weight_dict, eos_coef=config.no_object_weight
        )
        self.post_init()

    def semantic_targets(
        self, labels: Any, pixel_values: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Mask targets from semantic `labels` `(N, H, W)` at the size of `pixel_values`, by
        `semantic_to_mask_targets`; `ValueError` for labels of another shape, type or range (the kernel's
        `check_semantic_labels`, as FaPN checks its `labels`)."""
        ignore_index = self.config.semantic_loss_ignore_index
        check_semantic_labels(labels, pixel_values, self.config.num_labels, ignore_index, REDUCE_LABELS_HINT)
        return semantic_to_mask_targets(labels.to(pixel_values.device), self.config.num_labels, ignore_index)

    def get_logits(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Class logits `(N, Q, num_labels + 1)` and mask logits `(N, Q, H / 4, W / 4)` of the last decoder layer, and
        with `use_auxiliary_loss` the same pair for every earlier layer (deep supervision).

        The auxiliary pairs follow the original MaskFormer: the output of decoder layers 1 .. L-1, each through the
        decoder's final LayerNorm (as the last layer's output is). transformers' MaskFormer instead predicts from the
        un-normalised layer outputs and adds a prediction from the all-zero query input, an extra loss term the
        original does not have. Inference is the same either way; only the training loss differs.
        """
        pixel_embeddings = outputs.pixel_decoder_last_hidden_state
        states = [outputs.transformer_decoder_last_hidden_state]
        if self.config.use_auxiliary_loss:
            final_norm = self.model.transformer_module.decoder.layernorm
            # hidden states: the query input, then the output of each layer (the last one normalised already).
            states = [final_norm(state) for state in outputs.transformer_decoder_hidden_states[1:-1]] + states
        stacked = torch.stack(states)
        class_logits = self.class_predictor(stacked)
        mask_logits = torch.einsum("lbqc,bchw->lbqhw", self.mask_embedder(stacked), pixel_embeddings)
        auxiliary = [
            {"masks_queries_logits": masks, "class_queries_logits": classes}
            for masks, classes in zip(mask_logits[:-1], class_logits[:-1])
        ]
        return class_logits[-1], mask_logits[-1], auxiliary

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        pixel_mask: torch.Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskFormerFaPNForSegmentationOutput | tuple:
        """
        Args:
            pixel_values: `(N, 3, H, W)` normalised images of any size (other float dtypes are cast to the model's).
            mask_labels: per image a `(num_targets, H, W)` tensor of binary masks (float, integer or bool 0/1), at the
                size of `pixel_values`.
            class_labels: per image a `(num_targets,)` tensor of integer class ids in `[0, num_labels)`.
            pixel_mask: `(N, H, W)`, 1 on image pixels and 0 on the processor's padding; returned with the logits.
            labels (keyword): `(N, H, W)` semantic class ids in `[0, num_labels)` or `semantic_loss_ignore_index`, as
                FaPN and transformers' semantic models take them, instead of `mask_labels` / `class_labels`: turned
                into one mask per class present (`semantic_to_mask_targets`). A keyword, not a named parameter: the
                Trainer reads the named `*label*` parameters as the label columns every batch must have.
        Returns:
            [`MaskFormerFaPNForSegmentationOutput`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        pixel_values = self.model.check_pixel_values(pixel_values)
        batch, _, height, width = pixel_values.shape
        check_pixel_mask(pixel_mask, pixel_values)
        if pixel_mask is None:
            pixel_mask = torch.ones((batch, height, width), dtype=torch.long, device=pixel_values.device)
        labels = kwargs.pop("labels", None)
        if labels is not None:
            if mask_labels is not None or class_labels is not None:
                raise ValueError(
                    "pass either labels (semantic maps) or mask_labels and class_labels (mask targets), not both"
                )
            mask_labels, class_labels = self.semantic_targets(labels, pixel_values)
        if (mask_labels is None) != (class_labels is None):
            raise ValueError(
                "mask_labels and class_labels must both be given, one entry per image "
                f"({batch}); got {'only mask_labels' if class_labels is None else 'only class_labels'} (or pass "
                "semantic maps as labels)"
            )
        if mask_labels is not None:
            mask_labels, class_labels = check_mask_targets(
                mask_labels, class_labels, pixel_values, self.config.num_labels
            )
            target_h, target_w = padded_size(height, width, self.config.size_divisibility)
            mask_labels = [F.pad(m, (0, target_w - m.shape[-1], 0, target_h - m.shape[-2])) for m in mask_labels]
        wants_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output = MaskFormerForInstanceSegmentation.forward(
            self,
            pixel_values,
            mask_labels=mask_labels,
            class_labels=class_labels,
            pixel_mask=pixel_mask,
            output_auxiliary_logits=output_auxiliary_logits,
            # transformers 5.23's MaskFormer drops the decoder's hidden states that deep supervision
            # (use_auxiliary_loss) stacks unless they are asked for: ask, and drop them again below.
            output_hidden_states=wants_hidden_states or self.config.use_auxiliary_loss,
            output_attentions=output_attentions,
            return_dict=True,
        )
        fields = dict(output)
        if not wants_hidden_states:
            for name in ("encoder_hidden_states", "pixel_decoder_hidden_states", "transformer_decoder_hidden_states"):
                fields.pop(name, None)
            fields.pop("hidden_states", None)
        output = MaskFormerFaPNForSegmentationOutput(**fields, pixel_mask=pixel_mask)
        return output if return_dict else output.to_tuple()


__all__ = [
    "MaskFormerFaPNForInstanceSegmentation",
    "MaskFormerFaPNForSegmentationOutput",
    "MaskFormerFaPNModel",
    "MaskFormerFaPNPixelDecoder",
    "MaskFormerFaPNPreTrainedModel",
    "MaskFormerFaPNTransformerDecoder",
    "adapt_timm_swin",
    "check_mask_targets",
    "semantic_to_mask_targets",
]
