"""Networks registry: the only place where per-network differences live.

- ``resnet50`` / ``resnet101``: torchvision's ResNet (Bottleneck, ImageNet stem)
  with a width multiplier that scales every stage and keeps the depth, so the
  layer graph is the paper's at any width. At width 1.0 the model *is*
  torchvision's (same class, same state-dict keys and shapes) and loads
  ImageNet weights (``weights``: torchvision's ``IMAGENET1K_V1`` /
  ``IMAGENET1K_V2``, or a local state-dict file in torchvision's layout).
- ``pspnet``: PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet-50 backbone
  (output stride 8), pyramid pooling with bins 1/2/3/6 and an auxiliary head on
  ``layer3`` that is used in training only. ``weights`` initialise its backbone
  as they do ResNet-50 (the heads stay random).

Each entry (``NetworkSpec``) holds every per-network fact the rest of mpq
reads: the builder, which layers stay at 8 bits (the first conv and the
classifier), which are left in float (the auxiliary head, dropped at
inference), the task (and so the metric), the display title, the report's
figure id and the paper claims the network is evidence for. A new network is
one ``register`` call plus its section in ``params.yaml`` (``docs/extending.md``).
"""
from __future__ import annotations

import os
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from .registry import Registry

__all__ = ["NetworkSpec", "NETWORKS", "TASK_METRICS", "TORCHVISION_WEIGHTS", "WEIGHTS_SUFFIXES",
           "WeightsUnavailableError", "register", "unregister", "get_spec", "build", "check_weights",
           "eval_resize", "ScaledResNet", "PSPNet"]

# task -> (short metric name, axis label): what the report calls each task's metric
TASK_METRICS = {"classification": ("top-1", "Top-1 accuracy (%)"),
                "segmentation": ("mIoU", "mIoU (%)")}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ScaledResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every stage's width multiplied by ``width``.

    torchvision's ``width_per_group`` widens only the 3x3 convs of a bottleneck;
    this scales the stem, all stages and the classifier input alike.
    """

    def __init__(self, layers: list[int], *, width: float = 1.0, num_classes: int = 1000,
                 replace_stride_with_dilation: list[bool] | None = None):
        nn.Module.__init__(self)
        block = tv_resnet.Bottleneck
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = _scaled(64, width)
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        dil = replace_stride_with_dilation or [False, False, False]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, _scaled(64, width), layers[0])
        self.layer2 = self._make_layer(block, _scaled(128, width), layers[1], stride=2, dilate=dil[0])
        self.layer3 = self._make_layer(block, _scaled(256, width), layers[2], stride=2, dilate=dil[1])
        self.layer4 = self._make_layer(block, _scaled(512, width), layers[3], stride=2, dilate=dil[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(_scaled(512, width) * block.expansion, num_classes)
        # torchvision's initialisation, with zero-init of the last BN of each block
        # (helps short from-scratch training of deep ResNets).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        for m in self.modules():
            if isinstance(m, tv_resnet.Bottleneck):
                nn.init.constant_(m.bn3.weight, 0)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone features ``(layer3, layer4)`` (for dense prediction heads)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: average-pool to bins x bins, 1x1 conv, upsample, concat."""

    def __init__(self, cin: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        self.stages = nn.ModuleList(_conv_bn_relu(cin, cin // len(bins), 1) for _ in bins)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pooled = [F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), size=(h, w), mode="bilinear",
                                align_corners=False) for b, stage in zip(self.bins, self.stages)]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    """PSPNet with a dilated ResNet-50 backbone (output stride 8).

    ``forward`` returns the logits at the input resolution; in training mode it
    returns ``(logits, aux_logits)``, the auxiliary head reading ``layer3``.
    """

    def __init__(self, *, num_classes: int, width: float = 1.0, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.backbone = ScaledResNet([3, 4, 6, 3], width=width, num_classes=1000,
                                     replace_stride_with_dilation=[False, True, True])
        del self.backbone.fc, self.backbone.avgpool  # classification head is not used
        c4 = _scaled(512, width) * 4
        c3 = _scaled(256, width) * 4
        mid = _scaled(512, width)
        self.ppm = PyramidPooling(c4, bins)
        self.head = nn.Sequential(_conv_bn_relu(2 * c4, mid, 3), nn.Dropout2d(0.1))
        self.classifier = nn.Conv2d(mid, num_classes, 1)
        self.aux = nn.Sequential(_conv_bn_relu(c3, _scaled(256, width), 3), nn.Dropout2d(0.1),
                                 nn.Conv2d(_scaled(256, width), num_classes, 1))

    def forward(self, x: Tensor):
        size = x.shape[-2:]
        c3, c4 = self.backbone.features(x)
        out = self.classifier(self.head(self.ppm(c4)))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if self.training:
            aux = F.interpolate(self.aux(c3), size=size, mode="bilinear", align_corners=False)
            return out, aux
        return out


# ---- starting weights ---------------------------------------------------------------------------
# ``weights``: None (random init), one of these torchvision names, or a local state-dict file.
TORCHVISION_WEIGHTS = ("IMAGENET1K_V1", "IMAGENET1K_V2")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin")
_WEIGHT_ENUMS = {"resnet50": tv_resnet.ResNet50_Weights, "resnet101": tv_resnet.ResNet101_Weights}
# no network: URLError (DNS, refused), socket.timeout, ConnectionError, ...: all OSErrors
_NETWORK_ERRORS = (urllib.error.URLError, OSError)


class WeightsUnavailableError(FileNotFoundError):
    """Starting weights that are not on this machine: torchvision's not cached while offline, or a
    local file that is missing. Its message is one line saying what to put where."""


def check_weights(weights: str | None, setting: str = "weights") -> str | None:
    """``weights`` as given if valid (None, a torchvision name, a .pth/.pt/.bin path); else a one-line
    ``ValueError`` (naming ``setting``) listing the choices. Does not check that a local file exists."""
    if weights is None or weights in TORCHVISION_WEIGHTS:
        return weights
    if isinstance(weights, (str, os.PathLike)) and str(weights).lower().endswith(WEIGHTS_SUFFIXES):
        return weights
    raise ValueError(f"{setting}: unknown weights {weights!r}: choose null (random init), one of "
                     f"{list(TORCHVISION_WEIGHTS)} or a path to a state-dict file ending in "
                     f"{'/'.join(WEIGHTS_SUFFIXES)}")


def eval_resize(weights: str | None, input_size: int) -> int:
    """The resize side before the centre crop of ``input_size`` in ImageNet evaluation, matching how
    ``weights`` were evaluated: torchvision's ``resize_size`` of those weights scaled by
    ``input_size / crop_size`` (V1: 256 at 224, V2: 232 at 224); for None or a local file the classic
    ``round(input_size * 256 / 224)``."""
    if check_weights(weights) in TORCHVISION_WEIGHTS:
        preset = tv_resnet.ResNet50_Weights[weights].transforms()  # same presets for ResNet-101
        resize, crop = preset.resize_size[0], preset.crop_size[0]
    else:
        resize, crop = 256, 224
    return int(round(input_size * resize / crop))


def _torchvision_state(arch: str, weights: str) -> Mapping:
    """torchvision's ``weights`` for ``arch`` (from the hub cache; downloaded when online)."""
    enum = _WEIGHT_ENUMS[arch][weights]
    target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))
    how = f"download {enum.url} and put it at {target}"
    try:
        return enum.get_state_dict(progress=False)
    except Exception as e:
        why = f"{type(e).__name__}: {_first_line(e)}"
        if os.path.isfile(target):  # cached but unreadable (truncated, corrupt, no permission)
            raise WeightsUnavailableError(f"cached {arch} {weights} weights {target} are unreadable ({why}): "
                                          f"delete the file and {how}") from None
        if isinstance(e, _NETWORK_ERRORS):  # offline and not cached
            raise WeightsUnavailableError(f"{arch} {weights} weights are not cached and could not be "
                                          f"downloaded ({_first_line(getattr(e, 'reason', None) or e)}): "
                                          f"{how}") from None
        raise


