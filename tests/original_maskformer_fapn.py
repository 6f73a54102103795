"""The authors' MaskFormer + FaPN network for the converter's exactness tests, re-implemented from the original
semantics: FaPN-full's `BasePixelFANDecoder` (original module and parameter names: `adapter_k`, `align_k.offset`,
`align_k.dcpack_L2` with `conv_offset_mask`, `layer_k`, `mask_features`; each level's offset conv and output conv
share one GroupNorm object; DCNv2 through `torchvision.ops.deform_conv2d`), with transformers' MaskFormer for the
rest (backbone, transformer decoder, heads: transformers verified those against the original). `original_state_dict`
writes the original checkpoint layout (detectron2 ResNet / D2SwinTransformer names, `nn.MultiheadAttention`'s fused
`in_proj`, the shared norm stored twice); `original_inference` is MaskFormer's test path (`ImageList` zero padding to
32, mask logits upsampled to the padded size, `semantic_inference`, `sem_seg_postprocess`). Nothing here imports
fapn_hf.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

PIXEL_MEAN_RGB = (123.675, 116.280, 103.530)
PIXEL_STD_RGB = (58.395, 57.120, 57.375)


class Conv2d(nn.Conv2d):
    """detectron2.layers.Conv2d: convolution, then the optional `norm` module and activation."""

    def __init__(self, *args, norm: nn.Module | None = None, activation=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class DCN(nn.Module):
    """DCNv2's `DCN` with `extra_offset_mask=True`: `conv_offset_mask` reads the offset feature; its output is split
    in three chunks o1, o2, mask; offset = cat(o1, o2), mask = sigmoid(mask)."""

    def __init__(self, channels: int, deformable_groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset_mask = nn.Conv2d(channels, deformable_groups * 3 * 9, 3, padding=1, bias=True)
        nn.init.uniform_(self.weight, -1 / (channels * 9) ** 0.5, 1 / (channels * 9) ** 0.5)

    def forward(self, x: torch.Tensor, offset_feature: torch.Tensor) -> torch.Tensor:
        o1, o2, mask = torch.chunk(self.conv_offset_mask(offset_feature), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, padding=1, mask=torch.sigmoid(mask))


class FeatureAlign(nn.Module):
    """FaPN-full MaskFormer's FeatureAlign (no FSM)."""

    def __init__(self, channels: int, norm: nn.Module, deformable_groups: int) -> None:
        super().__init__()
        self.offset = Conv2d(2 * channels, channels, 1, bias=False, norm=norm)
        self.dcpack_L2 = DCN(channels, deformable_groups)

    def forward(self, feat_l: torch.Tensor, feat_s: torch.Tensor) -> torch.Tensor:
        if feat_l.shape[2:] != feat_s.shape[2:]:
            feat_up = F.interpolate(feat_s, feat_l.shape[2:], mode="bilinear", align_corners=False)
        else:
            feat_up = feat_s
        offset = self.offset(torch.cat([feat_l, feat_up * 2], dim=1))
        return F.relu(self.dcpack_L2(feat_up, offset)) + feat_l


class BasePixelFANDecoder(nn.Module):
    """`layer_4` on res5; for k = 1..3 `adapter_k`, `align_k` and `layer_k` (sharing `align_k`'s GroupNorm)."""

    def __init__(self, channels: list[int], conv_dim: int, mask_dim: int, deformable_groups: int = 8) -> None:
        super().__init__()
        for index, in_channels in enumerate(channels):
            if index == len(channels) - 1:
                norm = nn.GroupNorm(32, conv_dim)
                self.add_module(
                    f"layer_{index + 1}",
                    Conv2d(in_channels, conv_dim, 3, padding=1, bias=False, norm=norm, activation=F.relu),
                )
            else:
                output_norm = nn.GroupNorm(32, conv_dim)
                self.add_module(
                    f"adapter_{index + 1}",
                    Conv2d(in_channels, conv_dim, 1, bias=False, norm=nn.GroupNorm(32, conv_dim)),
                )
                self.add_module(f"align_{index + 1}", FeatureAlign(conv_dim, output_norm, deformable_groups))
                self.add_module(
                    f"layer_{index + 1}",
                    Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False, norm=output_norm, activation=F.relu),
                )
        self.num_levels = len(channels)
        self.mask_features = Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = getattr(self, f"layer_{self.num_levels}")(features[-1])
        for k in range(self.num_levels - 1, 0, -1):
            lateral = getattr(self, f"adapter_{k}")(features[k - 1])
            y = getattr(self, f"layer_{k}")(getattr(self, f"align_{k}")(lateral, y))
        return self.mask_features(y)


