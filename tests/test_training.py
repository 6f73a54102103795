"""Data loading and validation, the Trainer integration, resume and DDP, on the demo data with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation, EvalPrediction, TrainerCallback

from fapn_hf.families import family_of_preset
from fapn_hf.modeling.image_processing_fapn import FaPNImageProcessor
from fapn_hf.tasks.semantic.data import (
    DataError,
    LabelSpec,
    SegmentationCollator,
    SegmentationDataset,
    check_samples,
    load_segmentation_dataset,
)
from fapn_hf.tasks.semantic.demo_data import DEMO_LABELS
from fapn_hf.tasks.semantic.metrics import SegmentationMetrics
from fapn_hf.tasks.semantic.transforms import TrainAugmentation
from fapn_hf.training.args import (
    DataArguments,
    FaPNTrainingArguments,
    ModelArguments,
    load_recipe,
    parse_arguments,
)
from fapn_hf.training.run import main, run_training
from fapn_hf.training.trainer import FaPNTrainer, make_compute_metrics, multi_step_lr_factor, parameter_groups

REPO_ROOT = Path(__file__).resolve().parents[1]

# A FaPN-R18 with a 32-wide pyramid on 64x64 demo images: the real code path in about a second per run.
TINY_MODEL = dict(preset="fapn-r18", neck_channels=32, head_channels=64, deformable_groups=4)
TINY_DATA = dict(
    demo_train_samples=16, demo_validation_samples=6, demo_size=64, crop_size=[48, 48], scale_range=[0.75, 1.25],
    num_visualizations=2,
)  # fmt: skip
TINY_TRAINING = dict(
    per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3, optim="adamw_torch",
    lr_scheduler_type="polynomial", lr_scheduler_kwargs={"power": 0.9, "lr_end": 0.0}, warmup_steps=1,
    logging_steps=1, dataloader_num_workers=0, seed=3, save_strategy="steps", dataloader_pin_memory=False,
)  # fmt: skip


def _arguments(output_dir: Path, model=None, data=None, **training):
    return (
        ModelArguments(**{**TINY_MODEL, **(model or {})}),
        DataArguments(**{**TINY_DATA, **(data or {})}),
        FaPNTrainingArguments(output_dir=str(output_dir), **{**TINY_TRAINING, **training}),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def _write_imagefolder(folder: Path, samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    folder.mkdir(parents=True)
    rows = ["file_name,annotation_file_name"]
    for index, (image, label) in enumerate(samples):
        Image.fromarray(image).save(folder / f"image_{index}.png")
        Image.fromarray(label).save(folder / f"label_{index}.png")
        rows.append(f"image_{index}.png,label_{index}.png")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")


def _sample(height=20, width=30, labels=(0, 1, 2), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8), rng.choice(labels, (height, width)).astype(
        np.uint8
    )


def test_demo_source_gives_undecoded_train_and_validation_splits():
    splits = load_segmentation_dataset("demo", demo_options={"num_train": 4, "num_validation": 2, "size": (32, 32)})
    assert set(splits) == {"train", "validation"} and (len(splits["train"]), len(splits["validation"])) == (4, 2)
    row = splits["train"][0]
    assert set(row) == {"image", "label"} and isinstance(row["image"]["bytes"], bytes)


def test_imagefolder_and_saved_dataset_sources(tmp_path):
    _write_imagefolder(tmp_path / "folder" / "train", [_sample(seed=i) for i in range(5)])
    splits = load_segmentation_dataset(str(tmp_path / "folder"), validation_fraction=0.4)
    assert (len(splits["train"]), len(splits["validation"])) == (3, 2)  # held out: no validation split
    image, labels = SegmentationDataset(splits["train"], LabelSpec(3), None, FaPNImageProcessor()).load(0)
    assert image.shape == (20, 30, 3) and labels.shape == (20, 30) and set(np.unique(labels)) <= {0, 1, 2}

    image, label = _sample()
    saved = DatasetDict(
        {
            "train": Dataset.from_dict({"img": [Image.fromarray(image)], "seg": [Image.fromarray(label)]}),
            "validation": Dataset.from_dict({"img": [Image.fromarray(image)], "seg": [Image.fromarray(label)]}),
        }
    )
    from datasets import Features
    from datasets import Image as ImageFeature

    saved = saved.cast(Features({"img": ImageFeature(), "seg": ImageFeature()}))
    saved.save_to_disk(str(tmp_path / "saved"))
    loaded = load_segmentation_dataset(str(tmp_path / "saved"), image_column="img", label_column="seg")
    decoded = SegmentationDataset(loaded["validation"], LabelSpec(3), None, FaPNImageProcessor()).load(0)
    np.testing.assert_array_equal(decoded[1], label)
    with pytest.raises(ValueError, match=r"label_column='mask' is not a column.*\['img', 'seg'\]"):
        load_segmentation_dataset(str(tmp_path / "saved"), image_column="img", label_column="mask")


def test_label_mapping_and_reduction():
    raw = np.array([[7, 26, 0], [33, 255, 24]])
    np.testing.assert_array_equal(LabelSpec(19, mapping="cityscapes").apply(raw), [[0, 13, 255], [18, 255, 11]])
    np.testing.assert_array_equal(
        LabelSpec(150, reduce_labels=True).apply(np.array([0, 1, 150, 255])), [255, 0, 149, 255]
    )


def test_bad_samples_fail_with_index_and_file_or_are_skipped_and_counted(tmp_path):
    good, wrong_size, out_of_range = _sample(), _sample(), _sample(labels=(0, 1, 9))
    wrong_size = (wrong_size[0], wrong_size[1][:, :25])
    _write_imagefolder(tmp_path / "data" / "train", [good, wrong_size, good, out_of_range, good])
    _write_imagefolder(tmp_path / "data" / "validation", [good])
    (tmp_path / "data" / "train" / "image_4.png").write_bytes(b"not a png")
    train = load_segmentation_dataset(str(tmp_path / "data"))["train"]
    with pytest.raises(DataError) as error:
        check_samples(train, LabelSpec(3), "fail", "train")
    message = str(error.value)
    assert "3 of 5 train samples cannot be used" in message
    assert "sample 1: image" in message and "is 20x30 but its label" in message and "is 20x25" in message
    assert "sample 3: label" in message and "values [9]" in message and "[0, 3)" in message
    assert "sample 4: cannot read the image" in message and "image_4.png" in message
    kept, report = check_samples(train, LabelSpec(3), "skip", "train")
    assert len(kept) == 2 and report.num_skipped == 3 and [i for i, _ in report.bad_samples] == [1, 3, 4]
    with pytest.raises(ValueError, match="bad-sample policy must be one of"):
        check_samples(train, LabelSpec(3), "ignore")


def test_rgb_label_images_are_rejected(tmp_path):
    image, label = _sample()
    _write_imagefolder(tmp_path / "data" / "train", [(image, np.dstack([label] * 3))])
    _write_imagefolder(tmp_path / "data" / "validation", [(image, label)])
    with pytest.raises(DataError, match="is a RGB image; expected a single-channel map"):
        check_samples(load_segmentation_dataset(str(tmp_path / "data"))["train"], LabelSpec(3))


def test_augmentation_depends_only_on_seed_epoch_and_index():
    splits = load_segmentation_dataset("demo", demo_options={"num_train": 3, "num_validation": 1, "size": (64, 64)})
    augment = TrainAugmentation(crop_size=(48, 48), scale_range=(0.5, 2.0))

    def dataset():
        processor = FaPNImageProcessor(image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
        return SegmentationDataset(splits["train"], LabelSpec(len(DEMO_LABELS)), augment, processor)

    first, second = dataset(), dataset()
    a = first[2]
    _ = second[0], second[1]  # other samples drawn first: no effect
    b = second[2]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    second.set_epoch(1)
    assert not torch.equal(second[2]["pixel_values"], a["pixel_values"])
    assert a["pixel_values"].shape == (3, 48, 48) and a["labels"].dtype == torch.int64


def test_collator_pads_images_with_zero_and_labels_with_ignore():
    samples = [
        {"pixel_values": torch.ones(3, 4, 5), "labels": torch.zeros(4, 5, dtype=torch.long)},
        {"pixel_values": torch.ones(3, 6, 3), "labels": torch.ones(6, 3, dtype=torch.long)},
    ]
    batch = SegmentationCollator(255)(samples)
    assert batch["pixel_values"].shape == (2, 3, 6, 5) and batch["labels"].shape == (2, 6, 5)
    assert batch["image_sizes"].tolist() == [[4, 5], [6, 3]] and batch["label_sizes"].tolist() == [[4, 5], [6, 3]]
    assert batch["pixel_values"][0, :, 4:].abs().sum() == 0 and (batch["labels"][0, 4:] == 255).all()
    assert (batch["labels"][1, :, 3:] == 255).all() and (batch["labels"][1, :, :3] == 1).all()


# ---------------------------------------------------------------------------------------------------------------------
# Trainer pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_parameter_groups_split_learning_rate_and_weight_decay():
    from conftest import tiny_config

    from fapn_hf import FaPNForSemanticSegmentation

    model = FaPNForSemanticSegmentation(tiny_config())
    groups = parameter_groups(model, 0.01, 1e-4, backbone_lr_multiplier=0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name, parameter in model.named_parameters():
        group = by_id[id(parameter)]
        assert group["lr"] == pytest.approx(0.001 if name.startswith("fapn.backbone.") else 0.01), name
        assert group["weight_decay"] == (1e-4 if parameter.ndim > 1 else 0.0), name


def test_compute_metrics_streams_and_treats_padding_as_ignored():
    metrics = SegmentationMetrics(3, 255)
    compute = make_compute_metrics(metrics)
    labels = torch.tensor([[[0, 1], [2, -100]]])  # -100: the Trainer's padding across processes
    predictions = torch.tensor([[[0, 1], [1, 2]]], dtype=torch.int32)
    assert compute(EvalPrediction(predictions=predictions, label_ids=labels), compute_result=False) == {}
    scores = compute(EvalPrediction(predictions=predictions, label_ids=labels), compute_result=True)
    # Over both batches: class 0 and 1 right twice, class 2 predicted as 1 twice -> IoU 1, 0.5, 0.
    assert scores["mean_iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    assert scores["iou_2"] == 0.0 and "boundary_mean_iou" in scores


# ---------------------------------------------------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    model_args, data_args, training_args = _arguments(
        output_dir, max_steps=4, eval_strategy="steps", eval_steps=2, save_steps=2
    )
    return run_training(model_args, data_args, training_args)


def test_run_writes_a_hub_ready_folder_metrics_curves_and_overlays(trained_run):
    folder = trained_run.output_dir
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_fapn.py",
        "README.md",
        "metrics.json",
        "training_curves.png",
    ):
        assert (folder / name).is_file(), name
    assert len(list((folder / "predictions").glob("*.png"))) == 2
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 <= metrics["eval"]["eval_mean_iou"] <= 1 and "eval_boundary_iou_3px" in metrics["eval"]
    assert metrics["data"]["train"]["num_skipped"] == 0
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "transformers"
    result = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert result["mean_iou"] == pytest.approx(metrics["eval"]["eval_mean_iou"], abs=1e-4)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder)
    assert model.config.id2label[3] == "wire"
    eval_logs = [entry for entry in trained_run.trainer.state.log_history if "eval_mean_iou" in entry]
    assert [entry["step"] for entry in eval_logs][:2] == [2, 4]


def test_the_trainer_writes_the_fapn_card_that_push_to_hub_uploads(trained_run):
    """`push_to_hub` calls `create_model_card(model_name=..., **kwargs)`: FaPN's card, not transformers' generic one."""
    trainer, card_path = trained_run.trainer, trained_run.output_dir / "README.md"
    run_card = card_path.read_text()
    try:
        card_path.unlink()
        trainer.create_model_card()
        card = ModelCard.load(card_path)
        assert card.text == ModelCard(run_card).text  # the run's own card is this one
        latest = trainer.latest_eval_metrics()
        assert latest["eval_mean_iou"] == pytest.approx(trained_run.metrics["eval"]["eval_mean_iou"])
        result = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert result["mean_iou"] == pytest.approx(latest["eval_mean_iou"], abs=1e-4)
        assert "boundary_mean_iou" in result and card.data.eval_results[0].dataset_name == "demo"
        assert "@inproceedings{huang2021fapn" in card.text and "Feature-aligned Pyramid Network" in card.text
        assert "`crop_size`: `[48, 48]`" in card.text  # the run's settings
        assert "More information needed" not in card.text  # transformers' generic card

        trainer.create_model_card(model_name="fapn-tiny", tags=["my-tag"], finetuned_from="org/base", license="mit")
        card = ModelCard.load(card_path)
        assert card.text.lstrip().startswith("# fapn-tiny") and card.data.model_name == "fapn-tiny"
        assert {"fapn", "my-tag"} <= set(card.data.tags) and card.data.base_model == "org/base"
        assert card.data.license == "mit" and card.data.eval_results  # metadata added, model-index kept
        with pytest.raises(ValueError, match=r"does not take \{'tasks': 'translation'\}"):
            trainer.create_model_card(tasks="translation")
    finally:
        card_path.write_text(run_card)


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    settings = dict(max_steps=6, save_steps=3, eval_strategy="no")
    straight = run_training(*_arguments(tmp_path / "straight", data={"num_visualizations": 0}, **settings))
    run_training(
        *_arguments(tmp_path / "interrupted", data={"num_visualizations": 0}, **settings), callbacks=[_StopAt(4)]
    )
    assert (tmp_path / "interrupted" / "checkpoint-3").is_dir()
    resumed = run_training(
        *_arguments(
            tmp_path / "interrupted",
            data={"num_visualizations": 0},
            resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-3"),
            **settings,
        )
    )
    expected = load_file(str(straight.output_dir / "model.safetensors"))
    actual = load_file(str(resumed.output_dir / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=1e-6, msg=key)


def test_gradient_checkpointing_trains(tmp_path):
    run = run_training(
        *_arguments(
            tmp_path,
            data={"num_visualizations": 0},
            max_steps=1,
            warmup_steps=0,
            gradient_checkpointing=True,
            eval_strategy="no",
            save_strategy="no",
        )
    )
    assert run.trainer.model.is_activation_checkpointing


def _train_command(output_dir: Path, per_device_batch: int) -> list[str]:
    return [
        "-m", "fapn_hf.training.run", str(REPO_ROOT / "recipes" / "demo.yaml"),
        "--output_dir", str(output_dir), "--max_steps", "3", "--per_device_train_batch_size", str(per_device_batch),
        "--per_device_eval_batch_size", "2", "--neck_channels", "32", "--head_channels", "64",
        "--deformable_groups", "4", "--demo_train_samples", "12", "--demo_validation_samples", "5",
        "--demo_size", "64", "--crop_size", "48", "--scale_range", "1.0", "1.25", "--demo_ignore_region", "false",
        "--warmup_steps", "0", "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0",
        "--num_visualizations", "0", "--dataloader_pin_memory", "false", "--logging_steps", "1",
    ]  # fmt: skip


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """DDP over gloo on the CPU: 2 processes x 2 images must train like 1 process x 4 images. Frozen backbone BN, no
    neck norm and crops without ignored pixels keep every loss term independent of how the batch is split."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, *_train_command(tmp_path / "single", 4)], env=env, capture_output=True, text=True, timeout=600
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         *_train_command(tmp_path / "ddp", 2)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    expected = load_file(str(tmp_path / "single" / "model.safetensors"))
    actual = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=2e-5, rtol=1e-4, msg=key)
    single_metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    # A loss scaled by the number of processes would show here (and in the weights above).
    assert ddp_metrics["train"]["train_loss"] == pytest.approx(single_metrics["train"]["train_loss"], rel=1e-4)
    metrics_single, metrics_ddp = single_metrics["eval"], ddp_metrics["eval"]
    # The 5 validation images split 3/2 over the processes: duplicates from uneven sharding must not be counted.
    assert metrics_ddp["eval_mean_iou"] == pytest.approx(metrics_single["eval_mean_iou"], abs=1e-4)
    assert metrics_ddp["eval_pixel_accuracy"] == pytest.approx(metrics_single["eval_pixel_accuracy"], abs=1e-4)


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_parses_into_the_argument_classes(recipe, tmp_path):
    # The GPU recipes train in bf16, which TrainingArguments refuses on a machine without a GPU.
    argv = ["--output_dir", str(tmp_path), "--bf16", str(torch.cuda.is_available()).lower()]
    model_args, data_args, training_args = parse_arguments(argv, recipe=recipe)
    family = family_of_preset(model_args.preset)
    assert training_args.max_steps > 0 and training_args.output_dir == str(tmp_path)  # the command line wins
    if family.predicts_pixel_classes:  # the semantic recipes: crops and the polynomial schedule
        assert len(data_args.crop_size) == 2 and data_args.crop_size[0] > 0
        assert training_args.lr_scheduler_type == "polynomial"
    else:  # the detectors: detectron2's multi-scale resize, and its step schedule on COCO
        assert data_args.min_size_train and data_args.max_size_train >= max(data_args.min_size_train)
        if "coco" in recipe.name:
            expected = [210000, 250000] if "3x" in recipe.name else [60000, 80000]
            assert training_args.lr_decay_steps == expected and training_args.lr_decay_factor == 0.1
            assert training_args.max_steps == (270000 if "3x" in recipe.name else 90000)