def _first_line(e: object) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _file_state(path: str, setting: str) -> Mapping:
    """A state dict from a local file; unwraps ``{"state_dict": ...}`` / ``{"model": ...}``."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"{setting}: no weights file {os.path.abspath(path)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{setting}: cannot read {path} as a PyTorch state dict "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    for _ in range(2):
        if isinstance(state, Mapping):
            inner = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), None)
            if inner is not None:
                state = inner
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{setting}: {path} holds no state dict of tensors (nor under 'state_dict' or 'model')")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _weights_state(arch: str, weights: str, setting: str) -> tuple[Mapping, str]:
    """``(state dict, its description)`` of ``weights``: a torchvision name or a local file."""
    if weights in TORCHVISION_WEIGHTS:
        return _torchvision_state(arch, weights), f"torchvision's {arch} {weights}"
    return _file_state(weights, setting), str(weights)


def _load_state(model: ScaledResNet, state: Mapping, arch: str, source: str, setting: str) -> None:
    """Load ``state`` (torchvision's ``arch`` layout) into ``model``. The classifier ``fc`` loads only
    where its shape fits (else it stays random; PSPNet's backbone has none); any other missing,
    unexpected or misshapen key is a one-line ``ValueError`` naming the first ones."""
    own = model.state_dict()
    head = lambda k: k.startswith("fc.")  # noqa: E731
    optional = lambda k: k.endswith("num_batches_tracked")  # noqa: E731  (absent in old files)
    missing = [k for k in own if k not in state and not head(k) and not optional(k)]
    unexpected = [k for k in state if k not in own and not head(k)]
    misshapen = [k for k in state if k in own and not head(k) and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        parts = [f"{what} {keys[:3]}{' ...' if len(keys) > 3 else ''}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if keys]
        raise ValueError(f"{setting}: {source} does not match {arch} (torchvision's layout): " + "; ".join(parts))
    fits = {k: v for k, v in state.items() if k in own and (not head(k) or v.shape == own[k].shape)}
    model.load_state_dict(fits, strict=False)


@dataclass(frozen=True)
class NetworkSpec:
    """What differs between networks; everything else in mpq is network-agnostic."""

    name: str
    task: str  # "classification" | "segmentation"
    builder: Callable[..., nn.Module]  # builder(*, num_classes, width, weights) -> float model
    fixed_8bit: tuple[str, ...]  # module names kept at 8 bits
    float_only: tuple[str, ...] = ()  # module-name prefixes never quantized (training-only)
    candidate_count: int = 0  # conv/linear layers at 4/2 bits, for checks
    arch: str = ""
    title: str = ""  # display name in figures and tables (default: the name)
    figure: str = "F"  # the report's id of its frontier figure (F1, F2, ...)
    claims: tuple[str, ...] = ()  # the paper claims it is evidence for (report, T4)
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASK_METRICS:
            raise ValueError(f"network {self.name!r}: unknown task {self.task!r}; choose one of {list(TASK_METRICS)}")
        if not self.title:
            object.__setattr__(self, "title", self.name)

    @property
    def metric(self) -> str:
        """Short name of the task's metric (``top-1``, ``mIoU``)."""
        return TASK_METRICS[self.task][0]

    @property
    def metric_label(self) -> str:
        """Axis label of the task's metric."""
        return TASK_METRICS[self.task][1]


def _starting_state(arch: str, weights: str | None, width: float, setting: str) -> tuple[Mapping, str] | None:
    """Validate ``weights`` and fetch them (before building, so that a failure is quick)."""
    if check_weights(weights, setting) is None:
        return None
    if width != 1.0:
        raise ValueError(f"{setting}: starting weights exist only at width 1.0 (got width={width}); "
                         f"set the network's width to 1.0 or its weights to null")
    return _weights_state(arch, weights, setting)


def _build_resnet(layers: list[int], arch: str):
    def build(*, num_classes: int, width: float = 1.0, weights: str | None = None) -> nn.Module:
        setting = f"network.{arch}.weights"
        start = _starting_state(arch, weights, width, setting)
        model = ScaledResNet(layers, width=width, num_classes=num_classes)
        if start is not None:
            _load_state(model, start[0], arch, start[1], setting)
        return model
    return build


def _build_pspnet(*, num_classes: int, width: float = 1.0, weights: str | None = None) -> nn.Module:
    setting = "network.pspnet.weights"
    start = _starting_state("resnet50", weights, width, setting)
    model = PSPNet(num_classes=num_classes, width=width)
    if start is not None:  # ImageNet ResNet-50 backbone, as in the PSPNet paper; the heads stay random
        _load_state(model.backbone, start[0], "resnet50", start[1], setting)
    return model


NETWORKS: Registry[NetworkSpec] = Registry("network")
unregister = NETWORKS.remove


def register(spec: NetworkSpec, *, replace: bool = False) -> NetworkSpec:
    """Add a network to the registry (report order = registration order)."""
    return NETWORKS.add(spec, replace=replace)


register(NetworkSpec("resnet50", "classification", _build_resnet([3, 4, 6, 3], "resnet50"),
                     fixed_8bit=("conv1", "fc"), candidate_count=52, arch="resnet50", title="ResNet-50",
                     figure="F1", claims=("C1", "C2")))
register(NetworkSpec("resnet101", "classification", _build_resnet([3, 4, 23, 3], "resnet101"),
                     fixed_8bit=("conv1", "fc"), candidate_count=103, arch="resnet101", title="ResNet-101",
                     figure="F2", claims=("C1", "C2")))
register(NetworkSpec("pspnet", "segmentation", _build_pspnet, fixed_8bit=("backbone.conv1", "classifier"),
                     float_only=("aux",), candidate_count=57, arch="pspnet-resnet50", title="PSPNet",
                     figure="F3", claims=("C3",)))


def get_spec(name: str) -> NetworkSpec:
    """The registry entry for ``name``; a one-line error naming the registered networks otherwise."""
    return NETWORKS.lookup(name)


def build(name: str, *, num_classes: int, width: float = 1.0, weights: str | None = None) -> nn.Module:
    """Build network ``name`` (a float model) via its builder ``builder(num_classes=, width=, weights=)``.

    ``weights`` (``network.<name>.weights``): None = random init; ``"IMAGENET1K_V1"`` /
    ``"IMAGENET1K_V2"`` = torchvision's ImageNet weights of that name (cached under
    ``torch.hub.get_dir()``, downloaded when online; ``WeightsUnavailableError`` otherwise); or a path to
    a ``.pth``/``.pt``/``.bin`` state dict in torchvision's layout (possibly under ``"state_dict"`` or
    ``"model"``, possibly with DDP's ``module.`` prefix). Weights need width 1.0.
    """
    spec = get_spec(name)
    if not 0 < width <= 4:
        raise ValueError(f"width must be in (0, 4], got {width}")
    return spec.builder(num_classes=num_classes, width=width, weights=weights)
