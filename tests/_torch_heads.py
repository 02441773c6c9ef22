"""PyTorch references of the classifier heads in DESIGN.md ("The multi-attention head"),
written from the text, with the state_dict keys it lists, on torchvision's `features`.

Used only by the tests: `reference_model(arch, head, k)` returns a torch module whose
state_dict keys and shapes are the ones `leukemia.models.EfficientNet(arch, k, head=head)`
uses, so weights can be copied across by name.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def _spatial() -> nn.Sequential:
    """3x3 convs 2->64->32->16 (ReLU6) -> 1 (sigmoid), no bias, padding 1."""
    chans = [2, 64, 32, 16, 1]
    return nn.Sequential(
        *[nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False) for i in range(4)]
    )


def _run_spatial(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for i, conv in enumerate(seq):
        x = conv(x)
        x = torch.sigmoid(x) if i == 3 else nn.functional.relu6(x)
    return x


class ChannelMLP(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 8, 1)
        self.fc2 = nn.Conv2d(c // 8, c, 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc2(torch.relu(self.fc1(v))))


class AttentionHead(nn.Module):
    """kind: multi_attention | channel_attention | spatial_attention."""

    def __init__(self, c: int, k: int, kind: str, dropout: float = 0.5) -> None:
        super().__init__()
        self.kind = kind
        if kind != "spatial_attention":
            self.channel = ChannelMLP(c)
        if kind != "channel_attention":
            self.spatial1 = _spatial()
        if kind == "multi_attention":
            self.spatial2 = _spatial()
            self.attn_pool = nn.Linear(c, 1, bias=False)
        self.bn = nn.BatchNorm1d(c)
        self.fc = nn.Linear(c, 512)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(512, k)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = f
        if self.kind != "spatial_attention":
            gap = f.mean((2, 3), keepdim=True)
            gmp = f.amax((2, 3), keepdim=True)
            a = torch.sigmoid(self.channel(gap) + self.channel(gmp))
            x = a * f
        if self.kind == "channel_attention":
            z = x.mean((2, 3))
        else:
            cs = torch.cat([x.mean(1, keepdim=True), torch.max(x, 1, keepdim=True).values], 1)
            g1 = (_run_spatial(self.spatial1, cs) * x).mean((2, 3))
            z = g1
            if self.kind == "multi_attention":
                g2 = _run_spatial(self.spatial2, cs).mean((2, 3))  # [N, 1]
                z = (g1 + g2) / 2
                flat = f.flatten(2).transpose(1, 2)  # [N, S, C]
                w = torch.softmax(self.attn_pool(flat).squeeze(-1), dim=1)  # [N, S]
                z = z + torch.einsum("ns,nsc->nc", w, flat)
        z = self.bn(z)
        return self.out(self.drop(torch.relu(self.fc(z))))


class Reference(nn.Module):
    """torchvision features + avgpool-free head, keys `features.*` and `head.*`."""

    def __init__(self, arch: str, head: str, k: int, dropout: float = 0.5) -> None:
        super().__init__()
        tv = getattr(torchvision.models, arch)(num_classes=k)
        self.features = tv.features
        c = tv.classifier[1].in_features
        self.head = AttentionHead(c, k, head, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def reference_model(arch: str, head: str, k: int, dropout: float = 0.5) -> nn.Module:
    """torchvision's model for head="linear", else the attention reference."""
    if head == "linear":
        return getattr(torchvision.models, arch)(num_classes=k)
    return Reference(arch, head, k, dropout)