def test_the_step_schedule_is_detectron2s_warmup_multi_step(tmp_path):
    """`lr_decay_steps`: detectron2's WarmupMultiStepLR (linear warm-up from 0.001, x gamma at each step), computed
    here from its definition, through the Trainer's own scheduler creation."""
    args = FaPNTrainingArguments(
        output_dir=str(tmp_path), max_steps=20, learning_rate=0.5, warmup_steps=4, lr_decay_steps=[8, 15],
        lr_decay_factor=0.1, report_to=[],
    )  # fmt: skip
    factor = multi_step_lr_factor(args.lr_decay_steps, args.lr_decay_factor, 4)
    for step in range(20):
        warmup = 0.001 * (1 - step / 4) + step / 4 if step < 4 else 1.0
        decay = 0.1 ** sum(step >= milestone for milestone in (8, 15))
        assert factor(step) == pytest.approx(warmup * decay, rel=1e-12)
    # The Trainer's own hook (create_scheduler) on a stand-in holding only what it reads.
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.5)
    trainer = SimpleNamespace(args=args, lr_scheduler=None, optimizer=optimizer)
    scheduler = FaPNTrainer.create_scheduler(trainer, 20)
    assert trainer.lr_scheduler is scheduler
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.5 * 0.001) and seen[5] == 0.5 and seen[8] == pytest.approx(0.05)
    assert seen[19] == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([80, 60], r"lr_decay_steps must be increasing positive step numbers, got \[80, 60\]"),
        ([0, 60], r"increasing positive step numbers, got \[0, 60\]"),
        ([60, 100], r"lr_decay_steps \[60, 100\] must lie before max_steps \(100\)"),
        (["sixty"], r"lr_decay_steps must be whole step numbers, got \['sixty'\]"),
    ],
)
def test_bad_step_schedules_are_refused_naming_the_value(steps, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        FaPNTrainingArguments(output_dir=str(tmp_path), max_steps=100, lr_decay_steps=steps, report_to=[])


def test_sizes_are_lists_in_recipes_and_on_the_command_line(tmp_path):
    recipe = tmp_path / "sizes.yaml"
    recipe.write_text("preset: fapn-r18\ncrop_size: [64, 80]\nscale_range: [0.5, 1.5]\n")
    _, data_args, _ = parse_arguments(["--output_dir", str(tmp_path)], recipe=recipe)
    assert data_args.crop_size == [64, 80] and data_args.scale_range == [0.5, 1.5]
    flags = ["--output_dir", str(tmp_path), "--crop_size", "40", "56", "--scale_range", "0.8", "1.25"]
    _, data_args, _ = parse_arguments(flags, recipe=recipe)  # the command line wins over the recipe
    assert data_args.crop_size == [40, 56] and data_args.scale_range == [0.8, 1.25]
    _, data_args, _ = parse_arguments(["--output_dir", str(tmp_path), "--crop_size", "48"], recipe=recipe)
    assert data_args.crop_size == [48, 48]  # one value: a square crop
    recipe.write_text("crop_size: 72\n")
    _, data_args, _ = parse_arguments(["--output_dir", str(tmp_path)], recipe=recipe)
    assert data_args.crop_size == [72, 72] and data_args.scale_range == [0.5, 2.0]  # the default range


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crop_size": [1, 2, 3]}, r"crop_size takes 1 or 2 values .*got 3: \[1, 2, 3\]"),
        ({"crop_size": []}, r"crop_size takes 1 or 2 values .*got 0"),
        ({"crop_size": [0, 64]}, r"crop_size must be positive integers \(pixels\), got \[0, 64\]"),
        ({"crop_size": [64.5, 64]}, r"crop_size must be positive integers \(pixels\), got \[64.5, 64\]"),
        (
            {"crop_size": "96x96"},
            r"crop_size takes numbers, not the string '96x96'.*`crop_size: \[96, 96\]`.*`--crop_size 96 96`",
        ),
        ({"scale_range": [0.5]}, r"scale_range takes 2 values \(min max\), got 1: \[0.5\]"),
        ({"scale_range": [0.0, 1.0]}, r"scale_range must be positive numbers, got \[0.0, 1.0\]"),
        ({"scale_range": [2.0, 0.5]}, r"scale_range must be min max with min <= max, got \[2.0, 0.5\]"),
        ({"scale_range": "0.5,2.0"}, r"scale_range takes numbers, not the string '0.5,2.0'.*--scale_range 0.5 2.0"),
    ],
)
def test_bad_sizes_are_refused_with_the_value_and_the_expected_form(options, message):
    with pytest.raises(ValueError, match=message):
        DataArguments(**options)