class OriginalMaskFormerFaPN(nn.Module):
    """transformers' MaskFormer (backbone, transformer module, class and mask heads) with the original FaPN decoder."""

    def __init__(self, config: MaskFormerConfig, deformable_groups: int = 8) -> None:
        super().__init__()
        self.maskformer = MaskFormerForInstanceSegmentation(config).eval()
        channels = list(self.maskformer.model.pixel_level_module.encoder.channels)
        self.pixel_decoder = BasePixelFANDecoder(
            channels, config.fpn_feature_size, config.mask_feature_size, deformable_groups
        )

    @torch.no_grad()
    def randomise(self, seed: int = 0, offset_std: float = 0.02) -> None:
        """Trained-looking random weights: norms away from 1/0, BatchNorm statistics, DCN offsets of a few pixels."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
            if isinstance(module, DCN):
                module.conv_offset_mask.weight.copy_(
                    offset_std * torch.randn(module.conv_offset_mask.weight.shape, generator=generator)
                )
                module.conv_offset_mask.bias.copy_(torch.randn(module.conv_offset_mask.bias.shape, generator=generator))
        # Relative position biases start at zero in transformers; give them values a trained Swin has.
        for name, parameter in self.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`images` normalised and zero-padded to 32 -> (class logits `(N, Q, K + 1)`, mask logits at stride 4)."""
        model = self.maskformer.model
        features = list(model.pixel_level_module.encoder(images).feature_maps)
        mask_features = self.pixel_decoder(features)
        queries = model.transformer_module(features[-1]).last_hidden_state
        class_logits = self.maskformer.class_predictor(queries)
        mask_embeddings = self.maskformer.mask_embedder(queries)
        return class_logits, torch.einsum("bqc,bchw->bqhw", mask_embeddings, mask_features)


# ------------------------------------------------------------------------------------------------ original layout


def _resnet_names(name: str) -> str | None:
    """transformers ResNetBackbone (torchvision layout) -> detectron2 ResNet; None for tensors FrozenBN lacks."""
    if name.endswith("num_batches_tracked"):
        return None
    name = name.replace("embedder.embedder.convolution", "stem.conv1").replace(
        "embedder.embedder.normalization", "stem.conv1.norm"
    )
    parts = name.split(".")
    if parts[0] == "encoder" and parts[1] == "stages":  # encoder.stages.{s}.layers.{b}.{layer.{c}|shortcut}.{...}
        stage, block = int(parts[2]) + 2, parts[4]
        rest = parts[5:]
        if rest[0] == "layer":
            conv = f"conv{int(rest[1]) + 1}"
            tail = rest[2:]
        else:
            conv, tail = "shortcut", rest[1:]
        tail = ".".join(tail).replace("convolution.", "").replace("normalization.", "norm.")
        return f"res{stage}.{block}.{conv}.{tail}"
    return name


