"""A DenseNet-121-sized multi-label model in plain torch (no torchvision), for timing packager on
a real chest X-ray architecture: CheXNet's DenseNet-121 with 14 sigmoid outputs at 224x224, here
on one grayscale channel.

Growth 32, blocks (6, 12, 24, 16), bottleneck width 4 x growth, compression 0.5, as torchvision's
densenet121: with 3 input channels and 1000 classes both have 7,978,856 parameters. The weights
are a seeded random initialisation (torchvision's scheme), never trained: the model's cost is
real, its outputs are not a diagnosis.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from packager.example.export import export_fp32

GROWTH = 32
BLOCKS = (6, 12, 24, 16)
BN_SIZE = 4
STEM = 64  # channels after the first convolution


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to BN_SIZE x growth, BN-ReLU-3x3 conv to growth, concatenated."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, BN_SIZE * GROWTH, 1, bias=False),
            nn.BatchNorm2d(BN_SIZE * GROWTH),
            nn.ReLU(inplace=True),
            nn.Conv2d(BN_SIZE * GROWTH, GROWTH, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def transition(cin: int) -> nn.Sequential:
    """Between blocks: BN-ReLU-1x1 conv halving the channels, 2x2 average pooling."""
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cin // 2, 1, bias=False),
        nn.AvgPool2d(2, 2),
    )


class DenseNet121(nn.Module):
    """Sigmoid outputs, one per finding: the exported graph gives probabilities."""

    def __init__(self, findings: int = 14, channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, STEM, 7, 2, 3, bias=False),
            nn.BatchNorm2d(STEM),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        c = STEM
        for i, n in enumerate(BLOCKS):
            for _ in range(n):
                layers.append(DenseLayer(c))
                c += GROWTH
            if i < len(BLOCKS) - 1:
                layers.append(transition(c))
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, findings)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(torch.flatten(self.features(x), 1)))


def make_densenet(findings: int = 14, channels: int = 1, seed: int = 0) -> DenseNet121:
    torch.manual_seed(seed)
    return DenseNet121(findings, channels).eval()


def write_densenet(
    path: Path, size: int = 224, channels: int = 1, findings: int = 14, seed: int = 0
) -> Path:
    """The untrained model as ONNX (opset 17, dynamic batch, `input` -> `output`), checked by
    onnx.checker; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_fp32(make_densenet(findings, channels, seed), path, size, channels)
