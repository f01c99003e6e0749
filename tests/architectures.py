"""Small models with the structures of published architectures (torchvision is not a
dependency, so they are written here from the papers, at small widths).

Each has the layer kinds real models prune badly when a scheme forgets them: depthwise and
grouped convs, squeeze-and-excitation 1x1 convs of a few channels, 7x7 / 5x5 / 4x4 / 1x1
kernels, ragged widths (not multiples of common block sizes), LSTM with ``proj_size``,
GRU, ``nn.MultiheadAttention`` (packed and with ``kdim``/``vdim``) and
``nn.TransformerEncoder`` with extra parameters of their own (class token, positions).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
            act: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class InvertedResidual(nn.Module):
    """MobileNetV2 (Sandler et al. 2018): 1x1 expand, 3x3 depthwise, 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn(cin, hidden, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Width 0.5-ish, one block per stage: (t, c, n, s) = (1, 8, 1, 1), (6, 12, 2, 2),
    (6, 20, 1, 2); last 1x1 conv to 72, global pool, classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        blocks = [conv_bn(3, 16, 3, 2)]
        cin = 16
        for t, c, n, s in [(1, 8, 1, 1), (6, 12, 2, 2), (6, 20, 1, 2)]:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        blocks.append(conv_bn(cin, 72, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(72, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    """Hu et al. 2018, as in EfficientNet: pool, 1x1 reduce, SiLU, 1x1 expand, sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(x.mean((2, 3), True)))))
        return x * s


class MBConv(nn.Module):
    """EfficientNet-B0 (Tan & Le 2019): expand, k x k depthwise, SE (1/4 of the block's
    input channels), 1x1 project."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = conv_bn(cin, hidden, 1, act=nn.SiLU) if expand > 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU)
        self.se = SqueezeExcite(hidden, max(1, cin // 4))
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.se(self.depthwise(self.expand(x))))


class EfficientNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.SiLU)
        self.blocks = nn.Sequential(MBConv(16, 8, 3, 1, 1), MBConv(8, 12, 5, 2, 6))
        self.head = conv_bn(12, 60, 1, act=nn.SiLU)
        self.fc = nn.Linear(60, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean(dim=(2, 3)))


class ResNeXt(nn.Module):
    """ResNeXt (Xie et al. 2017): 7x7 stem, max pool, a bottleneck whose 3x3 conv has 4
    groups (cardinality), a 1x1 downsample shortcut."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 20, 7, 2, 3, bias=False), nn.BatchNorm2d(20),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.conv1 = conv_bn(20, 36, 1, act=nn.ReLU)
        self.conv2 = conv_bn(36, 36, 3, 2, groups=4, act=nn.ReLU)
        self.conv3 = nn.Sequential(nn.Conv2d(36, 44, 1, bias=False), nn.BatchNorm2d(44))
        self.down = nn.Sequential(nn.Conv2d(20, 44, 1, 2, bias=False), nn.BatchNorm2d(44))
        self.fc = nn.Linear(44, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.relu(self.conv3(self.conv2(self.conv1(x))) + self.down(x))
        return self.fc(x.mean(dim=(2, 3)))


class ChannelsFirstNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt (Liu et al. 2022): 7x7 depthwise, LayerNorm, Linear 4x, GELU, Linear back,
    layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(nn.functional.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """4x4 stride-4 patchify stem, a block, 2x2 downsampling, a block, norm, head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 4, 4), ChannelsFirstNorm(24))
        self.stage1 = ConvNeXtBlock(24)
        self.down = nn.Sequential(ChannelsFirstNorm(24), nn.Conv2d(24, 40, 2, 2))
        self.stage2 = ConvNeXtBlock(40)
        self.norm = nn.LayerNorm(40)
        self.head = nn.Linear(40, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean(dim=(2, 3))))


class Recurrent(nn.Module):
    """Embedding, a 2-layer bidirectional LSTM with ``proj_size`` (Sak et al. 2014), a GRU
    and a linear head on the last step."""

    def __init__(self, vocab: int = 50, classes: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.lstm = nn.LSTM(16, 20, num_layers=2, bidirectional=True, proj_size=12,
                            batch_first=True)
        self.gru = nn.GRU(24, 18, batch_first=True)
        self.head = nn.Linear(18, classes)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(self.emb(x))
        y, _ = self.gru(y)
        return self.head(y[:, -1])


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021): 4x4 patches by a strided conv, a class
    token and learned positions (parameters of the model itself), pre-norm
    ``nn.TransformerEncoder`` layers, a linear head on the class token."""

    def __init__(self, dim: int = 32, image: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, 1 + (image // 4) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, dim_feedforward=72, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.norm(self.encoder(tokens + self.pos_embedding)[:, 0]))


class CrossAttention(nn.Module):
    """A decoder-style cross-attention whose keys and values have their own widths
    (``kdim``/``vdim``), so q, k, v are three separate weights, plus a sequence encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(10, 24)
        self.attn = nn.MultiheadAttention(24, 4, kdim=20, vdim=12, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        q, k, v = x
        out, _ = self.attn(self.query(q), k, v)
        return self.head(out.mean(dim=1))


def _image(batch: int, size: int) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randn(batch, 3, size, size, generator=g)


#: name -> (model factory, input factory taking a generator)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], object]]] = {
    "mobilenet_v2": (MobileNetV2, _image(2, 32)),
    "efficientnet": (EfficientNet, _image(2, 32)),
    "resnext": (ResNeXt, _image(2, 32)),
    "convnext": (ConvNeXt, _image(2, 32)),
    "recurrent": (Recurrent, lambda g: torch.randint(0, 50, (2, 7), generator=g)),
    "vit": (ViT, _image(2, 16)),
    "cross_attention": (CrossAttention, lambda g: (torch.randn(2, 5, 10, generator=g),
                                                   torch.randn(2, 6, 20, generator=g),
                                                   torch.randn(2, 6, 12, generator=g))),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]().eval()


def example(name: str, seed: int) -> object:
    return MODELS[name][1](torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: object) -> Tensor:
    with torch.no_grad():
        return model(x)
