"""Training MaskFormer + FaPN through `run_training`: the mask-target collator (ignore index honoured), the model's own
loss, evaluation at label resolution, the saved folder, and the original MaskFormer's optimiser groups."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from fapn_hf import MaskFormerFaPNForInstanceSegmentation, MaskFormerFaPNImageProcessor
from fapn_hf.families.maskformer_fapn.options import set_stochastic_depth
from fapn_hf.families.maskformer_fapn.targets import MaskClassificationCollator
from fapn_hf.inference.predictor import SegmentationPredictor
from fapn_hf.labels import COCO_STUFF_LABELS, COCO_STUFF_RAW_ID_TO_CONTIGUOUS, LABEL_MAPPINGS
from fapn_hf.tasks.semantic.data import SegmentationCollator
from fapn_hf.tasks.semantic.demo_data import DEMO_LABELS
from fapn_hf.training.args import DataArguments, FaPNTrainingArguments, ModelArguments
from fapn_hf.training.builders import build_model
from fapn_hf.training.run import run_training
from fapn_hf.training.trainer import parameter_groups

# A MaskFormer + FaPN on timm's ResNet-18 with a 64-wide pixel decoder, one 64-wide decoder layer and 8 queries.
TINY_MASKFORMER = dict(
    preset="maskformer-fapn-r101-cocostuff", backbone="resnet18", neck_channels=64, deformable_groups=4,
    num_queries=8, decoder_layers=1, decoder_hidden_size=64,
)  # fmt: skip
TINY_DATA = dict(
    demo_train_samples=8, demo_validation_samples=4, demo_size=64, crop_size=[64, 64], scale_range=[0.75, 1.25],
    num_visualizations=1,
)  # fmt: skip
TINY_TRAINING = dict(
    per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3, optim="adamw_torch",
    weight_decay=0.01, max_grad_norm=0.01, logging_steps=1, dataloader_num_workers=0, seed=0, save_strategy="no",
    dataloader_pin_memory=False, report_to=[],
)  # fmt: skip


@pytest.fixture(scope="module")
def maskformer_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("maskformer-run")
    return run_training(
        ModelArguments(**TINY_MASKFORMER),
        DataArguments(**TINY_DATA),
        FaPNTrainingArguments(output_dir=str(output_dir), max_steps=3, eval_strategy="no", **TINY_TRAINING),
    )


def test_a_few_steps_train_evaluate_and_save_a_folder_that_loads_and_predicts(maskformer_run):
    folder = maskformer_run.output_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    assert math.isfinite(metrics["train"]["train_loss"]) and metrics["train"]["train_loss"] > 0
    scores = metrics["eval"]
    assert 0 <= scores["eval_mean_iou"] <= 1 and 0 <= scores["eval_pixel_accuracy"] <= 1
    assert "eval_boundary_mean_iou" in scores
    # The semantic scores of a mask-classification model are not logits: evaluation reports no loss.
    assert "eval_loss" not in scores
    assert metrics["model"]["preset"] == TINY_MASKFORMER["preset"]

    model = AutoModelForSemanticSegmentation.from_pretrained(folder)
    assert isinstance(model, MaskFormerFaPNForInstanceSegmentation)
    assert model.config.id2label == dict(enumerate(DEMO_LABELS))
    assert model.config.decoder_config.num_queries == 8 and model.config.fpn_feature_size == 64
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(processor, MaskFormerFaPNImageProcessor)
    predictor = SegmentationPredictor(model, processor)
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    prediction = predictor.predict(image)
    assert prediction.shape == (40, 56) and 0 <= prediction.min() and prediction.max() < len(DEMO_LABELS)
    # The trained weights were saved: the reloaded model gives the trainer's model's scores.
    trained = maskformer_run.trainer.model.eval()
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = trained(pixel_values=pixel_values).class_queries_logits
        reloaded = model.eval()(pixel_values=pixel_values).class_queries_logits
    torch.testing.assert_close(reloaded, expected)


def test_training_batches_are_mask_targets_and_evaluation_batches_keep_label_resolution(maskformer_run):
    trainer = maskformer_run.trainer
    assert isinstance(trainer.data_collator, MaskClassificationCollator)
    assert isinstance(trainer.eval_data_collator, SegmentationCollator)
    train_batch = next(iter(trainer.get_train_dataloader()))
    assert {"pixel_values", "pixel_mask", "mask_labels", "class_labels"} <= set(train_batch)
    assert "labels" not in train_batch
    eval_batch = next(iter(trainer.get_eval_dataloader()))
    assert {"pixel_values", "labels", "image_sizes", "label_sizes"} <= set(eval_batch)
    # The training collator is back in place after building the evaluation loader.
    assert isinstance(trainer.data_collator, MaskClassificationCollator)


def test_the_ignore_index_is_no_mask_and_no_class_end_to_end(maskformer_run):
    dataset = maskformer_run.trainer.train_dataset
    samples = [dataset[index] for index in range(len(dataset))]
    ignore = maskformer_run.trainer.model.config.semantic_loss_ignore_index
    assert ignore == 255
    assert any((sample["labels"] == ignore).any() for sample in samples), "the demo data should hold ignored pixels"
    batch = maskformer_run.trainer.data_collator(samples)
    for sample, masks, classes, pixel_mask in zip(
        samples, batch["mask_labels"], batch["class_labels"], batch["pixel_mask"]
    ):
        labels = sample["labels"]
        height, width = labels.shape
        expected = torch.unique(labels[labels != ignore])
        assert torch.equal(classes, expected)
        # Each labelled pixel in exactly the mask of its class; ignored pixels and padding in none.
        coverage = masks.sum(dim=0)
        assert torch.equal(coverage[:height, :width], (labels != ignore).float())
        assert coverage[height:].sum() == 0 and coverage[:, width:].sum() == 0
        for mask, label in zip(masks, classes):
            assert torch.equal(mask[:height, :width].bool(), labels == label)
        assert pixel_mask[:height, :width].all()
    # And the model trains on them: the Hungarian-matched loss of this batch is finite.
    model = maskformer_run.trainer.model.train()
    loss = model(**{key: batch[key] for key in ("pixel_values", "pixel_mask", "mask_labels", "class_labels")}).loss
    assert torch.isfinite(loss)


def test_parameter_groups_follow_the_original_maskformer_optimiser():
    model = build_model(ModelArguments(**TINY_MASKFORMER), list(DEMO_LABELS))
    groups = parameter_groups(model, 1e-4, 0.05, backbone_lr_multiplier=0.1, decay_bias=True)
    by_id = {id(parameter): group for group in groups for parameter in group["params"]}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert sum(len(group["params"]) for group in groups) == len(trainable) == len(by_id)
    modules = dict(model.named_modules())
    checked = {"backbone": 0, "query": 0, "group_norm": 0, "layer_norm": 0, "bias": 0}
    for name, parameter in trainable:
        group = by_id[id(parameter)]
        in_backbone = name.startswith("model.pixel_level_module.encoder.")
        assert group["lr"] == pytest.approx(1e-5 if in_backbone else 1e-4), name
        module = modules[name.rsplit(".", 1)[0]]
        if name == "model.transformer_module.queries_embedder.weight":
            expected_decay, checked["query"] = 0.0, checked["query"] + 1
        elif isinstance(module, torch.nn.GroupNorm):
            expected_decay, checked["group_norm"] = 0.0, checked["group_norm"] + 1
        elif isinstance(module, torch.nn.LayerNorm):
            expected_decay, checked["layer_norm"] = 0.0, checked["layer_norm"] + 1
        else:
            expected_decay = 0.05  # conv / linear weights and, as in the original, their biases
            checked["bias"] += name.endswith(".bias")
        checked["backbone"] += in_backbone
        assert group["weight_decay"] == expected_decay, name
    assert all(checked.values()), checked
    # The backbone's BatchNorms are frozen (detectron2's FrozenBN): no parameters left to optimise there.
    assert not any("bn" in name for name, _ in trainable if name.startswith("model.pixel_level_module.encoder."))


def test_the_trainer_decays_biases_but_not_norms_or_queries_of_a_maskformer(maskformer_run):
    model, optimizer = maskformer_run.trainer.model, maskformer_run.trainer.optimizer
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    weight_decay = maskformer_run.trainer.args.weight_decay
    assert weight_decay > 0
    assert decay[id(model.class_predictor.bias)] == decay[id(model.class_predictor.weight)] == weight_decay
    assert decay[id(model.model.transformer_module.queries_embedder.weight)] == 0.0
    assert decay[id(model.model.transformer_module.decoder.layernorm.weight)] == 0.0


def test_fapn_only_options_and_bad_values_are_refused_for_maskformer():
    with pytest.raises(ValueError, match="use_fsm"):
        build_model(ModelArguments(**TINY_MASKFORMER, use_fsm=True), list(DEMO_LABELS))
    with pytest.raises(ValueError, match="decoder_hidden_size must be a positive multiple of 32.*got 48"):
        build_model(ModelArguments(**{**TINY_MASKFORMER, "decoder_hidden_size": 48}), list(DEMO_LABELS))
    with pytest.raises(ValueError, match="num_queries.*maskformer"):
        build_model(ModelArguments(preset="fapn-r18", num_queries=10), list(DEMO_LABELS))
    with pytest.raises(ValueError, match="no timm transformer blocks"):
        build_model(ModelArguments(**TINY_MASKFORMER, drop_path_rate=0.3), list(DEMO_LABELS))


def test_a_saved_maskformer_is_fine_tuned_into_another_label_set(maskformer_run):
    """`model_name_or_path` with a MaskFormer + FaPN folder (the demo recipe's model, 6 classes) and 3 new classes:
    every weight but the classifier is the saved one, the classifier and the loss's class weights are new (the
    original's `nn.Linear` initialisation, no-object weight last), and the recipe's own architecture options, which
    match the folder, are accepted; options that would change the model are refused with what the model has."""
    folder = str(maskformer_run.output_dir)
    saved = MaskFormerFaPNForInstanceSegmentation.from_pretrained(folder)
    recipe = {**TINY_MASKFORMER, "freeze_backbone_norm": False}  # as the run that wrote the folder
    model = build_model(ModelArguments(**recipe, model_name_or_path=folder), ["sky", "road", "car"])
    assert isinstance(model, MaskFormerFaPNForInstanceSegmentation)
    assert model.config.id2label == {0: "sky", 1: "road", 2: "car"} and model.config.num_labels == 3
    new_weights, old_weights = model.state_dict(), saved.state_dict()
    renewed = {"class_predictor.weight", "class_predictor.bias", "criterion.empty_weight"}
    for name, value in old_weights.items():
        if name not in renewed:
            torch.testing.assert_close(new_weights[name], value, msg=name)
    bound = 1 / math.sqrt(model.class_predictor.in_features)
    assert model.class_predictor.weight.shape == (4, 64) and model.class_predictor.bias.abs().max() <= bound
    assert 0.8 * bound < model.class_predictor.weight.abs().max() <= bound and model.class_predictor.bias.any()
    eos = model.config.no_object_weight
    torch.testing.assert_close(model.criterion.empty_weight, torch.tensor([1.0, 1.0, 1.0, eos]))
    # It trains on the new classes.
    batch = MaskClassificationCollator(num_labels=3)(
        [{"pixel_values": torch.randn(3, 64, 64), "labels": torch.randint(0, 3, (64, 64))} for _ in range(2)]
    )
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.class_predictor.weight.grad.abs().sum() > 0

    with pytest.raises(ValueError, match=r"num_queries=16 \(the model has 8\)"):
        build_model(ModelArguments(**{**recipe, "num_queries": 16}, model_name_or_path=folder), list(DEMO_LABELS))
    with pytest.raises(ValueError, match=r"head_channels=64 \(a MaskFormer \+ FaPN model has none\)"):
        build_model(ModelArguments(**recipe, head_channels=64, model_name_or_path=folder), list(DEMO_LABELS))


def test_stochastic_depth_rises_linearly_over_the_swin_blocks():
    import timm
    from timm.layers import DropPath

    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, features_only=True, embed_dim=32, depths=(1, 1, 2, 1),
        num_heads=(1, 1, 1, 1),
    )  # fmt: skip
    assert set_stochastic_depth(swin, 0.3) == 5
    blocks = [m for m in swin.modules() if hasattr(m, "drop_path1")]
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)
    rates = [block.drop_path2.drop_prob for block in blocks[1:]]
    assert all(isinstance(block.drop_path1, DropPath) for block in blocks[1:])
    assert rates == pytest.approx([0.075, 0.15, 0.225, 0.3])
    with pytest.raises(ValueError, match=r"drop_path_rate must lie in \[0, 1\), got 1.5"):
        set_stochastic_depth(swin, 1.5)


def test_coco_stuff_raw_ids_map_to_the_171_contiguous_classes():
    mapping = LABEL_MAPPINGS["cocostuff"]
    assert mapping is COCO_STUFF_RAW_ID_TO_CONTIGUOUS
    assert sorted(mapping.values()) == list(range(len(COCO_STUFF_LABELS)))
    # Raw ids are COCO category ids minus one: person (1) -> 0, banner (92, the first stuff) -> 80, wood (182) -> 170.
    assert mapping[0] == 0 and mapping[91] == 80 and mapping[181] == 170
    assert COCO_STUFF_LABELS[mapping[91]] == "banner" and COCO_STUFF_LABELS[mapping[181]] == "wood"
    # The unused category ids are no class (12, between fire hydrant 11 and stop sign 13; 91, after the things).
    assert 11 not in mapping and 90 not in mapping
    assert COCO_STUFF_LABELS[mapping[10]] == "fire hydrant" and COCO_STUFF_LABELS[mapping[12]] == "stop sign"
