"""transformers' own model tests (`ModelTesterMixin`, `ConfigTester`, from the installed release's sdist) on the FaPN
detectors (Mask R-CNN with the FaPN neck on a tiny MSRA transformers ResNet, and Panoptic FPN on timm's tiny test
ResNet). Only tests that do not apply are skipped or replaced, each with its reason.
"""

from __future__ import annotations

import copy
import unittest
from unittest import mock

import torch
from conftest import load_transformers_common_tests
from test_modeling_fapn_rcnn import make_labels, tiny_rcnn_config
from transformers.models.auto import modeling_auto

from fapn_hf.modeling.backbone_utils import timm_backbone_config
from fapn_hf.modeling.configuration_fapn_rcnn import FaPNRCNNConfig
from fapn_hf.modeling.modeling_fapn_rcnn import FaPNRCNNForObjectDetection, FaPNRCNNModel

load_transformers_common_tests()

from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor  # noqa: E402


class FaPNRCNNModelTester:
    """Tiny detector inputs: two 64x96 images, the second un-padded region 50x70, and per-image labels."""

    def __init__(self, parent, architecture: str, backbone_config=None) -> None:
        self.parent = parent
        self.architecture = architecture
        self.backbone_config = backbone_config
        self.batch_size = 2
        self.num_channels = 3
        self.height, self.width = 64, 96
        self.is_training = True
        # The hidden states are the pyramid p2..p6 (test_hidden_states_output below checks them); the common tests
        # only ask that a test model be small.
        self.num_hidden_layers = 1

    def get_config(self) -> FaPNRCNNConfig:
        overrides = {} if self.backbone_config is None else {"backbone_config": copy.deepcopy(self.backbone_config)}
        return tiny_rcnn_config(self.architecture, **overrides)

    def prepare_config_and_inputs_for_common(self) -> tuple[FaPNRCNNConfig, dict[str, torch.Tensor]]:
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.height, self.width])
        return self.get_config(), {"pixel_values": pixel_values}

    def labels(self, config: FaPNRCNNConfig) -> list[dict[str, torch.Tensor]]:
        return make_labels(config, torch.tensor([[self.height, self.width]] * self.batch_size))


