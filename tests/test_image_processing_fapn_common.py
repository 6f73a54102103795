"""transformers' own image-processor tests (`ImageProcessingTestMixin` and the semantic post-processing mixin, from
the installed release's sdist) on `FaPNImageProcessor`."""

from __future__ import annotations

import unittest

import torch
from conftest import load_transformers_common_tests
from transformers.modeling_outputs import SemanticSegmenterOutput

from fapn_hf import FaPNImageProcessor

load_transformers_common_tests()

from transformers_tests.test_image_processing_common import (  # noqa: E402
    ImageProcessingTester,
    ImageProcessingTestMixin,
    PostProcessSemanticSegmentationTestMixin,
)


class FaPNImageProcessingTester(ImageProcessingTester):
    """Random images of 30 to 400 pixels a side, resized to a shorter side of 20 (longer at most 40) and padded to
    the batch's largest size, as `expected_output_image_shape` of the common tester describes."""

    def __init__(self, parent, **kwargs) -> None:
        kwargs.setdefault("size", {"shortest_edge": 20, "longest_edge": 40})
        kwargs.setdefault("image_mean", [0.5, 0.4, 0.3])
        kwargs.setdefault("image_std", [0.2, 0.3, 0.4])
        kwargs.setdefault("do_reduce_labels", True)
        kwargs.setdefault("num_labels", 5)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self) -> dict[str, type]:
        # The common tester derives the model from its test file's folder (tests/models/<name>/); FaPN's tests are
        # flat, so name the processor here.
        return {"torchvision": FaPNImageProcessor}

    def prepare_post_process_semantic_segmentation_inputs(self):
        height, width = 16, 24  # logits at some processed size (the resize rule has no fixed output size)
        inputs = {
            "outputs": SemanticSegmenterOutput(logits=torch.randn(self.batch_size, self.num_labels, height, width))
        }
        return inputs, {"num_labels": self.num_labels, "height": height, "width": width}


class FaPNImageProcessingTest(ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase):
    image_processor_tester_class = FaPNImageProcessingTester
    test_cast_dtype = True
