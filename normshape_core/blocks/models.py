"""Models with BatchNorm, and the registry that maps names to constructors.

Every model takes inputs in [0, 1] and normalises inside (``InputNormalize``), so an
attack's eps is in input units. Add a model: write a constructor
``f(input_shape, num_classes, **kwargs) -> nn.Module`` and register it in ``MODELS``.

The norm layer of the MLP and the small CNN is a choice (``norm``, ``NORMS``): BatchNorm (the
default, and the only one of the ResNets), dual BN (``norms.DualBatchNorm``: a clean and an
adversarial set), no batch statistics at all (GroupNorm for the CNN, LayerNorm for the MLP),
and, for the CNN, normalizer-free (no norm layer: scaled weight standardisation and scaled
activations, Brock et al. 2021, as Wang et al. ICML 2022 use them for adversarial training;
its training adds adaptive gradient clipping, ``objectives.adaptive_gradient_clip_``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .norms import DualBatchNorm

#: the norm layers a model may be built with (``ModelSpec.norms`` says which each model has)
NORMS = ("bn", "dual_bn", "gn", "ln", "nf")
#: how each is named in tables and pages
NORM_LABELS = {"bn": "BatchNorm", "dual_bn": "dual BN", "gn": "GroupNorm", "ln": "LayerNorm",
               "nf": "normalizer-free"}
#: norms without batch statistics: PN, BN and shaped inference give the same logits
NO_BATCH_STATISTICS = ("gn", "ln", "nf")
#: GroupNorm's groups (fewer when the channels do not divide into this many)
GN_GROUPS = 8


def norm_layer(kind: str, features: int, dims: int) -> nn.Module:
    """The norm layer ``kind`` over ``features`` channels of 1-D features (``dims=1``) or
    images (``dims=2``). ``nf`` has none."""
    if kind == "bn":
        return nn.BatchNorm1d(features) if dims == 1 else nn.BatchNorm2d(features)
    if kind == "dual_bn":
        return DualBatchNorm(features, dims)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(features, GN_GROUPS), features)
    if kind == "ln":
        return nn.LayerNorm(features) if dims == 1 else nn.GroupNorm(1, features)
    if kind == "nf":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of: {', '.join(NORMS)}")


#: ReLU's gain in a normalizer-free net: keeps unit variance through ReLU(N(0, 1)) (Brock et
#: al. 2021: gamma = sqrt(2 / (1 - 1/pi)))
RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
#: the floor of var * fan_in in scaled weight standardisation
WS_EPS = 1e-4


def _standardized(w: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Scaled weight standardisation: each output unit's weights to mean 0 and variance
    1 / fan_in, times a learnt gain (Brock et al. 2021, eq. 2)."""
    dims = tuple(range(1, w.dim()))
    fan_in = w[0].numel()
    mean = w.mean(dim=dims, keepdim=True)
    var = w.var(dim=dims, keepdim=True, unbiased=False)
    return (w - mean) * torch.rsqrt(torch.clamp(var * fan_in, min=WS_EPS)) * gain


class WSConv2d(nn.Conv2d):
    """A convolution whose weights are standardised at every forward (``_standardized``),
    with a bias and a per-channel gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(x, _standardized(self.weight, self.gain), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)


class WSLinear(nn.Linear):
    """A linear layer with scaled weight standardisation, a bias and a per-unit gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_features, 1))

    def forward(self, x):
        return F.linear(x, _standardized(self.weight, self.gain), self.bias)


class ScaledReLU(nn.Module):
    """ReLU times ``RELU_GAIN``: the normalizer-free net's activation."""

    def forward(self, x):
        return F.relu(x) * RELU_GAIN


