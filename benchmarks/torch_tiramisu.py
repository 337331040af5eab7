"""The Tiramisu (FC-DenseNet, Jégou et al. 2017) as a plain PyTorch ``nn.Module``.

Reference code for the benchmarks (and for cross-checks), not part of the library: tinyseg
never imports it.  It is written the way a PyTorch user would write the network (one
``torch.cat`` per dense layer, autograd for the backward pass), with the same
architecture and the same parameter and buffer names as ``tinyseg.tiramisu.Tiramisu``, so
that weights copy across by name in both directions::

    firstconv.{weight,bias}
    down_blocks.<i>.layers.<l>.norm.{weight,bias,running_mean,running_var,num_batches_tracked}
    down_blocks.<i>.layers.<l>.conv.{weight,bias}
    trans_down.<i>.norm.*   trans_down.<i>.conv.*        (1×1 conv, then 2×2 max-pool)
    bottleneck.layers.<l>.*
    trans_up.<i>.conv.{weight,bias}                     (ConvTranspose2d 3×3, stride 2, pad 0)
    up_blocks.<i>.layers.<l>.*
    finalconv.{weight,bias}                              (1×1 conv to the class logits)

Architecture (``k`` growth rate, ``L_b`` layers of block ``b``):

* dense layer: BatchNorm → ReLU → 3×3 conv (``k`` maps, bias) → Dropout;
* dense block: ``x_ℓ = layer_ℓ([x₀, …, x_{ℓ−1}])``; returns ``[x₀, …, x_L]`` on the down path
  and in the last up block, ``[x₁, …, x_L]`` (new maps only) in the bottleneck and the other
  up blocks;
* transition down: BatchNorm → ReLU → 1×1 conv (m → m) → Dropout → 2×2 max-pool;
* transition up: 3×3 transposed conv, stride 2, no padding (H → 2H + 1), centre-cropped to
  the skip connection's size, then ``[up, skip]``;
* inputs whose height or width is not a multiple of ``2**pools`` are zero-padded at the
  bottom / right and the logits cropped back, as tinyseg does.

``memory_efficient=True`` wraps each dense layer's concatenation + BatchNorm + ReLU in
``torch.utils.checkpoint`` (recomputed in the backward pass), the technique of torchvision's
DenseNet; the benchmarks use the default plain version, which is what most PyTorch code runs.

Only :func:`preset` and :func:`from_tinyseg` know about tinyseg (and import it lazily).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["DenseLayer", "DenseBlock", "TransitionDown", "TransitionUp", "TorchTiramisu",
           "PRESET_CONFIGS", "preset", "from_tinyseg", "copy_weights"]

# The same presets as tinyseg.tiramisu (first_filters m, growth rate k, layers, pools), so
# this file works without tinyseg; ``tests`` check that both agree.
PRESET_CONFIGS: Dict[str, dict] = {
    "fc_densenet56": dict(first_filters=48, growth_rate=12, layers=4, pools=5),
    "fc_densenet67": dict(first_filters=48, growth_rate=16, layers=5, pools=5),
    "fc_densenet103": dict(first_filters=48, growth_rate=16,
                           layers=[4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4], pools=5),
    "tiramisu_small": dict(first_filters=24, growth_rate=12, layers=4, pools=4),
    "tiramisu_tiny": dict(first_filters=16, growth_rate=8, layers=3, pools=3),
}


def _layers_list(layers: Union[int, Sequence[int]], pools: int) -> List[int]:
    """Layers per block for all ``2·pools + 1`` blocks (one int, down + bottleneck mirrored,
    or the full list), as ``tinyseg.tiramisu``."""
    if isinstance(layers, int):
        return [layers] * (2 * pools + 1)
    full = [int(v) for v in layers]
    if len(full) == pools + 1:
        full = full + full[-2::-1]
    if len(full) != 2 * pools + 1:
        raise ValueError(f"TorchTiramisu: layers needs pools + 1 or 2·pools + 1 entries, "
                         f"got {full}")
    return full


class DenseLayer(nn.Module):
    """BatchNorm → ReLU → 3×3 conv (``growth_rate`` maps) → Dropout; input: a list of maps
    that are concatenated first (``[x₀, …, x_{ℓ−1}]``)."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=True)
        self.drop = nn.Dropout(dropout)
        self.memory_efficient = memory_efficient

    def _bottom(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(torch.cat(xs, 1)))

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(
                x.requires_grad for x in xs):
            # the running statistics are updated again when the checkpoint recomputes; that
            # is torchvision's behaviour too, and irrelevant for timing and memory
            h = checkpoint(self._bottom, *xs, use_reentrant=False)
        else:
            h = self._bottom(*xs)
        return self.drop(self.conv(h))


