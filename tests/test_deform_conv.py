"""The pure-PyTorch modulated deformable convolution against torchvision's kernel."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops

from fapn_hf.modeling.deform_conv import ModulatedDeformConv2d, deform_conv2d

CASES = [
    # batch, in, out, height, width, kernel, stride, padding, dilation, deformable groups, weight groups
    dict(n=2, c=8, o=6, h=9, w=11, k=3, s=1, p=1, d=1, g=2, wg=1),
    dict(n=1, c=8, o=4, h=10, w=7, k=3, s=2, p=2, d=2, g=4, wg=2),
    dict(n=1, c=6, o=6, h=8, w=8, k=1, s=1, p=0, d=1, g=3, wg=3),
    dict(n=3, c=4, o=5, h=6, w=9, k=3, s=1, p=0, d=1, g=1, wg=1),
    dict(n=1, c=16, o=8, h=5, w=13, k=(3, 2), s=(1, 2), p=(1, 0), d=(2, 1), g=8, wg=1),
]
NAMES = ("input", "offset", "weight", "bias", "mask")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _random_inputs(case, dtype=torch.float64, offset_scale=3.0):
    kh, kw = _pair(case["k"])
    (sh, sw), (ph, pw), (dh, dw) = _pair(case["s"]), _pair(case["p"]), _pair(case["d"])
    out_h = (case["h"] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (case["w"] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    taps, groups = kh * kw, case["g"]
    return dict(
        input=torch.randn(case["n"], case["c"], case["h"], case["w"], dtype=dtype, requires_grad=True),
        # Large offsets push many taps outside the image, so the zero-padding rules are exercised too.
        offset=(torch.randn(case["n"], 2 * groups * taps, out_h, out_w, dtype=dtype) * offset_scale).requires_grad_(),
        weight=torch.randn(case["o"], case["c"] // case["wg"], kh, kw, dtype=dtype, requires_grad=True),
        bias=torch.randn(case["o"], dtype=dtype, requires_grad=True),
        mask=torch.rand(case["n"], groups * taps, out_h, out_w, dtype=dtype, requires_grad=True),
    )


def _positional(inputs, case):
    """torchvision's positional argument order: input, offset, weight, bias, stride, padding, dilation, mask."""
    return [
        inputs["input"], inputs["offset"], inputs["weight"], inputs["bias"], case["s"], case["p"], case["d"],
        inputs["mask"],
    ]  # fmt: skip


def _forward_backward(fn, inputs, case, grad_output=None):
    out = fn(*_positional(inputs, case))
    if grad_output is None:
        grad_output = torch.randn_like(out)
    grads = torch.autograd.grad(out, [inputs[name] for name in NAMES], grad_output)
    return out, grads, grad_output


def _budget(case, rows_per_band):
    """`max_column_elements` that makes the kernel sample `rows_per_band` output rows per band (None: one band)."""
    if rows_per_band is None:
        return 10**9
    kh, kw = _pair(case["k"])
    (_, sw), (_, pw), (_, dw) = _pair(case["s"]), _pair(case["p"]), _pair(case["d"])
    out_w = (case["w"] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return rows_per_band * case["n"] * case["c"] * kh * kw * out_w


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("rows_per_band", [None, 1, 3], ids=["one-band", "1-row-bands", "3-row-bands"])
def test_matches_torchvision_values_and_gradients(case, rows_per_band):
    inputs = _random_inputs(case)
    expected, expected_grads, grad_output = _forward_backward(torchvision.ops.deform_conv2d, inputs, case)

    def ours(*args):
        return deform_conv2d(*args, implementation="torch", max_column_elements=_budget(case, rows_per_band))

    actual, actual_grads, _ = _forward_backward(ours, inputs, case, grad_output)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-9)
    for name, a, e in zip(NAMES, actual_grads, expected_grads):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-8, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_float32_within_1e4_at_fapn_like_size():
    case = dict(n=2, c=64, o=64, h=24, w=40, k=3, s=1, p=1, d=1, g=8, wg=1)
    inputs = _random_inputs(case, dtype=torch.float32, offset_scale=2.0)
    with torch.no_grad():
        inputs["weight"] /= (64 * 9) ** 0.5  # the scale of an initialised or trained layer
        # Bilinear sampling is not differentiable at integer positions; float rounding may put the two kernels on
        # different sides there, so keep the offsets a little away from integers.
        offset = inputs["offset"]
        fraction = offset - offset.floor()
        offset += torch.where(fraction < 0.01, 0.02, 0.0) - torch.where(fraction > 0.99, 0.02, 0.0)
    expected, expected_grads, grad_output = _forward_backward(torchvision.ops.deform_conv2d, inputs, case)
    actual, actual_grads, _ = _forward_backward(deform_conv2d, inputs, case, grad_output)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    for name, a, e in zip(NAMES, actual_grads, expected_grads):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_without_mask_is_dcn_v1():
    case = CASES[0]
    inputs = _random_inputs(case)
    args = (inputs["input"], inputs["offset"], inputs["weight"], inputs["bias"], case["s"], case["p"], case["d"])
    torch.testing.assert_close(deform_conv2d(*args), torchvision.ops.deform_conv2d(*args))