def test_an_old_string_size_in_a_recipe_names_the_list_form(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("crop_size: 96x96\n")
    with pytest.raises(ValueError, match=r"not the string '96x96': write `crop_size: \[96, 96\]`"):
        parse_arguments(["--output_dir", str(tmp_path)], recipe=recipe)
    with pytest.raises(SystemExit, match=r"^error: crop_size takes numbers"):  # the command's one-line error
        main([str(recipe), "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"^error: recipe not found"):
        main([str(tmp_path / "missing.yaml")])


def test_fapn_train_command_is_the_train_modules_main():
    import importlib
    import re

    # A regular expression, not tomllib: the project supports Python 3.10, which has none.
    entry = re.search(r'^fapn-train = "([\w.]+):(\w+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert entry is not None, "pyproject.toml [project.scripts] has no fapn-train"
    module, name = entry.groups()
    assert getattr(importlib.import_module(module), name) is main
    help_text = subprocess.run(
        [sys.executable, "-m", "fapn_hf.training.run", "--help"], capture_output=True, text=True, timeout=300
    )
    assert help_text.returncode == 0 and "--crop_size CROP_SIZE [CROP_SIZE ...]" in help_text.stdout


def test_unknown_recipe_keys_are_named(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("preset: fapn-r18\nlearning_rat: 0.01\n")
    with pytest.raises(ValueError, match=r"unknown arguments \['learning_rat'\]"):
        load_recipe(recipe)


def test_an_evaluation_only_source_loads_but_cannot_be_trained_on(tmp_path):
    image, label = _sample()
    _write_imagefolder(tmp_path / "data" / "validation", [(image, label)])
    splits = load_segmentation_dataset(str(tmp_path / "data"), train_split=None)
    assert list(splits) == ["validation"]
    with pytest.raises(ValueError, match=r"no split 'test'; it has \['validation'\]"):
        load_segmentation_dataset(str(tmp_path / "data"), train_split=None, validation_split="test")
    model_args, data_args, training_args = _arguments(
        tmp_path / "out", data={"dataset": str(tmp_path / "data"), "labels": "a,b,c"}
    )
    with pytest.raises(ValueError, match=r"no split 'train' to train on; it has \['validation'\]"):
        run_training(model_args, data_args, training_args)


@pytest.mark.slow
def test_evaluate_scores_the_images_the_run_held_out_and_says_so(tmp_path, capsys):
    """A folder whose only split is `train`, trained with `--validation_fraction 0.4 --seed 1`: the run records its
    hold-out in metrics.json, `fapn-evaluate` without flags scores exactly those images (the same scores as with the
    two flags) and says so, `--split train` warns that those are training images, and a data set without the split
    names the two flags (never `--split train`) as the fix."""
    from fapn_hf.cli import commands as cli

    photos = tmp_path / "photos"
    _write_imagefolder(photos / "train", [_sample(seed=i) for i in range(5)])
    output_dir = tmp_path / "run"
    model_args, data_args, training_args = _arguments(
        output_dir,
        data={"dataset": str(photos), "labels": "a,b,c", "validation_fraction": 0.4, "crop_size": [16, 16]},
        max_steps=2,
        seed=1,
    )
    run_training(model_args, data_args, training_args)
    record = json.loads((output_dir / "metrics.json").read_text())["validation_data"]
    assert record == {
        "dataset": str(photos),
        "train_split": "train",
        "validation_split": None,
        "validation_fraction": 0.4,
        "seed": 1,
    }
    capsys.readouterr()

    recorded, explicit = tmp_path / "recorded.json", tmp_path / "explicit.json"
    assert cli.evaluate_main(["--model", str(output_dir), "--dataset", str(photos), "--output", str(recorded)]) == 0
    printed = capsys.readouterr().out
    assert "note: scored the images the training run held out (40% of 'train' held out with seed 1)" in printed
    flags = ["--validation_fraction", "0.4", "--seed", "1"]
    assert (
        cli.evaluate_main(["--model", str(output_dir), "--dataset", str(photos), *flags, "--output", str(explicit)])
        == 0
    )
    by_record, by_flags = json.loads(recorded.read_text()), json.loads(explicit.read_text())
    assert by_record["num_images"] == by_flags["num_images"] == 2
    assert by_record["mean_iou"] == by_flags["mean_iou"] and by_record["split"] == by_flags["split"]

    assert cli.evaluate_main(["--model", str(output_dir), "--dataset", str(photos), "--split", "train"]) == 0
    printed = capsys.readouterr().out
    assert "5 images" in printed and "these scores are on training images" in printed
    assert "--validation_fraction 0.4 --seed 1 scores exactly the held-out ones" in printed

    # Another folder with the same layout, which the run did not record: the message names the two flags.
    other = tmp_path / "other"
    _write_imagefolder(other / "train", [_sample(seed=i) for i in range(3)])
    with pytest.raises(SystemExit, match=r"no split 'validation'; it has \['train'\]\. If the model was trained on "):
        cli.evaluate_main(["--model", str(output_dir), "--dataset", str(other)])
    with pytest.raises(SystemExit, match=r"pass the same two flags to score exactly those images") as raised:
        cli.evaluate_main(["--model", str(output_dir), "--dataset", str(other)])
    assert "--split" not in str(raised.value)


def test_a_polynomial_schedule_needs_steps_after_its_warmup(tmp_path):
    """transformers' polynomial schedule divides by max_steps - warmup_steps: a run exactly as long as its warm-up
    once ended in a ZeroDivisionError from inside the scheduler; the arguments refuse it, naming both values."""
    with pytest.raises(ValueError, match=r"warmup_steps \(2\) must differ from max_steps \(2\)"):
        FaPNTrainingArguments(output_dir=str(tmp_path), max_steps=2, warmup_steps=2, lr_scheduler_type="polynomial")
    FaPNTrainingArguments(output_dir=str(tmp_path), max_steps=3, warmup_steps=2, lr_scheduler_type="polynomial")
    FaPNTrainingArguments(output_dir=str(tmp_path), max_steps=2, warmup_steps=20, lr_scheduler_type="polynomial")
    FaPNTrainingArguments(output_dir=str(tmp_path), max_steps=2, warmup_steps=2, lr_scheduler_type="linear")
