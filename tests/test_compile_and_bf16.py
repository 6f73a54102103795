"""`torch.compile(fullgraph=True)` traces FaPN's forward with no graph break (eval, and training with labels and
PointRend), with outputs equal to eager; bf16 autocast on the CPU runs, and the deformable convolution's bf16 error is
that of a dense convolution in bf16. On a busy 2-core machine the compiled tests took 18 s (eval, backend "eager") and
36 s (training, backend "aot_eager", which also traces the backward pass)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from fapn_hf import FaPNForSemanticSegmentation, deform_conv2d
from fapn_hf.labels import check_label_values


def with_offsets(model: FaPNForSemanticSegmentation, std: float = 0.1) -> FaPNForSemanticSegmentation:
    with torch.no_grad():
        for alignment in model.fapn.neck.alignments:
            torch.nn.init.normal_(alignment.deform_conv.offset_mask_conv.weight, std=std)
    return model


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.mark.slow
def test_eval_forward_compiles_as_one_graph_and_matches_eager():
    model = with_offsets(FaPNForSemanticSegmentation(tiny_config(use_point_rend=True))).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    explanation = torch._dynamo.explain(model)(pixel_values)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).logits, model(pixel_values).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_training_step_with_labels_compiles_fullgraph_and_matches_eager():
    # float64: AOT autograd may sum gradients in another order, which float32 round-off turns into ~1e-4 relative
    # differences on large reductions (the stem conv); in float64 the two must agree to round-off.
    model = with_offsets(FaPNForSemanticSegmentation(tiny_config(use_point_rend=True))).train().double()
    pixel_values = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 64, 96))
    labels[:, :4] = 255  # ignored pixels
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # the label check would break the graph

    def loss_and_gradients(forward) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)  # PointRend's random training points
        loss = forward(pixel_values, labels=labels).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    compiled_loss, compiled_grads = loss_and_gradients(compiled)
    eager_loss, eager_grads = loss_and_gradients(model)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-10, rtol=1e-10)
    assert compiled_grads.keys() == eager_grads.keys()
    deform_weights = [name for name in eager_grads if name.endswith("deform_conv.weight")]
    assert deform_weights and all(eager_grads[name].abs().sum() > 0 for name in deform_weights)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-10, rtol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


def test_label_values_are_checked_outside_the_compiled_region():
    model = FaPNForSemanticSegmentation(tiny_config())
    labels = torch.full((1, 32, 32), 9)
    # Eager forward checks them itself; the same check (the one FaPNTrainer.compute_loss runs) stands alone.
    with pytest.raises(ValueError, match=r"labels contain values \[9\] \(1024 pixels\) outside the label map"):
        model(torch.zeros(1, 3, 32, 32), labels=labels)
    with pytest.raises(ValueError, match=r"labels contain values \[-1, 9\].*\[0, 4\).*255"):
        check_label_values(torch.tensor([[0, 9, -1, 255]]), num_labels=4, ignore_index=255)
    check_label_values(torch.tensor([[0, 3, 255]]), num_labels=4, ignore_index=255)


def test_trainer_checks_label_values_before_the_model(tmp_path):
    from fapn_hf.training.args import FaPNTrainingArguments
    from fapn_hf.training.trainer import FaPNTrainer

    model = FaPNForSemanticSegmentation(tiny_config())
    trainer = FaPNTrainer(model=model, args=FaPNTrainingArguments(output_dir=str(tmp_path), report_to="none"))
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    inputs = {"pixel_values": torch.zeros(1, 3, 32, 32), "labels": torch.full((1, 32, 32), 7)}
    with pytest.raises(ValueError, match=r"labels contain values \[7\]"):
        trainer.compute_loss(model, inputs)
    assert not calls  # refused before the (possibly compiled) forward ran


def test_deform_conv_bf16_autocast_error_is_that_of_a_dense_conv():
    """Positions stay float32, the corner gathers and the matrix product run in bf16: the error against float64 is
    of the size of a dense 3x3 convolution's under the same autocast."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 40, 56, generator=generator)
    offset = 2 * torch.randn(1, 2 * 8 * 9, 40, 56, generator=generator)
    mask = torch.rand(1, 8 * 9, 40, 56, generator=generator)
    weight = torch.randn(64, 64, 3, 3, generator=generator) / 24
    bias = torch.randn(64, generator=generator)
    exact = deform_conv2d(x.double(), offset.double(), weight.double(), bias.double(), padding=1, mask=mask.double())
    dense_exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # FaPN's offsets and inputs come out of bf16 convolutions under autocast.
        result = deform_conv2d(x.bfloat16(), offset.bfloat16(), weight, bias, padding=1, mask=mask.bfloat16())
        dense = F.conv2d(x, weight, bias, padding=1)
    assert result.dtype == torch.bfloat16
    bf16_offsets_exact = deform_conv2d(
        x.bfloat16().double(), offset.bfloat16().double(), weight.double(), bias.double(), padding=1,
        mask=mask.bfloat16().double(),
    )  # fmt: skip
    error = (result.double() - bf16_offsets_exact).abs().max()
    dense_error = (dense.double() - dense_exact).abs().max()
    assert error <= 2 * dense_error, (error, dense_error)
    assert (result.double() - exact).abs().mean() < 0.05 * exact.abs().mean()


def test_model_under_bf16_autocast_keeps_the_label_map():
    torch.manual_seed(0)
    model = with_offsets(FaPNForSemanticSegmentation(tiny_config()), std=0.05).eval()
    pixel_values = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        reference = model(pixel_values).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(pixel_values).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    agreement = (logits.float().argmax(1) == reference.argmax(1)).float().mean()
    assert agreement > 0.98, agreement
    assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max()