def test_zero_offsets_and_unit_mask_equal_a_regular_convolution():
    x, weight, bias = torch.randn(2, 8, 9, 10), torch.randn(5, 8, 3, 3), torch.randn(5)
    offset, mask = torch.zeros(2, 2 * 9, 9, 10), torch.ones(2, 9, 9, 10)
    torch.testing.assert_close(
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask),
        F.conv2d(x, weight, bias, padding=1),
        atol=1e-5,
        rtol=1e-5,
    )


def test_integer_offsets_shift_the_sampling_grid():
    """An offset of (+1, -2) on every tap of a 1x1 kernel reads the pixel one row down and two columns left."""
    x = torch.randn(1, 3, 6, 7)
    weight = torch.eye(3).view(3, 3, 1, 1)
    offset = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 6, 7).contiguous()
    out = deform_conv2d(x, offset, weight)
    expected = torch.zeros_like(x)
    expected[:, :, :5, 2:] = x[:, :, 1:, :5]
    torch.testing.assert_close(out, expected)


def test_module_offset_layout_is_the_original_dcn_v2_layout():
    """SPEC 2.2: the offset/mask conv's first two thirds are fed, in order, as torchvision's offset; the last third
    through a sigmoid as the mask. A different split or interleave would break converted weights."""
    groups, channels = 4, 8
    module = ModulatedDeformConv2d(channels, 6, 3, padding=1, deformable_groups=groups, guide_channels=5)
    torch.nn.init.normal_(module.offset_mask_conv.weight, std=0.5)
    torch.nn.init.normal_(module.offset_mask_conv.bias, std=0.5)
    x, guide = torch.randn(2, channels, 7, 9), torch.randn(2, 5, 7, 9)
    om = module.offset_mask_conv(guide)
    taps = 9
    dy_dx = torch.cat([om[:, : groups * taps], om[:, groups * taps : 2 * groups * taps]], dim=1)
    mask = torch.sigmoid(om[:, 2 * groups * taps :])
    expected = torchvision.ops.deform_conv2d(x, dy_dx, module.weight, module.bias, padding=1, mask=mask)
    torch.testing.assert_close(module(x, guide), expected, atol=1e-5, rtol=1e-5)


def test_fresh_module_samples_the_regular_grid_with_mask_one_half():
    module = ModulatedDeformConv2d(8, 6, 3, padding=1, deformable_groups=2)
    x = torch.randn(1, 8, 6, 6)
    offset, mask = module.offsets_and_mask(x)
    assert torch.count_nonzero(offset) == 0
    assert torch.all(mask == 0.5)
    torch.testing.assert_close(
        module(x), F.conv2d(x, 0.5 * module.weight, module.bias, padding=1), atol=1e-5, rtol=1e-5
    )


def test_implementation_switch_selects_torchvision():
    case = CASES[1]
    inputs = {k: v.detach() for k, v in _random_inputs(case).items()}
    args = _positional(inputs, case)
    expected = torchvision.ops.deform_conv2d(*args)
    torch.testing.assert_close(deform_conv2d(*args, implementation="torchvision"), expected, atol=0, rtol=0)
    torch.testing.assert_close(deform_conv2d(*args, implementation="auto"), expected)  # auto on CPU = pure PyTorch
    with pytest.raises(ValueError, match="implementation must be one of"):
        deform_conv2d(*args, implementation="cuda-magic")