class InputNormalize(nn.Module):
    """(x - mean) / std with fixed per-channel constants (buffers, saved with the weights)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], ndim: int):
        super().__init__()
        shape = (1, -1) + (1,) * (ndim - 2)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x):
        return (x - self.mean) / self.std


class MLP(nn.Module):
    """Fully connected net for 2-D points: [Linear - BN - ReLU] x depth, then Linear
    (``norm``: bn, dual_bn or ln in place of BN)."""

    def __init__(self, input_shape, num_classes, hidden: int = 64, depth: int = 3,
                 mean=(0.5,), std=(0.25,), norm: str = "bn"):
        super().__init__()
        d = int(math.prod(input_shape))
        mean = list(mean) * d if len(mean) == 1 else list(mean)
        std = list(std) * d if len(std) == 1 else list(std)
        self.norm = InputNormalize(mean, std, ndim=2)
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(d, hidden, bias=False), norm_layer(norm, hidden, 1), nn.ReLU()]
            d = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def forward_features(self, x):
        return self.features(self.norm(x.flatten(1)))

    def forward(self, x):
        return self.head(self.forward_features(x))


class SmallCNN(nn.Module):
    """Two conv blocks [Conv3x3 - BN - ReLU - MaxPool], then FC - BN - ReLU - FC.

    Works for 8x8 digits and 28x28 / 32x32 images (adaptive pooling before the FC).
    ``norm``: bn, dual_bn or gn in place of BN; nf: no norm layer, weight-standardised
    convolutions and FC with biases, ReLU scaled by ``RELU_GAIN``.
    """

    def __init__(self, input_shape, num_classes, channels: int = 32, hidden: int = 128,
                 mean=(0.5,), std=(0.25,), norm: str = "bn"):
        super().__init__()
        c, h, w = input_shape
        mean = list(mean) * c if len(mean) == 1 else list(mean)
        std = list(std) * c if len(std) == 1 else list(std)
        self.norm = InputNormalize(mean, std, ndim=4)
        second_pool = min(h, w) >= 16
        out_hw = (h // 4, w // 4) if second_pool else (h // 2, w // 2)
        nf = norm == "nf"
        conv, linear, act = (WSConv2d, WSLinear, ScaledReLU) if nf else (nn.Conv2d, nn.Linear,
                                                                          nn.ReLU)
        self.conv = nn.Sequential(
            conv(c, channels, 3, padding=1, bias=nf), norm_layer(norm, channels, 2), act(),
            nn.MaxPool2d(2),
            conv(channels, 2 * channels, 3, padding=1, bias=nf),
            norm_layer(norm, 2 * channels, 2), act(),
            nn.MaxPool2d(2) if second_pool else nn.Identity(),
            # 8x8 digits arrive here at 4x4 already: adaptive pooling to 4x4 would be an identity
            # that still costs a kernel each way (the backward is slow on CPU). No parameters,
            # so the state dict is the same either way.
            nn.Identity() if out_hw == (4, 4) else nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Sequential(nn.Flatten(), linear(2 * channels * 16, hidden, bias=nf),
                                norm_layer(norm, hidden, 1), act())
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x):
        return self.fc(self.conv(self.norm(x)))

    def forward(self, x):
        return self.head(self.forward_features(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, drop=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al. 2016), widths 64-128-256-512."""

    def __init__(self, input_shape, num_classes, width: int = 64,
                 mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
        super().__init__()
        c = input_shape[0]
        if len(mean) != c:
            mean, std = [0.5] * c, [0.25] * c
        self.norm = InputNormalize(mean, std, ndim=4)
        self.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        layers, in_planes = [], width
        for i, stride in enumerate([1, 2, 2, 2]):
            planes = width * (2 ** i)
            layers += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.head = nn.Linear(in_planes, num_classes)

    def forward_features(self, x):
        out = self.layers(self.conv1(self.norm(x)))
        out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.head(self.forward_features(x))


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis) with pre-activation blocks.

    ``depth=34, width=10`` is the w32-10 style model of Madry et al.'s CIFAR-10 challenge
    (the paper's model); ``depth`` must satisfy (depth - 4) % 6 == 0.
    """

    def __init__(self, input_shape, num_classes, depth: int = 34, width: int = 10,
                 mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"wide ResNet depth must be 6k+4 (e.g. 16, 28, 34), got {depth}")
        n = (depth - 4) // 6
        c = input_shape[0]
        if len(mean) != c:
            mean, std = [0.5] * c, [0.25] * c
        self.norm = InputNormalize(mean, std, ndim=4)
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(c, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for i, stride in enumerate([1, 2, 2]):
            for j in range(n):
                blocks.append(PreActBlock(in_planes, widths[i + 1], stride if j == 0 else 1))
                in_planes = widths[i + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.head = nn.Linear(in_planes, num_classes)

    def forward_features(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(self.norm(x)))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.head(self.forward_features(x))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    constructor: Callable[..., nn.Module]
    description: str
    input_kind: str  # "points" (flat vectors) or "images" (C, H, W)
    norms: Tuple[str, ...] = ("bn",)
    """the norm layers it can be built with (``NORMS``); the first is its default"""


MODELS: Dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", MLP, "MLP with BN for 2-D points (hidden 64, depth 3)", "points",
                     ("bn", "dual_bn", "ln")),
    "small_cnn": ModelSpec("small_cnn", SmallCNN, "2-conv CNN with BN for digits and 28x28 images",
                           "images", ("bn", "dual_bn", "gn", "nf")),
    "preact_resnet18": ModelSpec("preact_resnet18", PreActResNet18, "PreAct ResNet-18", "images"),
    "wide_resnet": ModelSpec("wide_resnet", WideResNet,
                             "Wide ResNet (depth 34, width 10 = Madry et al.'s CIFAR-10 model)",
                             "images"),
}


def use_channels_last(model: nn.Module) -> nn.Module:
    """Store the 4-D weights channels-last (NHWC), so every conv, BN, ReLU and pooling layer
    runs on NHWC activations whatever the layout of the input. On CPU this is what makes the
    small CNN fast: PyTorch's NCHW max / adaptive-average pooling kernels are 10-15x slower
    than their NHWC ones on these shapes (benchmarks/run.py, BENCHMARKS.md). The values are
    the same (saved checkpoints are written contiguous, so their bytes do not change)."""
    return model.to(memory_format=torch.channels_last)


def build_model(name: str, input_shape: Tuple[int, ...], num_classes: int,
                channels_last: bool = False, **kwargs) -> nn.Module:
    """Build a registered model for data of ``input_shape`` with ``num_classes`` classes.
    ``channels_last`` stores an image model NHWC (``use_channels_last``): much faster on CPU,
    but its float results differ from NCHW in the last bits, and adversarial training
    amplifies such differences, so it is a recorded training setting, off by default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[name]
    norm = kwargs.get("norm", "bn")
    if norm not in spec.norms:
        raise ValueError(f"model {name!r} has no {norm!r} variant; its norms: "
                         f"{', '.join(spec.norms)}")
    if spec.input_kind == "images" and len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs images (C, H, W); this dataset gives "
                         f"inputs of shape {tuple(input_shape)}: use 'mlp'")
    if spec.input_kind == "points" and len(input_shape) != 1:
        # An MLP can still take flattened images; allowed.
        pass
    model = spec.constructor(tuple(input_shape), int(num_classes), **kwargs)
    if channels_last and spec.input_kind == "images":
        model = use_channels_last(model)
    return model