class FaPNRCNNModelTestMixin(ModelTesterMixin):
    """The common tests for the detectors; subclasses choose the meta-architecture and the backbone."""

    all_model_classes = (FaPNRCNNModel, FaPNRCNNForObjectDetection)
    architecture = "mask_rcnn"
    # A vision model: no token embeddings to resize.
    test_resize_embeddings = False
    # Convolutions, RoIAlign and NMS: no attention maps to return.
    has_attentions = False
    # The test reads the year from a "# Copyright <year>" line, which fapn_hf's files do not carry; the initialisation
    # it checks is what fapn_hf guarantees (and tests/test_modeling_fapn_rcnn.py checks detectron2's statistics).
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # An out-of-tree model must be entered into the Auto names the common tests consult.
        cls._auto_names = [
            mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {"fapn_rcnn": "FaPNRCNNModel"}),
            mock.patch.dict(
                modeling_auto.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, {"fapn_rcnn": "FaPNRCNNForObjectDetection"}
            ),
            mock.patch.dict(
                modeling_auto.MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES,
                {"fapn_rcnn": "FaPNRCNNForObjectDetection"},
            ),
        ]
        for patch in cls._auto_names:
            patch.start()

    @classmethod
    def tearDownClass(cls) -> None:
        for patch in cls._auto_names:
            patch.stop()
        super().tearDownClass()

    def backbone(self):
        return None

    def setUp(self) -> None:
        self.model_tester = FaPNRCNNModelTester(self, self.architecture, self.backbone())
        self.config_tester = ConfigTester(
            self,
            config_class=FaPNRCNNConfig,
            has_text_modality=False,
            common_properties=["fpn_dim", "meta_architecture", "backbone_config"],
            fpn_dim=32,
            deformable_groups=4,
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = copy.copy(inputs_dict)
        if return_labels and model_class is FaPNRCNNForObjectDetection:
            inputs["labels"] = self.model_tester.labels(self.model_tester.get_config())
        return inputs

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self) -> None:
        """The hidden states are the pyramid p2..p6 at strides 4..64, asked for by argument or by the config."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            for through_config in (False, True):
                config = copy.deepcopy(config)
                config.output_hidden_states = through_config
                model = model_class(config).eval()
                with torch.no_grad():
                    outputs = model(**inputs, **({} if through_config else {"output_hidden_states": True}))
                sizes = [tuple(h.shape[-2:]) for h in outputs.hidden_states]
                self.assertEqual(sizes, [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)])

    def test_training(self) -> None:
        """Every loss of the meta-architecture trains (the common version passes no labels the detector can use)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = FaPNRCNNForObjectDetection(config).train()
        outputs = model(**inputs, labels=self.model_tester.labels(config))
        self.assertTrue(torch.isfinite(outputs.loss))
        outputs.loss.backward()
        self.assertTrue(model.rpn.head.cls_logits.weight.grad.abs().sum() > 0)

    def test_training_gradient_checkpointing(self) -> None:
        """Activation checkpointing (the FaPN neck's layers, the ResNet stages) gives the plain model's loss and
        gradients, the random ROI sampling seeded alike."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        labels = self.model_tester.labels(config)
        torch.manual_seed(0)
        model = FaPNRCNNForObjectDetection(config).train()
        checkpointed = copy.deepcopy(model)
        checkpointed.gradient_checkpointing_enable()
        self.assertTrue(checkpointed.is_gradient_checkpointing)
        losses, grads = [], []
        for candidate in (model, checkpointed):
            torch.manual_seed(1)
            loss = candidate(**inputs, labels=labels).loss
            loss.backward()
            losses.append(loss.detach())
            grads.append({n: p.grad.clone() for n, p in candidate.named_parameters() if p.grad is not None})
        torch.testing.assert_close(losses[0], losses[1])
        self.assertEqual(grads[0].keys(), grads[1].keys())
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)

    def test_retain_grad_hidden_states_attentions(self) -> None:
        """Gradients reach the pyramid (the hidden states) from the loss; the model has no attention maps."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        config.output_hidden_states = True
        model = FaPNRCNNForObjectDetection(config).train()
        outputs = model(**inputs, labels=self.model_tester.labels(config))
        retained = outputs.hidden_states[0]
        retained.retain_grad()
        outputs.loss.backward()
        self.assertIsNotNone(retained.grad)

    @unittest.skip(reason="covered by test_training_gradient_checkpointing (the loss needs detection labels)")
    def test_training_gradient_checkpointing_use_reentrant(self) -> None:
        pass

    @unittest.skip(reason="covered by test_training_gradient_checkpointing (the loss needs detection labels)")
    def test_training_gradient_checkpointing_use_reentrant_false(self) -> None:
        pass

    @unittest.skip(reason="covered by test_training_gradient_checkpointing (the loss needs detection labels)")
    def test_training_gradient_checkpointing_use_reentrant_true(self) -> None:
        pass

    @unittest.skip(reason="a vision model on pixel values: no input or output token embeddings")
    def test_model_get_set_embeddings(self) -> None:
        pass

    @unittest.skip(reason="a vision model on pixel values: no inputs_embeds")
    def test_inputs_embeds(self) -> None:
        pass


class FaPNMaskRCNNResNetBackboneModelTest(FaPNRCNNModelTestMixin, unittest.TestCase):
    """Mask R-CNN + FaPN on a tiny MSRA transformers ResNet (the trunk of converted models)."""

    architecture = "mask_rcnn"


class FaPNPanopticFPNTimmBackboneModelTest(FaPNRCNNModelTestMixin, unittest.TestCase):
    """Panoptic FPN + FaPN on timm's tiny test ResNet."""

    architecture = "panoptic_fpn"

    def backbone(self):
        return timm_backbone_config("test_resnet")
