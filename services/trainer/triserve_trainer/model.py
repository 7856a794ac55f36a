"""The compact MNIST CNN and a small multiply-accumulate counter over its conv/linear layers."""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURE = "MnistNet: 4x(conv3x3+BN+ReLU), 3 max-pools, FC 576-128-10"
MAX_MACS = 5_000_000


class MnistNet(nn.Module):
    """Input float32 ``[N,1,28,28]`` (normalised), output logits ``[N,10]``.

    Layer names are mirrored by the Paddle port in :mod:`triserve_trainer.export_paddle`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.conv4 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 3 * 3, 128)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # 16x14x14
        x = torch.relu(self.bn2(self.conv2(x)))  # 32x14x14
        x = self.pool(torch.relu(self.bn3(self.conv3(x))))  # 32x7x7
        x = self.pool(torch.relu(self.bn4(self.conv4(x))))  # 64x3x3
        x = torch.flatten(x, 1)
        x = self.dropout(torch.relu(self.fc1(x)))
        out: torch.Tensor = self.fc2(x)
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> int:
    """Multiply-accumulates per image of the conv and linear layers (forward hooks on one image).

    Conv: ``out_elems * (in_channels / groups) * kh * kw``; Linear: ``out_features * in_features``
    per row. Biases, BN, activations and pooling are not counted (no multiply-accumulates of note).
    """
    total = 0

    def conv_hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Conv2d)
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Linear)
        total += out.numel() * mod.in_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total // input_shape[0]
