"""The networks by name: the one registry of `model.arch` values.

params.yaml's `model.arch` must be one of these names, `pipeline.model.build_model` builds the
network named (the class or function `builder` names in pipeline/model.py, called with width and
class count), and on a CPU `auto` compiles an architecture only on the classes of CPU where that
measured faster (`pipeline.hardware`), so a new one trains eager there until measured. Kept free
of torch, so validating params loads nothing heavy. Adding a network: docs/extending.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    builder: str  # its class or function in pipeline/model.py: (width, classes) -> nn.Module
    description: str  # for `cifar10 --help` readers and the docs: what it is


ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture(
        "ResNet18", "the CIFAR ResNet-18: 3x3 stem, no max-pool; 11,173,962 parameters at width 64"
    ),
    "tutorial": Architecture(
        "TutorialNet",
        "the four-block network of the PyTorch CIFAR-10 tutorial; 9,553,674 parameters at width 64",
    ),
}
