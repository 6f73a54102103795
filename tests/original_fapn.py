"""The authors' FaPN semantic segmentation network, re-implemented from the original semantics for the converter's
exactness tests: detectron2's `SemanticSegmentor` with the MSRA ResNet (FrozenBN, stride in the 1x1 conv, BGR input
minus PIXEL_MEAN), the FaPN backbone `FAN` (FSM `lateral_conv`, FAM `offset` + DCNv2 `dcpack_L2`), `SemSegFPNHead`
and PointRend's `PointRendSemSegHead` with `StandardPointHead`, padding to 32 and `sem_seg_postprocess`, plus the
`DefaultPredictor` input path (RGB -> BGR, `ResizeShortestEdge` with PIL on uint8).

Module and parameter names are the original ones, so `state_dict()` is an original-layout checkpoint. The DCNv2
kernel is `torchvision.ops.deform_conv2d`, the reference kernel. Nothing here imports fapn_hf.
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (1.0, 1.0, 1.0)
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

# ---------------------------------------------------------------------------------------------------------- layers


class FrozenBatchNorm2d(nn.Module):
    """detectron2's FrozenBN: fixed affine and statistics as buffers (no `num_batches_tracked`), eps 1e-5."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without gradients detectron2 calls F.batch_norm in inference mode.
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Conv2d(nn.Conv2d):
    """detectron2.layers.Conv2d: the convolution, then the optional `norm` module and activation."""

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


# ------------------------------------------------------------------------------------------------ MSRA ResNet trunk


class BasicStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False, norm=FrozenBatchNorm2d(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """`STRIDE_IN_1X1: True`: the stride sits in conv1 (MSRA), not in the 3x3 conv2."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int) -> None:
        super().__init__()
        self.shortcut = (
            Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, norm=FrozenBatchNorm2d(out_channels))
            if in_channels != out_channels
            else None
        )
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, 1, stride=stride, bias=False, norm=FrozenBatchNorm2d(bottleneck_channels)
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            3,
            padding=1,
            bias=False,
            norm=FrozenBatchNorm2d(bottleneck_channels),
        )
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False, norm=FrozenBatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.stem = BasicStem()
        in_channels, out_channels, bottleneck = 64, 256, 64
        for index, num_blocks in enumerate(RESNET_BLOCKS[depth]):
            first_stride = 1 if index == 0 else 2
            blocks = []
            for block in range(num_blocks):
                blocks.append(BottleneckBlock(in_channels, out_channels, bottleneck, first_stride if block == 0 else 1))
                in_channels = out_channels
            self.add_module(f"res{index + 2}", nn.Sequential(*blocks))
            out_channels, bottleneck = out_channels * 2, bottleneck * 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs


# ------------------------------------------------------------------------------------------------------ FaPN (FAN)


class DCN(nn.Module):
    """DCNv2's `DCN` with `extra_offset_mask=True`: offsets and mask from a separate feature.

    `conv_offset_mask` gives 3 * G * 9 channels; `chunk(3)` -> o1, o2, mask; offset = cat(o1, o2), mask = sigmoid.
    """

    def __init__(self, channels: int, deformable_groups: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(channels))
        self.conv_offset_mask = nn.Conv2d(channels, deformable_groups * 3 * 9, 3, padding=1, bias=True)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x, offset_feature = inputs
        out = self.conv_offset_mask(offset_feature)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(mask)
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, padding=(1, 1), mask=mask)


class FeatureSelectionModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_atten = Conv2d(in_channels, in_channels, 1, bias=False)
        self.conv = Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        atten = torch.sigmoid(self.conv_atten(F.avg_pool2d(x, x.size()[2:])))
        x = x + torch.mul(x, atten)
        return self.conv(x)


class FeatureAlignV2(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.lateral_conv = FeatureSelectionModule(in_channels, out_channels)
        self.offset = Conv2d(out_channels * 2, out_channels, 1, bias=False)
        self.dcpack_L2 = DCN(out_channels)

    def forward(self, feat_l: torch.Tensor, feat_s: torch.Tensor) -> torch.Tensor:
        size = feat_l.size()[2:]
        if feat_s.size()[2:] != size:
            feat_s = F.interpolate(feat_s, size, mode="bilinear", align_corners=False)
        feat_up = feat_s
        feat_arm = self.lateral_conv(feat_l)
        offset = self.offset(torch.cat([feat_arm, feat_up * 2], dim=1))
        feat_align = F.relu(self.dcpack_L2([feat_up, offset]))
        return feat_align + feat_arm


class FAN(nn.Module):
    """The FaPN backbone: `bottom_up` + fan_align2..4 (FeatureAlign_V2), fan_align5 (1x1 conv with bias),
    fpn_output2..4 (3x3 convs with bias); P5 has no output conv. Returns p2..p5 (p6 is unused by the heads)."""

    size_divisibility = 32

    def __init__(self, depth: int, channels: int = 256) -> None:
        super().__init__()
        self.bottom_up = ResNet(depth)
        for stage, in_channels in zip((2, 3, 4), (256, 512, 1024)):
            self.add_module(f"fan_align{stage}", FeatureAlignV2(in_channels, channels))
            self.add_module(f"fpn_output{stage}", Conv2d(channels, channels, 3, padding=1, bias=True))
        self.fan_align5 = Conv2d(2048, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        prev = self.fan_align5(features["res5"])
        results = {"p5": prev}
        for stage in (4, 3, 2):
            prev = getattr(self, f"fan_align{stage}")(features[f"res{stage}"], prev)
            results[f"p{stage}"] = getattr(self, f"fpn_output{stage}")(prev)
        return results


# ----------------------------------------------------------------------------------------------------------- heads


class SemSegFPNHead(nn.Module):
    """Panoptic FPN's semantic head: per level conv3x3 + GN(32) + ReLU (+ 2x bilinear upsample) towers to stride 4,
    summed, `predictor` 1x1; at inference the logits are upsampled 4x."""

    in_features = ("p2", "p3", "p4", "p5")
    common_stride = 4

    def __init__(self, num_classes: int, in_channels: int = 256, conv_dims: int = 128) -> None:
        super().__init__()
        for name, stride in zip(self.in_features, (4, 8, 16, 32)):
            ops: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(self.common_stride)))):
                ops.append(
                    Conv2d(
                        in_channels if k == 0 else conv_dims,
                        conv_dims,
                        3,
                        padding=1,
                        bias=False,
                        norm=nn.GroupNorm(32, conv_dims),
                        activation=F.relu,
                    )
                )
                if stride != self.common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*ops))
        self.predictor = Conv2d(conv_dims, num_classes, 1)

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = None
        for name in self.in_features:
            y = getattr(self, name)(features[name])
            x = y if x is None else x + y
        return self.predictor(x)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.layers(features)
        return F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False)


def point_sample(features: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """detectron2's `point_sample` (coords in [0, 1], `grid_sample` with align_corners=False). detectron2 makes the
    coordinates in float32; `grid_sample` needs the grid in the input's dtype, so a float64 run casts it."""
    grid = (2.0 * point_coords.unsqueeze(2) - 1.0).to(features.dtype)
    return F.grid_sample(features, grid, align_corners=False).squeeze(3)


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    top2 = torch.topk(logits, k=2, dim=1)[0]
    return (top2[:, 1] - top2[:, 0]).unsqueeze(1)


def get_uncertain_point_coords_on_grid(uncertainty_map: torch.Tensor, num_points: int):
    batch, _, height, width = uncertainty_map.shape
    h_step, w_step = 1.0 / float(height), 1.0 / float(width)
    num_points = min(height * width, num_points)
    point_indices = torch.topk(uncertainty_map.view(batch, height * width), k=num_points, dim=1)[1]
    point_coords = torch.zeros(batch, num_points, 2, dtype=torch.float, device=uncertainty_map.device)
    point_coords[:, :, 0] = w_step / 2.0 + (point_indices % width).to(torch.float) * w_step
    point_coords[:, :, 1] = h_step / 2.0 + (point_indices // width).to(torch.float) * h_step
    return point_indices, point_coords


class StandardPointHead(nn.Module):
    """fc1..fcN (Conv1d k=1 + ReLU) over [fine features, coarse logits], then `predictor`
    (COARSE_PRED_EACH_LAYER: False, as the authors' config)."""

    def __init__(self, num_classes: int, in_channels: int = 256, fc_dim: int = 256, num_fc: int = 3) -> None:
        super().__init__()
        dim_in = in_channels + num_classes
        self.fc_layers = []
        for k in range(num_fc):
            fc = nn.Conv1d(dim_in, fc_dim, kernel_size=1, bias=True)
            self.add_module(f"fc{k + 1}", fc)
            self.fc_layers.append(fc)
            dim_in = fc_dim
        self.predictor = nn.Conv1d(dim_in, num_classes, kernel_size=1)

    def forward(self, fine_grained_features: torch.Tensor, coarse_features: torch.Tensor) -> torch.Tensor:
        x = torch.cat((fine_grained_features, coarse_features), dim=1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.predictor(x)


class PointRendSemSegHead(nn.Module):
    """Inference: 2 subdivision steps of 8192 points; the point head reads p2 and the stride-4 coarse logits."""

    def __init__(self, num_classes: int, subdivision_steps: int = 2, subdivision_num_points: int = 8192) -> None:
        super().__init__()
        self.coarse_sem_seg_head = SemSegFPNHead(num_classes)
        self.point_head = StandardPointHead(num_classes)
        self.subdivision_steps = subdivision_steps
        self.subdivision_num_points = subdivision_num_points

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        coarse = self.coarse_sem_seg_head.layers(features)
        logits = coarse.clone()
        for _ in range(self.subdivision_steps):
            logits = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
            point_indices, point_coords = get_uncertain_point_coords_on_grid(
                calculate_uncertainty(logits), self.subdivision_num_points
            )
            fine = point_sample(features["p2"], point_coords)
            point_logits = self.point_head(fine, point_sample(coarse, point_coords))
            batch, channels, height, width = logits.shape
            point_indices = point_indices.unsqueeze(1).expand(-1, channels, -1)
            logits = logits.reshape(batch, channels, height * width).scatter_(2, point_indices, point_logits)
            logits = logits.view(batch, channels, height, width)
        return logits


# ------------------------------------------------------------------------------------------------- meta architecture


class SemanticSegmentor(nn.Module):
    """detectron2's SemanticSegmentor (inference): normalise, pad to 32 (`ImageList`), backbone, head,
    `sem_seg_postprocess` (crop the padding, resize to the requested output size). `pixel_mean`/`pixel_std` are
    persistent buffers, as in the detectron2 versions the authors used."""

    def __init__(self, depth: int, num_classes: int, point_rend: bool) -> None:
        super().__init__()
        self.backbone = FAN(depth)
        self.sem_seg_head = PointRendSemSegHead(num_classes) if point_rend else SemSegFPNHead(num_classes)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN_BGR).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD_BGR).view(-1, 1, 1))

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        images = [(x["image"] - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        stride = self.backbone.size_divisibility
        max_h = max(i.shape[-2] for i in images)
        max_w = max(i.shape[-1] for i in images)
        max_h, max_w = (max_h + stride - 1) // stride * stride, (max_w + stride - 1) // stride * stride
        batch = images[0].new_zeros(len(images), 3, max_h, max_w)
        for index, image in enumerate(images):
            batch[index, :, : image.shape[-2], : image.shape[-1]].copy_(image)
        results = self.sem_seg_head(self.backbone(batch))
        processed = []
        for result, inputs, image in zip(results, batched_inputs, images):
            height, width = image.shape[-2:]
            result = result[:, :height, :width].expand(1, -1, -1, -1)
            result = F.interpolate(
                result, size=(inputs.get("height", height), inputs.get("width", width)), mode="bilinear",
                align_corners=False,
            )[0]  # fmt: skip
            processed.append({"sem_seg": result})
        return processed


def resize_shortest_edge_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's `ResizeShortestEdge.get_output_shape` (sides rounded with int(x + 0.5))."""
    scale = short_edge * 1.0 / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


@torch.no_grad()
def predict(
    model: SemanticSegmentor, rgb: np.ndarray, short_edge: int, max_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """detectron2's `DefaultPredictor` on an RGB uint8 image: to BGR (the model's INPUT.FORMAT), ResizeShortestEdge
    (PIL bilinear on uint8), float, the model at the original size. Returns logits `(K, H, W)`."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    new_h, new_w = resize_shortest_edge_shape(height, width, short_edge, max_size)
    resized = np.asarray(PIL.Image.fromarray(bgr).resize((new_w, new_h), PIL.Image.BILINEAR))
    image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)).to(dtype)
    return model([{"image": image, "height": height, "width": width}])[0]["sem_seg"]


# ------------------------------------------------------------------------------------------- random "trained" weights


@torch.no_grad()
def randomize(model: SemanticSegmentor, seed: int, calibration_image: torch.Tensor) -> None:
    """Random weights with the scales of a trained network: He-initialised convs, random affine norms, FrozenBN
    statistics taken from a calibration pass and then perturbed (so they do not equal the batch statistics), DCN
    offsets of a few pixels (random biases) varying over the image, random masks, logits of order one."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=generator) * std + mean

    def uniform(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    for name, module in model.named_modules():
        if isinstance(module, DCN):
            fan_in = module.weight[0].numel()
            module.weight.copy_(normal(module.weight.shape, 1.0 / math.sqrt(fan_in)))
            module.bias.copy_(normal(module.bias.shape, 0.1))
            offset_channels = 2 * module.conv_offset_mask.out_channels // 3
            fan_in = module.conv_offset_mask.weight[0].numel()
            module.conv_offset_mask.weight.copy_(normal(module.conv_offset_mask.weight.shape, 0.5 / math.sqrt(fan_in)))
            bias = normal(module.conv_offset_mask.bias.shape, 1.0)
            bias[:offset_channels] *= 2.0  # offsets of about two pixels, plus the weight-driven variation
            module.conv_offset_mask.bias.copy_(bias)
        elif isinstance(module, (nn.Conv2d, nn.Conv1d)) and not name.endswith("conv_offset_mask"):
            fan_in = module.weight[0].numel()
            gain = 0.5 if name.endswith("predictor") else math.sqrt(2.0)
            module.weight.copy_(normal(module.weight.shape, gain / math.sqrt(fan_in)))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, nn.GroupNorm):
            module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
            module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, FrozenBatchNorm2d):
            # The last norm of a residual branch is small, as in trained ResNets, so depth does not blow up.
            low, high = (0.05, 0.2) if name.endswith("conv3.norm") else (0.5, 1.5)
            module.weight.copy_(uniform(module.weight.shape, low, high))
            module.bias.copy_(normal(module.bias.shape, 0.1))

    def calibrate(module: FrozenBatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
        module.running_mean.copy_(mean + 0.2 * var.sqrt() * normal(mean.shape))
        module.running_var.copy_(var * uniform(var.shape, 0.5, 2.0) + 1e-3)

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        image = calibration_image.to(model.pixel_mean.dtype)
        model.backbone.bottom_up((image - model.pixel_mean) / model.pixel_std)
    finally:
        for hook in hooks:
            hook.remove()


def dcn_offsets(model: SemanticSegmentor, rgb: np.ndarray, short_edge: int, max_size: int) -> list[torch.Tensor]:
    """The offsets every DCN predicts for an image (to check that a test exercises real deformation)."""
    offsets: list[torch.Tensor] = []

    def capture(module: DCN, inputs) -> None:
        o1, o2, _ = torch.chunk(module.conv_offset_mask(inputs[0][1]), 3, dim=1)
        offsets.append(torch.cat((o1, o2), dim=1))

    hooks = [m.register_forward_pre_hook(capture) for m in model.modules() if isinstance(m, DCN)]
    try:
        predict(model, rgb, short_edge, max_size)
    finally:
        for hook in hooks:
            hook.remove()
    return offsets