@pytest.mark.parametrize(
    "offset_channels, mask_channels, message",
    [(17, 9, "offset has 17 channels"), (18, 8, "mask has shape"), (36, 18, "cannot be split into 2 deformable")],
)
def test_bad_arguments_are_named(offset_channels, mask_channels, message):
    x, weight = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=message):
        deform_conv2d(
            x, torch.zeros(1, offset_channels, 5, 5), weight, padding=1, mask=torch.ones(1, mask_channels, 5, 5)
        )


@pytest.mark.parametrize("batch", [1, 2])
def test_bands_bound_the_column_buffer_forward_and_backward(monkeypatch, batch):
    """With a small budget the kernel samples one band of rows at a time, in the forward pass and in the backward
    pass (gathers): never the whole column tensor, and every band (including the shorter last one) once per
    sampling."""
    import fapn_hf.modeling.deform_conv as dc

    sizes = []

    def spy(*args):
        columns = gather(*args)
        sizes.append(columns.numel())
        return columns

    gather = dc._gather_columns
    monkeypatch.setattr(dc, "_gather_columns", spy)
    x, weight = torch.randn(batch, 16, 40, 24, requires_grad=True), torch.randn(16, 16, 3, 3, requires_grad=True)
    offset = (torch.randn(batch, 18, 40, 24) * 2).requires_grad_()
    mask = torch.rand(batch, 9, 40, 24, requires_grad=True)
    budget = batch * 16 * 9 * 24 * 12  # forward: bands of 12, 12, 12, 4 rows; backward: a quarter, 3 rows
    out = deform_conv2d(x, offset, weight, padding=1, mask=mask, max_column_elements=budget)
    assert len(sizes) == 4 and max(sizes) == budget
    assert sum(sizes) == batch * 16 * 9 * 24 * 40
    grad_output = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, offset, weight, mask), grad_output)
    # Per band: the columns again (weight gradient) and their derivatives along y, x and the mask.
    backward_sizes = sizes[4:]
    assert len(backward_sizes) == 14 * 4 and max(backward_sizes) == budget // 4

    inputs = [t.detach().double().requires_grad_() for t in (x, offset, weight, mask)]
    expected = torchvision.ops.deform_conv2d(*inputs[:3], padding=1, mask=inputs[3])
    expected_grads = torch.autograd.grad(expected, inputs, grad_output.double())
    torch.testing.assert_close(out, expected.float(), atol=1e-4, rtol=1e-4)
    for actual, wanted in zip(grads, expected_grads):
        torch.testing.assert_close(actual, wanted.float(), atol=1e-3, rtol=1e-4)


