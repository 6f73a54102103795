"""transformers' own model tests (`ModelTesterMixin`, `ConfigTester`, from the installed release's sdist) on FaPN,
once with a tiny transformers `ResNetConfig` backbone and once with a tiny timm backbone, the way transformers tests
UperNet. Only tests that do not apply to FaPN are skipped, each with its reason.
"""

from __future__ import annotations

import copy
import unittest
from unittest import mock

import torch
from conftest import load_transformers_common_tests, tiny_resnet_backbone_config
from transformers.models.auto import modeling_auto

from fapn_hf import FaPNConfig, FaPNForSemanticSegmentation, FaPNModel, timm_backbone_config

load_transformers_common_tests()

from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor  # noqa: E402


class FaPNModelTester:
    """Tiny FaPN (32-wide pyramid, PointRend head) on `backbone_config`, with inputs for the common tests."""

    def __init__(self, parent, backbone_config, num_backbone_hidden_states: int, batch_size: int = 2) -> None:
        self.parent = parent
        self.backbone_config = backbone_config
        self.batch_size = batch_size
        self.image_size = 64
        self.num_channels = 3
        self.num_labels = 3
        self.is_training = True
        # The hidden states are the backbone's: its stem and every stage.
        self.expected_num_hidden_layers = num_backbone_hidden_states

    def get_config(self) -> FaPNConfig:
        return FaPNConfig(
            backbone_config=copy.deepcopy(self.backbone_config),
            num_labels=self.num_labels,
            neck_channels=32,
            head_channels=64,
            deformable_groups=4,
            use_point_rend=True,
            point_head_channels=64,
            point_rend_train_num_points=64,
            point_rend_subdivision_num_points=64,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[FaPNConfig, dict[str, torch.Tensor]]:
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


class FaPNModelTestMixin(ModelTesterMixin):
    """The common tests for FaPN; subclasses choose the backbone."""

    all_model_classes = (FaPNModel, FaPNForSemanticSegmentation)
    has_attentions = False  # convolutions only: no attention maps, no attention implementations
    test_resize_embeddings = False  # no token embeddings
    # The test reads the year from a "# Copyright <year>" line, which FaPN's files do not carry; the initialisation
    # it checks is what fapn_hf guarantees.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # An out-of-tree model must be entered into the Auto names the common tests consult (base models get no
        # labels and no training test; semantic segmentation models get (N, H, W) labels).
        cls._auto_names = [
            mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {"fapn": "FaPNModel"}),
            mock.patch.dict(
                modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES, {"fapn": "FaPNForSemanticSegmentation"}
            ),
        ]
        for patch in cls._auto_names:
            patch.start()

    @classmethod
    def tearDownClass(cls) -> None:
        for patch in cls._auto_names:
            patch.stop()
        super().tearDownClass()

    def backbone(self) -> tuple[object, int]:
        raise NotImplementedError

    def setUp(self) -> None:
        backbone_config, num_hidden_states = self.backbone()
        self.model_tester = FaPNModelTester(self, backbone_config, num_hidden_states)
        self.config_tester = ConfigTester(
            self,
            config_class=FaPNConfig,
            has_text_modality=False,
            common_properties=["neck_channels", "head_channels", "backbone_config"],
            neck_channels=64,
            deformable_groups=4,
        )

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self) -> None:
        """FaPN's hidden states are its backbone's (stem and stages), NCHW, the first at stride 2 or 4."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        size = self.model_tester.image_size
        for model_class in self.all_model_classes:
            for through_config in (False, True):
                config = copy.deepcopy(config)
                config.output_hidden_states = through_config
                model = model_class(config).eval()
                with torch.no_grad():
                    outputs = model(**inputs, **({} if through_config else {"output_hidden_states": True}))
                hidden_states = outputs.hidden_states
                self.assertEqual(len(hidden_states), self.model_tester.expected_num_hidden_layers)
                self.assertEqual(hidden_states[0].shape[0], self.model_tester.batch_size)
                self.assertIn(hidden_states[0].shape[-1], (size // 2, size // 4))
                self.assertEqual(hidden_states[-1].shape[-2:], (size // 32, size // 32))

    def test_outputs_of_both_classes(self) -> None:
        """`FaPNModel` returns P2 first (a tensor), the segmentation model logits at input resolution."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        size = self.model_tester.image_size
        with torch.no_grad():
            base = FaPNModel(config).eval()(**inputs)
            logits = FaPNForSemanticSegmentation(config).eval()(**inputs).logits
        self.assertEqual(tuple(base[0].shape), (self.model_tester.batch_size, 32, size // 4, size // 4))
        self.assertEqual(len(base.feature_maps), 4)
        self.assertEqual(tuple(logits.shape), (self.model_tester.batch_size, config.num_labels, size, size))

    @unittest.skip(reason="FaPN has no input or output embeddings (a CNN on pixel values)")
    def test_model_get_set_embeddings(self) -> None:
        pass


class FaPNTimmBackboneModelTest(FaPNModelTestMixin, unittest.TestCase):
    def backbone(self) -> tuple[object, int]:
        # timm's tiny test ResNet: 5 feature maps (strides 2 to 32), 0.37 M parameters.
        return timm_backbone_config("test_resnet"), 5


class FaPNResNetBackboneModelTest(FaPNModelTestMixin, unittest.TestCase):
    def backbone(self) -> tuple[object, int]:
        # Embedding output and 4 stages.
        return tiny_resnet_backbone_config(), 5