def _swin_state(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers MaskFormerSwinBackbone -> D2SwinTransformer (qkv fused in query, key, value order)."""
    out = {}
    for name, tensor in encoder_state.items():
        if name.startswith("model.layernorm."):
            continue  # transformers' unused final norm
        if name.startswith("hidden_states_norms."):
            _, index, param = name.split(".")
            out[f"norm{index}.{param}"] = tensor
            continue
        if ".attention.self.key." in name or ".attention.self.value." in name:
            continue
        if ".attention.self.query." in name:
            tensor = torch.cat([encoder_state[name.replace(".query.", f".{p}.")] for p in ("query", "key", "value")])
            name = name.replace("attention.self.query", "attn.qkv")
        name = name.removeprefix("model.")
        name = name.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
        name = name.replace("embeddings.norm", "patch_embed.norm").replace("encoder.layers", "layers")
        for old, new in (
            ("layernorm_before", "norm1"),
            ("layernorm_after", "norm2"),
            ("attention.self.", "attn."),
            ("attention.output.dense", "attn.proj"),
            ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2"),
        ):
            name = name.replace(old, new)
        out[name] = tensor
    return out


def _transformer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' MaskFormer transformer module and heads -> MaskFormer's predictor (nn.MultiheadAttention)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("model.transformer_module."):
            short = name.removeprefix("model.transformer_module.")
            if short.startswith("queries_embedder."):
                out["sem_seg_head.predictor.query_embed.weight"] = tensor
            elif short.startswith("input_projection."):
                out["sem_seg_head.predictor.input_proj." + short.rsplit(".", 1)[1]] = tensor
            elif short.startswith("decoder.layernorm."):
                out["sem_seg_head.predictor.transformer.decoder.norm." + short.rsplit(".", 1)[1]] = tensor
            elif short.startswith("decoder.layers."):
                _, _, layer, *rest = short.split(".")
                rest = ".".join(rest)
                prefix = f"sem_seg_head.predictor.transformer.decoder.layers.{layer}."
                for attention, original in (("self_attn", "self_attn"), ("encoder_attn", "multihead_attn")):
                    if rest.startswith(f"{attention}.q_proj."):
                        param = rest.rsplit(".", 1)[1]
                        fused = [state[name.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
                        out[f"{prefix}{original}.in_proj_{param}"] = torch.cat(fused, dim=0)
                    elif rest.startswith(f"{attention}.o_proj."):
                        out[f"{prefix}{original}.out_proj.{rest.rsplit('.', 1)[1]}"] = tensor
                for old, new in (
                    ("self_attn_layer_norm.", "norm1."),
                    ("encoder_attn_layer_norm.", "norm2."),
                    ("final_layer_norm.", "norm3."),
                    ("mlp.fc1.", "linear1."),
                    ("mlp.fc2.", "linear2."),
                ):
                    if rest.startswith(old):
                        out[prefix + new + rest.removeprefix(old)] = tensor
        elif name.startswith("class_predictor."):
            out["sem_seg_head.predictor.class_embed." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("mask_embedder."):
            _, index, _, param = name.split(".")
            out[f"sem_seg_head.predictor.mask_embed.layers.{index}.{param}"] = tensor
        elif name == "criterion.empty_weight":
            out[name] = tensor
    return out


def original_state_dict(network: OriginalMaskFormerFaPN) -> dict[str, torch.Tensor]:
    """The checkpoint the authors' code would save for `network` (`model.state_dict()` of their MaskFormer)."""
    state = {k: v.detach().clone() for k, v in network.maskformer.state_dict().items()}
    encoder_prefix = "model.pixel_level_module.encoder."
    encoder_state = {k.removeprefix(encoder_prefix): v for k, v in state.items() if k.startswith(encoder_prefix)}
    if any(k.startswith("model.embeddings.") for k in encoder_state):
        backbone = _swin_state(encoder_state)
    else:
        backbone = {new: v for k, v in encoder_state.items() if (new := _resnet_names(k)) is not None}
    checkpoint = {f"backbone.{k}": v for k, v in backbone.items()}
    for name, tensor in network.pixel_decoder.state_dict().items():  # the shared GroupNorm appears twice here
        checkpoint[f"sem_seg_head.pixel_decoder.{name}"] = tensor.detach().clone()
    checkpoint.update(_transformer_state(state))
    return checkpoint


# -------------------------------------------------------------------------------------------------------- inference


def normalise_and_pad(image: np.ndarray, divisibility: int = 32) -> torch.Tensor:
    """An RGB uint8 `(H, W, 3)` image -> `(1, 3, H', W')`: `(x - PIXEL_MEAN) / PIXEL_STD`, zero-padded at the bottom
    and right to multiples of `divisibility` (detectron2's `ImageList.from_tensors`)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    x = (x - torch.tensor(PIXEL_MEAN_RGB).view(3, 1, 1)) / torch.tensor(PIXEL_STD_RGB).view(3, 1, 1)
    height, width = x.shape[-2:]
    padded_h, padded_w = -(-height // divisibility) * divisibility, -(-width // divisibility) * divisibility
    return F.pad(x, (0, padded_w - width, 0, padded_h - height))[None]


def original_inference(
    network: OriginalMaskFormerFaPN, image: np.ndarray, output_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MaskFormer's semantic test path: (class logits, mask logits, `(K, *output_size)` semantic scores)."""
    images = normalise_and_pad(image)
    class_logits, mask_logits = network(images)
    masks = F.interpolate(mask_logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    scores = torch.einsum("qc,qhw->chw", F.softmax(class_logits[0], dim=-1)[..., :-1], masks[0].sigmoid())
    scores = scores[:, : image.shape[0], : image.shape[1]]  # sem_seg_postprocess: crop, then resize
    scores = F.interpolate(scores[None], size=output_size, mode="bilinear", align_corners=False)[0]
    return class_logits, mask_logits, scores
