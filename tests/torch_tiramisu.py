"""The Tiramisu (FC-DenseNet) as a plain PyTorch ``nn.Module``, for cross-checking tinyseg.

Written from the paper (Jégou et al. 2017) and the authors' Lasagne code's structure, with the
same module names as ``tinyseg.tiramisu.Tiramisu`` so that weights copy across by name:
``firstconv``, ``down_blocks.<i>.layers.<l>.{norm,conv}``, ``trans_down.<i>.{norm,conv}``,
``bottleneck.layers.<l>``, ``trans_up.<i>.conv``, ``up_blocks.<i>.layers.<l>``, ``finalconv``.

Only imported by tests that have the ``torch`` fixture (skipped without PyTorch).  The input
height and width must be multiples of ``2**pools`` (tinyseg pads other sizes; this does not).
"""
import torch
from torch import nn


class DenseLayer(nn.Module):
    def __init__(self, in_channels, growth_rate, dropout):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.conv(self.relu(self.norm(x))))


class DenseBlock(nn.Module):
    def __init__(self, in_channels, growth_rate, num_layers, dropout, new_features_only):
        super().__init__()
        self.new_features_only = new_features_only
        self.layers = nn.ModuleList(
            [DenseLayer(in_channels + i * growth_rate, growth_rate, dropout)
             for i in range(num_layers)])

    def forward(self, x):
        new = []
        for layer in self.layers:
            y = layer(x)
            new.append(y)
            x = torch.cat([x, y], 1)
        return torch.cat(new, 1) if self.new_features_only else x


class TransitionDown(nn.Module):
    def __init__(self, channels, dropout):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(channels, channels, 1, bias=True)
        self.drop = nn.Dropout(dropout)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.drop(self.conv(self.relu(self.norm(x)))))


def centre_crop(x, h, w):
    top = (x.shape[2] - h) // 2
    left = (x.shape[3] - w) // 2
    return x[:, :, top:top + h, left:left + w]


class TransitionUp(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=0,
                                       bias=True)

    def forward(self, x, skip):
        up = centre_crop(self.conv(x), skip.shape[2], skip.shape[3])
        return torch.cat([up, skip], 1)


class TorchTiramisu(nn.Module):
    def __init__(self, in_channels=3, num_classes=2, first_filters=48, growth_rate=16,
                 layers=(4,) * 11, pools=5, dropout=0.2):
        super().__init__()
        k = growth_rate
        self.firstconv = nn.Conv2d(in_channels, first_filters, 3, padding=1, bias=True)
        c, skips = first_filters, []
        self.down_blocks, self.trans_down = nn.ModuleList(), nn.ModuleList()
        for i in range(pools):
            self.down_blocks.append(DenseBlock(c, k, layers[i], dropout, False))
            c += layers[i] * k
            skips.append(c)
            self.trans_down.append(TransitionDown(c, dropout))
        self.bottleneck = DenseBlock(c, k, layers[pools], dropout, True)
        c = layers[pools] * k
        self.trans_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for i in range(pools):
            self.trans_up.append(TransitionUp(c, c))
            last = i == pools - 1
            cin = c + skips[pools - 1 - i]
            self.up_blocks.append(DenseBlock(cin, k, layers[pools + 1 + i], dropout, not last))
            c = cin + layers[pools + 1 + i] * k if last else layers[pools + 1 + i] * k
        self.finalconv = nn.Conv2d(c, num_classes, 1, bias=True)

    def forward(self, x):
        x = self.firstconv(x)
        skips = []
        for block, down in zip(self.down_blocks, self.trans_down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block in zip(self.trans_up, self.up_blocks):
            x = block(up(x, skips.pop()))
        return self.finalconv(x)


def from_tinyseg(model):
    """A ``TorchTiramisu`` with the config and weights (parameters and buffers) of a tinyseg
    ``Tiramisu``, in float64."""
    cfg = model.config
    net = TorchTiramisu(cfg["in_channels"], cfg["num_classes"], cfg["first_filters"],
                        cfg["growth_rate"], cfg["layers"], cfg["pools"], cfg["dropout"])
    net = net.double()
    state = {name: torch.from_numpy(arr.copy()) for name, arr in model.state_dict().items()}
    net.load_state_dict(state, strict=True)  # raises on any missing / unexpected name
    return net