def test_inference_path_equals_training_path():
    """Without gradients the kernel runs its forward directly; with them, through its autograd function. Both
    compute the same thing (up to the matrix product's round-off, which may depend on buffer alignment)."""
    case = dict(n=2, c=16, o=8, h=11, w=9, k=3, s=1, p=1, d=1, g=4, wg=1)
    inputs = _random_inputs(case)
    args = _positional(inputs, case)
    training = deform_conv2d(*args, max_column_elements=_budget(case, 4))
    assert training.grad_fn is not None
    with torch.no_grad():
        no_grad = deform_conv2d(*args, max_column_elements=_budget(case, 4))
    with torch.inference_mode():
        inference = deform_conv2d(*args, max_column_elements=_budget(case, 4))
    assert no_grad.grad_fn is None
    torch.testing.assert_close(training.detach(), no_grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(no_grad, inference, atol=1e-12, rtol=1e-12)
    assert training.is_contiguous() and inference.is_contiguous()  # NCHW, as torchvision returns


def test_offsets_far_outside_and_exactly_on_the_border():
    """Positions far outside the image read zeros; positions exactly on -1, 0, size - 1 and size follow
    torchvision's conventions for values and gradients (a coordinate outside (-1, size) gets no gradient)."""
    case = dict(n=1, c=8, o=4, h=6, w=7, k=3, s=1, p=1, d=1, g=2, wg=1)
    inputs = _random_inputs(case)
    with torch.no_grad():
        offset = inputs["offset"].view(1, 2, 9, 2, 6, 7)
        offset[:, 0, :4] = torch.tensor([1e4, -1e4, 3e3, -7e3], dtype=torch.float64).view(4, 1, 1, 1)
        # Tap (1, 1) of group 1 sits on the pixel itself: integer offsets land on exact positions, among them -1,
        # 0, H - 1 and H (y) and -1, W (x).
        rows = torch.arange(6, dtype=torch.float64).view(6, 1)
        cols = torch.arange(7, dtype=torch.float64).view(1, 7)
        offset[0, 1, 4, 0] = torch.tensor([-1.0, 0.0, 5.0, 6.0, 2.0, -3.0]).view(6, 1) - rows
        offset[0, 1, 4, 1] = torch.tensor([-1.0, 0.0, 6.0, 7.0, 3.0, 2.0, -2.0]).view(1, 7) - cols
    expected, expected_grads, grad_output = _forward_backward(torchvision.ops.deform_conv2d, inputs, case)
    actual, actual_grads, _ = _forward_backward(deform_conv2d, inputs, case, grad_output)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-9)
    for name, a, e in zip(NAMES, actual_grads, expected_grads):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-8, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_without_mask_gradients_match_torchvision():
    case = CASES[1]
    inputs = _random_inputs(case)
    names = ("input", "offset", "weight", "bias")
    args = [inputs[name] for name in names]
    expected = torchvision.ops.deform_conv2d(*args, stride=case["s"], padding=case["p"], dilation=case["d"])
    actual = deform_conv2d(*args, stride=case["s"], padding=case["p"], dilation=case["d"])
    grad_output = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, args, grad_output)
    actual_grads = torch.autograd.grad(actual, args, grad_output)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-9)
    for name, a, e in zip(names, actual_grads, expected_grads):
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-8, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_strided_and_channels_last_inputs():
    """Views and channels-last tensors (what a conv of a channels-last model returns) give the same result."""
    case = dict(n=2, c=16, o=8, h=9, w=10, k=3, s=1, p=1, d=1, g=4, wg=1)
    inputs = {k: v.detach() for k, v in _random_inputs(case).items()}
    expected = deform_conv2d(*_positional(inputs, case))
    offset_and_mask = torch.cat([inputs["offset"], inputs["mask"]], dim=1)  # like slices of one conv output
    strided = dict(
        inputs,
        input=inputs["input"].contiguous(memory_format=torch.channels_last),
        offset=offset_and_mask[:, : inputs["offset"].shape[1]],
        mask=offset_and_mask[:, inputs["offset"].shape[1] :],
    )
    torch.testing.assert_close(deform_conv2d(*_positional(strided, case)), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.03), (torch.float16, 0.005)])
def test_half_precision_keeps_fractional_positions_on_wide_maps(dtype, tolerance):
    """Sampling positions are computed in float32 whatever the input dtype: in bfloat16, x = 299.5 would round to an
    integer and every sample on the right of a 300-wide map would land on the wrong pixel."""
    x, weight = torch.randn(1, 16, 4, 300), torch.randn(8, 16, 3, 3) / 12
    offset, mask = torch.rand(1, 36, 4, 300) - 0.5, torch.rand(1, 18, 4, 300)
    inputs = [t.requires_grad_() for t in (x, offset, weight, mask)]
    low = [t.detach().to(dtype).requires_grad_() for t in inputs]
    expected = deform_conv2d(*inputs[:3], padding=1, mask=inputs[3])
    actual = deform_conv2d(*low[:3], padding=1, mask=low[3])
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.float(), expected, atol=tolerance, rtol=tolerance)
    grad_output = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, inputs, grad_output)
    actual_grads = torch.autograd.grad(actual, low, grad_output.to(dtype))
    for a, e in zip(actual_grads, expected_grads):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e, atol=10 * tolerance, rtol=10 * tolerance)


@pytest.mark.slow
def test_inference_and_training_compile_without_graph_breaks():
    """The kernel traces into one graph (no data-dependent Python control flow, no host synchronisation), in
    inference and through its autograd function; dynamo-only backend, so the test stays fast."""
    module = ModulatedDeformConv2d(8, 8, 3, padding=1, deformable_groups=2, max_column_elements=8 * 9 * 12 * 4)
    torch.nn.init.normal_(module.offset_mask_conv.weight, std=0.3)
    x = torch.randn(1, 8, 10, 12, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), module(x))
    compiled(x).square().sum().backward()
    compiled_grad, x.grad = x.grad, None
    module(x).square().sum().backward()
    torch.testing.assert_close(compiled_grad, x.grad)


class _Deform(torch.nn.Module):
    """The module's deformable convolution with the offsets and the mask as inputs, for an ONNX graph."""

    def __init__(self, module: ModulatedDeformConv2d) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.module.deform(x, offset, mask)


