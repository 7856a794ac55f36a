"""The compact CNN every model uses (widths per model) and a multiply-accumulate counter."""

from __future__ import annotations

import torch
from torch import nn

#: Channel widths of the four conv layers and the hidden FC width of ``mnist`` (committed mnist/1).
MNIST_WIDTHS = (16, 32, 32, 64)
MNIST_HIDDEN = 128
MAX_MACS = 5_000_000


def architecture(widths: tuple[int, int, int, int], hidden: int, classes: int = 10) -> str:
    """Human-readable description of :class:`ConvNet` with these widths (recorded in the manifest)."""
    return (
        f"ConvNet: 4x(conv3x3+BN+ReLU) widths {'-'.join(map(str, widths))}, 3 max-pools, "
        f"FC {widths[3] * 9}-{hidden}-{classes}"
    )


class ConvNet(nn.Module):
    """Input float32 ``[N,1,28,28]`` (normalised), output logits ``[N,classes]``.

    conv1 → pool (14x14) → conv2 → conv3 → pool (7x7) → conv4 → pool (3x3) → FC → FC.
    Layer names are mirrored by the Paddle port in :mod:`triserve_trainer.export_paddle`.
    """

    def __init__(
        self,
        widths: tuple[int, int, int, int] = MNIST_WIDTHS,
        hidden: int = MNIST_HIDDEN,
        classes: int = 10,
    ) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.widths: tuple[int, int, int, int] = (w1, w2, w3, w4)
        self.hidden, self.classes = hidden, classes
        self.conv1 = nn.Conv2d(1, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w2)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w3)
        self.conv4 = nn.Conv2d(w3, w4, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(w4)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(w4 * 3 * 3, hidden)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(torch.relu(self.bn3(self.conv3(x))))
        x = self.pool(torch.relu(self.bn4(self.conv4(x))))
        x = torch.flatten(x, 1)
        x = self.dropout(torch.relu(self.fc1(x)))
        out: torch.Tensor = self.fc2(x)
        return out


#: The mnist network (the name older code and tests use).
MnistNet = ConvNet


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
