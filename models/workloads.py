"""Layer shapes of the networks the simulator runs (pure Python: no torch import).

A fully connected layer is a 1x1 convolution on a 1x1 feature map, so every block sees one
layer type. Each conv layer is also a GEMM ``out[M, N] = im2col(x)[M, K] @ W[K, N]`` with
``M`` output pixels, ``K = in_ch * k * k`` (channel-major, then ky, then kx, as torch's
``unfold``) and ``N`` output channels.

A grouped conv (``groups`` > 1; depthwise: ``groups == in_ch``) is ``groups`` independent
convs, group ``g`` taking input channels ``[g, g + 1) * in_ch / groups`` to its ``out_ch /
groups`` output channels. ``group_layer(g)`` is one of them, and that is what a block runs
(one layer per group, issued by the host: ``sim.workload``). Its ``gemm`` is one group's K
(``in_ch / groups * k * k``) against all ``out_ch`` columns, so ``macs`` is the real count.
"""

from __future__ import annotations

from dataclasses import dataclass

NETWORKS = ("digits", "vgg16", "resnet18", "alexnet")
# the architectures of models/zoo.py (``--model NAME``), named here without importing torch
ZOO_MODELS = ("resnet18", "resnet50", "vgg16", "mobilenet_v2", "alexnet")


@dataclass(frozen=True)
class ConvLayer:
    name: str
    in_ch: int
    out_ch: int
    in_h: int
    in_w: int
    k: int = 3
    stride: int = 1
    pad: int = 0
    relu: bool = True
    pool: int = 1  # max-pool window (= stride) applied after ReLU; 1 = none
    kind: str = "conv"  # "conv" or "fc"
    groups: int = 1  # independent convs over equal slices of the channels (depthwise: in_ch)

    def __post_init__(self):
        for f in ("in_ch", "out_ch", "in_h", "in_w", "k", "stride", "pool", "groups"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"layer {self.name!r}: {f} must be a positive integer, not {v!r}")
        if self.pad < 0:
            raise ValueError(f"layer {self.name!r}: pad must be >= 0, not {self.pad!r}")
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(
                f"layer {self.name!r}: a {self.k}x{self.k} kernel with stride {self.stride} and "
                f"pad {self.pad} does not fit a {self.in_h}x{self.in_w} input")
        if self.in_ch % self.groups or self.out_ch % self.groups or (
                self.groups > 1 and self.kind != "conv"):
            raise ValueError(f"layer {self.name!r}: {self.groups} groups must divide its "
                             f"{self.in_ch} input and {self.out_ch} output channels (convs only)")

    @property
    def out_h(self) -> int:
        return (self.in_h + 2 * self.pad - self.k) // self.stride + 1

    @property
    def out_w(self) -> int:
        return (self.in_w + 2 * self.pad - self.k) // self.stride + 1

    @property
    def gemm(self) -> tuple[int, int, int]:
        """(M, K, N) of the layer as a matrix product (K: one group's, for a grouped conv)."""
        return self.out_h * self.out_w, self.in_ch // self.groups * self.k * self.k, self.out_ch

    @property
    def macs(self) -> int:
        m, k, n = self.gemm
        return m * k * n

    @property
    def input_size(self) -> int:
        return self.in_ch * self.in_h * self.in_w

    @property
    def weight_size(self) -> int:
        return self.in_ch // self.groups * self.k * self.k * self.out_ch

    @property
    def output_size(self) -> int:
        return self.out_ch * self.out_h * self.out_w

    def group_layer(self, g: int) -> "ConvLayer":
        """Group ``g`` of a grouped conv as a conv of its own (named ``<name>.group<g>``)."""
        if not 0 <= g < self.groups:
            raise ValueError(f"layer {self.name!r} has {self.groups} groups, not a group {g}")
        if self.groups == 1:
            return self
        return ConvLayer(f"{self.name}.group{g}", self.in_ch // self.groups,
                         self.out_ch // self.groups, self.in_h, self.in_w, k=self.k,
                         stride=self.stride, pad=self.pad, relu=self.relu, pool=self.pool)