def _border_and_far_offsets(height: int, width: int, groups: int, generator: torch.Generator) -> torch.Tensor:
    """Offsets of several pixels, some taps far outside the map, and one tap of group 0 landing exactly on rows
    -1, 0, H - 1, H and columns -1, 0, W - 1, W (torchvision's zero-padding conventions at the border)."""
    offset = torch.randn(1, groups, 9, 2, height, width, generator=generator) * 3
    offset[0, groups - 1, :4, 0] = torch.tensor([1e4, -1e4, 3e3, -7e3]).view(4, 1, 1)
    rows = torch.arange(height, dtype=torch.float32).view(height, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, width)
    targets_y = torch.tensor([-1.0, 0.0, height - 1.0, float(height)]).repeat(height // 4 + 1)[:height]
    targets_x = torch.tensor([-1.0, 0.0, width - 1.0, float(width)]).repeat(width // 4 + 1)[:width]
    offset[0, 0, 4, 0] = targets_y.view(height, 1) - rows  # tap (1, 1) samples its own pixel at offset 0
    offset[0, 0, 4, 1] = targets_x.view(1, width) - cols
    return offset.view(1, groups * 18, height, width)


@pytest.mark.slow
def test_exports_to_onnx_as_grid_sample_and_matches_torchvision_in_onnxruntime(tmp_path):
    """The exported graph samples with GridSample (not a gather over the whole map, issue 22), takes any size, and
    onnxruntime's result equals torchvision's with large offsets, taps far outside and exactly on the border."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export check needs the [test] extra")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    groups, channels = 2, 8
    module = ModulatedDeformConv2d(channels, 6, 3, padding=1, deformable_groups=groups, implementation="torch")
    module = module.eval()
    generator = torch.Generator().manual_seed(0)

    def inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(1, channels, height, width, generator=generator)
        mask = torch.rand(1, groups * 9, height, width, generator=generator)
        return x, _border_and_far_offsets(height, width, groups, generator), mask

    path = tmp_path / "dcn.onnx"
    height, width = torch.export.Dim("height", min=2, max=512), torch.export.Dim("width", min=2, max=512)
    dynamic = {name: {2: height, 3: width} for name in ("x", "offset", "mask")}
    torch.onnx.export(_Deform(module), inputs(12, 16), str(path), dynamo=True, opset_version=19, dynamic_shapes=dynamic)
    op_types = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    # One GridSample and one MatMul do the work; the former gather-and-sum left Gather over the map and ReduceSum.
    assert op_types["GridSample"] == 1 and op_types["MatMul"] == 1
    assert not {"ReduceSum", "GatherElements", "GatherND", "ScatterND", "Loop"} & set(op_types)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [(12, 16), (9, 23), (30, 7)]:
        x, offset, mask = inputs(*size)
        feeds = dict(zip([i.name for i in session.get_inputs()], (x.numpy(), offset.numpy(), mask.numpy())))
        (actual,) = session.run(None, feeds)
        with torch.no_grad():
            expected = torchvision.ops.deform_conv2d(x, offset, module.weight, module.bias, padding=1, mask=mask)
        torch.testing.assert_close(torch.from_numpy(actual), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_graph_forward_equals_the_eager_one_and_torchvision(monkeypatch, dtype):
    """Traced or exported, the forward samples with grid_sample (ONNX GridSample); eager, it gathers from the NHWC
    table. Both give torchvision's result, out-of-image positions and several deformable groups included."""
    import fapn_hf.modeling.deform_conv as dc

    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 11, 13, generator=generator, dtype=dtype)
    offset = torch.randn(2, 2 * 2 * 9, 11, 13, generator=generator, dtype=dtype) * 4  # many corners outside
    mask = torch.rand(2, 2 * 9, 11, 13, generator=generator, dtype=dtype)
    weight = torch.randn(6, 8, 3, 3, generator=generator, dtype=dtype)
    bias = torch.randn(6, generator=generator, dtype=dtype)
    expected = torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    eager = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    grid_calls = []
    sampled_columns = dc._sampled_columns
    monkeypatch.setattr(dc, "_sampled_columns", lambda *args: grid_calls.append(1) or sampled_columns(*args))
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    graph = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert len(grid_calls) == 1  # one band, one grid_sample
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(eager, expected, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(graph, expected, atol=tolerance, rtol=tolerance)
