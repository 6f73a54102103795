"""Folders saved by fapn_hf 0.1.0 before the sub-package move keep working with the package as it is now.

`tests/fixtures/saved_by_0.1.0/` holds a tiny model of each family saved with the flat layout of commit 9e1dbcf
(`make_folders.py` says how), with the outputs that version computed. Each loads through its family's Auto class and
`AutoImageProcessor` after `import fapn_hf`, gives those outputs, and saves again as a folder of the new layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoImageProcessor

from fapn_hf import FAMILIES, family_of
from fapn_hf.modeling.remote_code import KERNEL_MODULES

SAVED = Path(__file__).resolve().parent / "fixtures" / "saved_by_0.1.0"
FOLDERS = sorted(path for path in SAVED.iterdir() if path.is_dir())


def test_there_is_a_saved_folder_of_every_family_that_existed_then():
    assert {folder.name for folder in FOLDERS} == {"fapn", "maskformer_fapn"} <= set(FAMILIES)


@pytest.mark.parametrize("folder", FOLDERS, ids=[folder.name for folder in FOLDERS])
def test_an_old_folder_loads_and_gives_its_outputs(folder, tmp_path):
    config = AutoConfig.from_pretrained(folder)
    family = family_of(config)
    assert family.name == folder.name and isinstance(config, family.config_class)
    model = family.auto_class.from_pretrained(folder).eval()
    assert type(model) is family.head_class
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__module__.startswith("fapn_hf.modeling.")
    expected = load_file(folder / "expected_outputs.safetensors")
    with torch.no_grad():
        outputs = model(pixel_values=expected.pop("pixel_values"))
    assert expected, "the folder records no outputs"
    for name, value in expected.items():
        torch.testing.assert_close(
            outputs[name], value, rtol=1e-5, atol=1e-4, msg=name
        )  # float32 round-off of logits up to 45

    # Saved again, the folder has the new layout's shipped files (the kernel and the family's own), no old module.
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    shipped = {path.stem for path in tmp_path.glob("*.py")}
    assert set(KERNEL_MODULES) <= shipped and "backbone_freezing" not in shipped and "labels" not in shipped
    reloaded = family.auto_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        again = reloaded(pixel_values=load_file(folder / "expected_outputs.safetensors")["pixel_values"])
    for name, value in expected.items():
        torch.testing.assert_close(
            again[name], value, rtol=1e-5, atol=1e-4, msg=name
        )  # float32 round-off of logits up to 45