class DenseBlock(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, dropout: float,
                 new_features_only: bool, memory_efficient: bool = False) -> None:
        super().__init__()
        self.new_features_only = new_features_only
        self.layers = nn.ModuleList(
            [DenseLayer(in_channels + i * growth_rate, growth_rate, dropout, memory_efficient)
             for i in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [x]
        for layer in self.layers:
            maps.append(layer(maps))
        return torch.cat(maps[1:] if self.new_features_only else maps, 1)


class TransitionDown(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(channels, channels, 1, bias=True)
        self.drop = nn.Dropout(dropout)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.drop(self.conv(self.relu(self.norm(x)))))


class TransitionUp(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=0,
                                       bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.conv(x)
        hs, ws = skip.shape[2], skip.shape[3]
        top, left = (up.shape[2] - hs) // 2, (up.shape[3] - ws) // 2
        return torch.cat([up[:, :, top:top + hs, left:left + ws], skip], 1)


class TorchTiramisu(nn.Module):
    """``TorchTiramisu(in_channels=3, num_classes=2, first_filters=48, growth_rate=16,
    layers=4, pools=5, dropout=0.2, memory_efficient=False)``: (N, C, H, W) → logits
    (N, num_classes, H, W).  Same arguments (and ``layers`` forms) as tinyseg's
    ``Tiramisu``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, first_filters: int = 48,
                 growth_rate: int = 16, layers: Union[int, Sequence[int]] = 4, pools: int = 5,
                 dropout: float = 0.2, memory_efficient: bool = False) -> None:
        super().__init__()
        blocks = _layers_list(layers, pools)
        k = growth_rate
        self.pools = pools
        self.firstconv = nn.Conv2d(in_channels, first_filters, 3, padding=1, bias=True)
        c, skips = first_filters, []
        self.down_blocks, self.trans_down = nn.ModuleList(), nn.ModuleList()
        for i in range(pools):
            self.down_blocks.append(DenseBlock(c, k, blocks[i], dropout, False,
                                               memory_efficient))
            c += blocks[i] * k
            skips.append(c)
            self.trans_down.append(TransitionDown(c, dropout))
        self.bottleneck = DenseBlock(c, k, blocks[pools], dropout, True, memory_efficient)
        c = blocks[pools] * k
        self.trans_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for i in range(pools):
            self.trans_up.append(TransitionUp(c, c))
            last = i == pools - 1
            c_in = c + skips[pools - 1 - i]
            n = blocks[pools + 1 + i]
            self.up_blocks.append(DenseBlock(c_in, k, n, dropout, not last, memory_efficient))
            c = c_in + n * k if last else n * k
        self.finalconv = nn.Conv2d(c, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        step = 2 ** self.pools
        ph, pw = -h % step, -w % step
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.firstconv(x)
        skips = []
        for block, down in zip(self.down_blocks, self.trans_down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block in zip(self.trans_up, self.up_blocks):
            x = block(up(x, skips.pop()))
        logits = self.finalconv(x)
        return logits[:, :, :h, :w] if (ph or pw) else logits


def preset(name: str, num_classes: int = 2, **overrides) -> TorchTiramisu:
    """The PyTorch twin of ``tinyseg.tiramisu.PRESETS[name]`` (random PyTorch init)."""
    if name not in PRESET_CONFIGS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESET_CONFIGS)}")
    return TorchTiramisu(**{**PRESET_CONFIGS[name], "num_classes": num_classes, **overrides})


def copy_weights(net: TorchTiramisu, state: Dict[str, "object"]) -> TorchTiramisu:
    """Load a tinyseg ``state_dict()`` (NumPy arrays, dotted names) into ``net``; strict, so a
    missing or unexpected name raises."""
    float_dtype = next(net.parameters()).dtype
    tensors = {}
    for name, value in state.items():
        t = torch.as_tensor(value).clone()
        tensors[name] = t.to(float_dtype) if t.is_floating_point() else t
    net.load_state_dict(tensors, strict=True)
    return net


def from_tinyseg(model, memory_efficient: bool = False,
                 dtype: Optional[torch.dtype] = None) -> TorchTiramisu:
    """A ``TorchTiramisu`` with the config and weights (parameters and buffers) of a tinyseg
    ``Tiramisu``; ``dtype`` defaults to the tinyseg model's (float32 or float64)."""
    cfg = model.config
    net = TorchTiramisu(cfg["in_channels"], cfg["num_classes"], cfg["first_filters"],
                        cfg["growth_rate"], cfg["layers"], cfg["pools"], cfg["dropout"],
                        memory_efficient=memory_efficient)
    if dtype is None:
        dtype = torch.float64 if model.dtype.itemsize == 8 else torch.float32
    net = net.to(dtype)
    return copy_weights(net, model.state_dict())