def fc(name: str, in_features: int, out_features: int, relu: bool = True) -> ConvLayer:
    return ConvLayer(name, in_features, out_features, 1, 1, k=1, relu=relu, kind="fc")


def vgg16(size: int = 224) -> list[ConvLayer]:
    """VGG-16 (Simonyan & Zisserman 2015), configuration D: 13 conv + 3 FC."""
    cfg = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    layers, c, h = [], 3, size
    for stage, (out, n) in enumerate(cfg, start=1):
        for i in range(1, n + 1):
            layers.append(ConvLayer(f"conv{stage}_{i}", c, out, h, h, k=3, pad=1,
                                    pool=2 if i == n else 1))
            c = out
        h //= 2
    layers += [fc("fc6", c * h * h, 4096), fc("fc7", 4096, 4096),
               fc("fc8", 4096, 1000, relu=False)]
    return layers


def alexnet(size: int = 227) -> list[ConvLayer]:
    """AlexNet (Krizhevsky et al. 2012), single-tower, ungrouped: 5 conv + 3 FC."""
    return [
        ConvLayer("conv1", 3, 96, size, size, k=11, stride=4, pool=1),
        ConvLayer("conv2", 96, 256, 27, 27, k=5, pad=2),
        ConvLayer("conv3", 256, 384, 13, 13, k=3, pad=1),
        ConvLayer("conv4", 384, 384, 13, 13, k=3, pad=1),
        ConvLayer("conv5", 384, 256, 13, 13, k=3, pad=1),
        fc("fc6", 256 * 6 * 6, 4096), fc("fc7", 4096, 4096), fc("fc8", 4096, 1000, relu=False),
    ]


def resnet18(size: int = 224) -> list[ConvLayer]:
    """ResNet-18 (He et al. 2016): every conv (with the 1x1 downsampling shortcuts) and the FC.

    The residual additions and the stem's 3x3 max-pool are not MAC work and are left to the
    host; the layer list is what the blocks execute.
    """
    layers = [ConvLayer("conv1", 3, 64, size, size, k=7, stride=2, pad=3)]
    h, c = size // 4, 64  # after the stem's stride-2 conv and stride-2 max-pool
    for stage, out in enumerate([64, 128, 256, 512], start=2):
        for blk in range(2):
            stride = 2 if (stage > 2 and blk == 0) else 1
            p = f"layer{stage - 1}.{blk}"
            layers.append(ConvLayer(f"{p}.conv1", c, out, h, h, k=3, stride=stride, pad=1))
            h_out = (h + 2 - 3) // stride + 1
            layers.append(ConvLayer(f"{p}.conv2", out, out, h_out, h_out, k=3, pad=1))
            if stride != 1 or c != out:
                layers.append(ConvLayer(f"{p}.downsample", c, out, h, h, k=1, stride=stride))
            c, h = out, h_out
    layers.append(fc("fc", 512, 1000, relu=False))
    return layers


def digits_layers() -> list[ConvLayer]:
    """The bundled digits CNN (``models.digits.DigitsNet``) as layer shapes."""
    return [
        ConvLayer("conv1", 1, 16, 8, 8, k=3, pad=1),
        ConvLayer("conv2", 16, 32, 8, 8, k=3, pad=1, pool=2),
        ConvLayer("conv3", 32, 32, 4, 4, k=3, pad=1, pool=2),
        fc("fc1", 32 * 2 * 2, 64),
        fc("fc2", 64, 10, relu=False),
    ]


def network_layers(name: str) -> list[ConvLayer]:
    builders = {"digits": digits_layers, "vgg16": vgg16, "resnet18": resnet18,
                "alexnet": alexnet}
    try:
        return builders[name]()
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose one of: {', '.join(NETWORKS)}")
