"""transformers' own image-processor tests (`ImageProcessingTestMixin`, from the installed release's sdist) on
`FaPNRCNNImageProcessor`. The processor has no semantic post-processing, so the semantic mixin does not apply."""

from __future__ import annotations

import unittest

import numpy as np
from conftest import load_transformers_common_tests
from PIL import Image
from transformers import AutoImageProcessor, PretrainedConfig
from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

from fapn_hf.modeling.image_processing_fapn_rcnn import FaPNRCNNImageProcessor
from fapn_hf.modeling.shortest_edge_resize import shortest_edge_size

load_transformers_common_tests()

if get_image_processor_class_from_name("FaPNRCNNImageProcessor") is None:
    # Until the family is registered (`import fapn_hf` registers every family's processor), AutoImageProcessor finds
    # the class through a test-only config type, as registration would.
    class _ProcessorTestConfig(PretrainedConfig):
        model_type = "fapn_rcnn_processor_test"

    AutoImageProcessor.register(_ProcessorTestConfig, image_processor_classes={"torchvision": FaPNRCNNImageProcessor})

from transformers_tests.test_image_processing_common import (  # noqa: E402
    ImageProcessingTester,
    ImageProcessingTestMixin,
)


class FaPNRCNNImageProcessingTester(ImageProcessingTester):
    """Random images of 30 to 400 pixels a side, resized to a shorter side of 20 (longer at most 40) by detectron2's
    rule and padded to the batch's largest size."""

    def __init__(self, parent, **kwargs) -> None:
        kwargs.setdefault("size", {"shortest_edge": 20, "longest_edge": 40})
        kwargs.setdefault("image_mean", [0.5, 0.4, 0.3])
        kwargs.setdefault("image_std", [0.2, 0.3, 0.4])
        kwargs.setdefault("do_rescale", True)
        kwargs.setdefault("channel_order", "RGB")
        kwargs.setdefault("num_thing_labels", 5)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self) -> dict[str, type]:
        # The common tester derives the model from its test file's folder (tests/models/<name>/); these tests are
        # flat, so name the processor here.
        return {"torchvision": FaPNRCNNImageProcessor}

    def expected_output_image_shape(self, images) -> tuple[int, ...]:
        """The common tester's shape with detectron2's sizes (`int(x + 0.5)`) instead of transformers' (`int(x)`)."""
        sizes = []
        for image in images:
            if isinstance(image, Image.Image):
                height, width = image.height, image.width
            elif isinstance(image, np.ndarray):
                height, width = image.shape[:2]
            else:
                height, width = image.shape[1:]
            sizes.append(shortest_edge_size(height, width, self.size["shortest_edge"], self.size["longest_edge"]))
        return self.num_channels, max(size[0] for size in sizes), max(size[1] for size in sizes)


class FaPNRCNNImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = FaPNRCNNImageProcessingTester
    test_cast_dtype = True
