from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pipeline.model import PointwiseDownsample, ResNet18, TutorialNet, build_model, pointwise


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize(("arch", "count"), [("resnet18", 11_173_962), ("tutorial", 9_553_674)])
def test_parameter_counts_at_width_64(arch: str, count: int) -> None:
    assert parameter_count(build_model(arch, 64)) == count


@pytest.mark.parametrize("arch", ["resnet18", "tutorial"])
def test_logits_shape(arch: str) -> None:
    model = build_model(arch, 4)
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
        build_model("vgg", 8)


def test_a_new_network_is_one_builder_and_one_line_in_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/extending.md: what params, the model builder and the CPU's auto read comes from
    pipeline/architectures.py alone."""
    import pipeline.model as model
    from pipeline.architectures import ARCHITECTURES, Architecture
    from pipeline.hardware import SETTINGS
    from pipeline.params import load_params
    from tests.conftest import REPO

    for name, architecture in ARCHITECTURES.items():  # each name builds, and is its builder's network
        assert type(build_model(name, 4)).__name__ == architecture.builder
    assert all(network in ARCHITECTURES for settings in SETTINGS.values() for network in settings.compiled)

    def tiny(width: int, classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, classes))

    monkeypatch.setattr(model, "Tiny", tiny, raising=False)
    monkeypatch.setitem(ARCHITECTURES, "tiny", Architecture("Tiny", "a linear classifier"))
    assert load_params(REPO / "params.yaml", ["model.arch=tiny"]).model.arch == "tiny"
    assert build_model("tiny", 4)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert not any(settings.compile("tiny") for settings in SETTINGS.values())  # eager until measured


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("in_channels", "bias"), [(2, False), (4, False), (6, True), (12, False)])
def test_narrow_strided_shortcuts_get_right_gradients_in_channels_last(
    in_channels: int, bias: bool, threads: int
) -> None:
    # oneDNN issue 6035: on an AVX2 CPU the strided 1x1 kernel's weight gradient came out wrong
    # with 2 threads (or hung), and crashed the process with 1 (pipeline.model.PointwiseDownsample).
    torch.manual_seed(0)
    narrow = pointwise(in_channels, 2 * in_channels, 2, bias=bias)
    assert isinstance(narrow, PointwiseDownsample)
    reference = nn.Conv2d(in_channels, 2 * in_channels, 1, stride=2, bias=bias)
    reference.load_state_dict(narrow.state_dict())  # the same parameters, under the same names
    images = torch.randn(64, in_channels, 32, 32, requires_grad=True)
    upstream = torch.randn(64, 2 * in_channels, 16, 16)
    expected = reference(images)  # NCHW: oneDNN's blocked kernel, unaffected
    expected_gradients = torch.autograd.grad(expected, [reference.weight, images], upstream)
    narrow = narrow.to(memory_format=torch.channels_last)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        channels_last = images.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        output = narrow(channels_last)
        got_gradients = torch.autograd.grad(
            output, [narrow.weight, channels_last], upstream.contiguous(memory_format=torch.channels_last)
        )
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(output, expected)
    for got, wanted in zip(got_gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, wanted, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("arch", ["resnet18", "tutorial"])
def test_only_narrow_strided_shortcuts_are_computed_on_every_other_pixel(arch: str) -> None:
    narrow = build_model(arch, 4)
    downsamples = [module for module in narrow.modules() if isinstance(module, PointwiseDownsample)]
    assert [module.in_channels for module in downsamples] == [4, 8]  # 16 -> 32 is left to oneDNN
    wide = build_model(arch, 16)
    assert not any(isinstance(module, PointwiseDownsample) for module in wide.modules())
    assert list(narrow.state_dict()) == list(wide.state_dict())  # the same names at any width
