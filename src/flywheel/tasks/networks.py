"""Image classifiers that return both the class logits and the embedding.

Every network here standardises each input image (zero mean, unit variance),
then runs a backbone (convolutions down to a feature map), global average
pooling, an embedding layer and a linear head. `forward` returns
`(logits, embedding)`: training needs the logits, serving and drift monitoring
need the embedding (the penultimate layer) as well, so both leave the model in
one pass. Weights are always initialised locally; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flywheel.config import ModelConfig


class StandardizeImage(nn.Module):
    """Per-image standardisation: `(x - mean) / (std + eps)` over each image's pixels.

    Part of the network, so the exported model carries it and serving only
    scales pixels to [0, 1]. It removes global brightness and contrast (lighting,
    shadows, scanner gain) before the first convolution, which makes the
    network learn faster and predict more steadily under lighting changes.
    """

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, H, W)` → `(B, C, H, W)`."""
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        std = x.std(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return (x - mean) / (std + self.eps)


class EmbeddingClassifier(nn.Module):
    """Standardise → backbone → global average pool → embedding → dropout → linear head.

    Args:
        backbone: maps `(B, C_in, H, W)` to a feature map `(B, feature_channels, h, w)`.
        feature_channels: channels of the backbone's output.
        embedding_dim: size of the embedding (the penultimate layer).
        num_classes: size of the logits.
        dropout: dropout before the head (training only).
        standardize: standardise each input image first.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        embedding_dim: int,
        num_classes: int,
        dropout: float,
        standardize: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.standardize: nn.Module = StandardizeImage() if standardize else nn.Identity()
        self.backbone = backbone
        self.embed = nn.Sequential(
            nn.Linear(feature_channels, embedding_dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, num_classes)
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x` `(B, C, H, W)` in [0, 1] → logits `(B, K)`, embedding `(B, D)`."""
        # A plain mean, not AdaptiveAvgPool2d: its CUDA backward is non-deterministic.
        features = self.backbone(self.standardize(x)).mean(dim=(2, 3))  # (B, C_feat)
        embedding = self.embed(features)  # (B, D)
        logits = self.head(self.dropout(embedding))  # (B, K)
        return logits, embedding


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def build_small_cnn(
    cfg: ModelConfig, num_classes: int, in_channels: int = 1
) -> EmbeddingClassifier:
    """A VGG-style CNN: per stage two 3×3 conv-BN-ReLU and a 2×2 max-pool.

    With the defaults (width 16, 4 stages) it has ≈ 0.3 M parameters and trains
    on 32×32 digits in about a minute on two CPU cores.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for stage in range(cfg.stages):
        c_out = cfg.width * 2**stage
        layers += _conv_bn_relu(c_in, c_out) + _conv_bn_relu(c_out, c_out)
        if stage < cfg.stages - 1:  # the last stage is pooled globally instead
            layers.append(nn.MaxPool2d(2))
        c_in = c_out
    return EmbeddingClassifier(
        nn.Sequential(*layers), c_in, cfg.embedding_dim, num_classes, cfg.dropout, cfg.standardize
    )


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3×3 convs with an identity (or 1×1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C_in, H, W)` → `(B, C_out, H / stride, W / stride)`."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def build_resnet(cfg: ModelConfig, num_classes: int, in_channels: int = 1) -> EmbeddingClassifier:
    """A CIFAR-style ResNet: a 3×3 stem, then `stages` stages of `depth` basic blocks.

    Width doubles and resolution halves at each stage after the first, so
    `stages=3, depth=3` is ResNet-20's layout at `width=16`.
    """
    layers: list[nn.Module] = _conv_bn_relu(in_channels, cfg.width)
    c_in = cfg.width
    for stage in range(cfg.stages):
        c_out = cfg.width * 2**stage
        for block in range(cfg.depth):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(c_in, c_out, stride))
            c_in = c_out
    model = EmbeddingClassifier(
        nn.Sequential(*layers), c_in, cfg.embedding_dim, num_classes, cfg.dropout, cfg.standardize
    )
    for module in model.modules():
        # Zero-init the last BN of each residual branch: every block starts as
        # the identity, which makes deeper settings train as easily as shallow ones.
        if isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    return model


MODEL_BUILDERS: dict[str, Callable[[ModelConfig, int, int], EmbeddingClassifier]] = {
    "small_cnn": build_small_cnn,
    "resnet": build_resnet,
}
"""Model name (`train.model.name` in params.yaml) → builder."""


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 1) -> EmbeddingClassifier:
    """Build the network `cfg.name` with freshly initialised weights.

    Args:
        cfg: architecture and size.
        num_classes: number of logits.
        in_channels: image channels (1 for grayscale).

    Raises:
        ValueError: unknown model name.
    """
    try:
        builder = MODEL_BUILDERS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown model {cfg.name!r}; known: {sorted(MODEL_BUILDERS)}") from None
    return builder(cfg, num_classes, in_channels)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
