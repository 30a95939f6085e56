from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pipeline.model import ResNet18, TutorialNet, build_model


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize(("arch", "count"), [("resnet18", 11_173_962), ("tutorial", 9_553_674)])
def test_parameter_counts_at_width_64(arch: str, count: int) -> None:
    assert parameter_count(build_model(arch, 64)) == count  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["resnet18", "tutorial"])
def test_logits_shape(arch: str) -> None:
    model = build_model(arch, 4)  # type: ignore[arg-type]
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def feature_shapes(model: nn.Module, names: list[str], batch: int = 2) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(
            lambda module, inputs, output, name=name: shapes.__setitem__(name, tuple(output.shape))
        )
    model(torch.randn(batch, 3, 32, 32))
    return shapes


def test_resnet18_is_the_cifar_variant() -> None:
    model = ResNet18(width=8)
    stem_conv = model.stem[0]
    assert isinstance(stem_conv, nn.Conv2d)
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    assert not any(isinstance(module, nn.MaxPool2d) for module in model.modules())
    shapes = feature_shapes(model, ["stem", "layer1", "layer2", "layer3", "layer4"])
    assert shapes == {
        "stem": (2, 8, 32, 32),
        "layer1": (2, 8, 32, 32),
        "layer2": (2, 16, 16, 16),
        "layer3": (2, 32, 8, 8),
        "layer4": (2, 64, 4, 4),
    }


def test_tutorial_keeps_its_broadcasting_last_block() -> None:
    model = TutorialNet(width=4)
    shapes = feature_shapes(model, ["stem", "block1", "block2", "block3", "block4.bn2", "block4"])
    assert shapes["stem"] == (2, 4, 10, 10)  # kernel 3, stride 3, no padding
    assert shapes["block3"] == (2, 32, 2, 2)
    assert shapes["block4.bn2"] == (2, 32, 1, 1)  # stride-2 main path
    assert shapes["block4"] == (2, 32, 2, 2)  # broadcast onto the identity shortcut
    assert isinstance(model.block4.shortcut, nn.Identity)
    assert all(conv.bias is not None for conv in model.modules() if isinstance(conv, nn.Conv2d))


def test_tutorial_block4_sums_the_broadcast_map() -> None:
    block = TutorialNet(width=2).block4.eval()
    x: Tensor = torch.randn(1, 16, 2, 2)
    main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    assert torch.allclose(block(x), torch.relu(main + x))


def test_unknown_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("vgg", 8)  # type: ignore[arg-type]
