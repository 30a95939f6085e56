"""Devices, precision and the data on the device (pipeline.device)."""

from __future__ import annotations

import pytest
import torch

from pipeline.device import InputTransform, resolve_device, resolve_precision
from pipeline.errors import PipelineError
from tests.conftest import CPU


def test_input_transform_normalises_per_channel() -> None:
    transform = InputTransform.create([0.5, 0.25, 0.0], [0.5, 0.25, 1.0], normalize=True, device=CPU)
    pixels = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert transform(pixels)[0, :, 0, 0].tolist() == pytest.approx([1.0, 3.0, 1.0])
    plain = InputTransform.create([0.5, 0.25, 0.0], [0.5, 0.25, 1.0], normalize=False, device=CPU)
    assert plain(pixels)[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert transform(pixels).is_contiguous(memory_format=torch.channels_last)


def test_devices_and_precision() -> None:
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("auto", CPU) in ("bf16", "fp32")
