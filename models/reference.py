"""Integer reference ops: torch on integer tensors, the oracle every RTL and simulator output
is compared against bit for bit.

Convolutions run in float64, which is exact here: every product and partial sum is an
integer below 2**53 (checked), so the result equals an int64 computation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from zeroskip.hw.config import FixedPointConfig
from zeroskip.hw.fixedpoint import requantize
from zeroskip.models.workloads import ConvLayer

_EXACT = 1 << 53


@dataclass
class QuantLayer:
    """One quantised layer: integer weights, bias and requantisation constants."""

    spec: ConvLayer
    weight: torch.Tensor  # int64 [out_ch, in_ch / groups, k, k], in the signed weight range
    bias: torch.Tensor  # int64 [out_ch]
    mult: torch.Tensor  # int64 [out_ch]
    shift: torch.Tensor  # int64 [out_ch]
    in_scale: float = 1.0
    out_scale: float = 1.0
    fxp: FixedPointConfig = field(default_factory=FixedPointConfig)

    def __post_init__(self):
        s = self.spec
        want = (s.out_ch, s.in_ch // s.groups, s.k, s.k)
        if tuple(self.weight.shape) != want:
            raise ValueError(f"layer {s.name!r}: weight shape {tuple(self.weight.shape)} "
                             f"does not match the layer's {want}")
        for name in ("bias", "mult", "shift"):
            t = getattr(self, name)
            if tuple(t.shape) != (s.out_ch,):
                raise ValueError(f"layer {s.name!r}: {name} must have shape ({s.out_ch},), "
                                 f"not {tuple(t.shape)}")
        wmax = self.fxp.weight_max
        if int(self.weight.max()) > wmax or int(self.weight.min()) < -wmax - 1:
            raise ValueError(f"layer {s.name!r}: weights exceed {self.fxp.weight_bits} bits")
        if int(self.bias.abs().max()) > self.fxp.bias_max:
            raise ValueError(f"layer {s.name!r}: bias exceeds {self.fxp.bias_bits} bits")
        self.fxp.check_reduction(s.name, s.gemm[1], int(self.bias.abs().max()))

    @property
    def weight_matrix(self) -> torch.Tensor:
        """W as the GEMM's [K, N] matrix (K ordered channel, ky, kx like ``unfold``; a
        grouped conv's K is one group's, column n belonging to group n // (N / groups))."""
        return self.weight.reshape(self.spec.out_ch, -1).T.contiguous()


def im2col(x: torch.Tensor, spec: ConvLayer) -> torch.Tensor:
    """[C, H, W] integer activations -> [M, K] int64 patch matrix (M row-major over outputs,
    K ordered channel, ky, kx like ``unfold``)."""
    return torch.from_numpy(im2col_np(x.numpy(), spec))


def im2col_np(x: np.ndarray, spec: ConvLayer) -> np.ndarray:
    """``im2col`` on numpy, for the simulators: [C, H, W] -> [M, K] int64, or a batch
    [B, C, H, W] -> [B * M, K] (image after image)."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.asarray(x)
    x = np.rint(x).astype(np.int64) if x.dtype.kind == "f" else x.astype(np.int64)
    if tuple(x.shape[-3:]) != (spec.in_ch, spec.in_h, spec.in_w) or x.ndim not in (3, 4):
        raise ValueError(f"layer {spec.name!r}: input shape {tuple(x.shape)} does not match "
                         f"([B,] {spec.in_ch}, {spec.in_h}, {spec.in_w})")
    pad = spec.pad
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(pad, pad), (pad, pad)])
    win = sliding_window_view(xp, (spec.k, spec.k), axis=(-2, -1))
    win = win[..., ::spec.stride, ::spec.stride, :, :]
    # [..., C, Ho, Wo, ky, kx] -> [..., Ho, Wo, C, ky, kx]: one row per output pixel
    win = np.moveaxis(win, -5, -3)
    return np.array(win.reshape(-1, spec.in_ch * spec.k * spec.k))  # writable, owns its data


def conv_acc(x: torch.Tensor, layer: QuantLayer) -> torch.Tensor:
    """Accumulators (bias included) of a layer: int64 [N?, out_ch, out_h, out_w].

    ``x`` is [C, H, W] or [N, C, H, W] of unsigned activations.
    """
    batched = x.dim() == 4
    xb = x if batched else x[None]
    s = layer.spec
    worst = s.gemm[1] * int(xb.abs().max()) * int(layer.weight.abs().max())
    assert worst < _EXACT, "float64 convolution would not be exact"
    acc = F.conv2d(xb.double(), layer.weight.double(), layer.bias.double(),
                   stride=s.stride, padding=s.pad, groups=s.groups)
    acc = acc.round().long()
    return acc if batched else acc[0]


def layer_forward(x: torch.Tensor, layer: QuantLayer) -> torch.Tensor:
    """conv -> bias -> requantise (with ReLU when the layer has one) -> max-pool.

    Returns int64 activations (unsigned after ReLU, signed for a layer without ReLU).
    Max-pooling after requantisation equals pooling before it, as requantisation is monotonic.
    """
    acc = conv_acc(x, layer)
    y = requantize(acc, layer.mult[:, None, None], layer.shift[:, None, None], layer.fxp,
                   relu=layer.spec.relu)
    if layer.spec.pool > 1:
        y = F.max_pool2d(y.double(), layer.spec.pool).long()
    return y


def network_forward(x: torch.Tensor, layers: list[QuantLayer]) -> list[torch.Tensor]:
    """Run a chain of layers; returns every layer's input followed by the final output.

    FC layers see their input flattened to [C*H*W, 1, 1].
    """
    acts = [x]
    for layer in layers:
        s = layer.spec
        if s.kind == "fc":
            lead = x.shape[:-3]
            x = x.reshape(*lead, -1, 1, 1)
        x = layer_forward(x, layer)
        acts.append(x)
    return acts


def gemm_reference(a: np.ndarray, w: np.ndarray, bias: np.ndarray, mult: np.ndarray,
                   shift: np.ndarray, fxp: FixedPointConfig, relu: bool = True) -> np.ndarray:
    """requantise(a @ w + bias) for integer numpy [M, K] x [K, N]: the GEMM form of a layer."""
    acc = torch.from_numpy(np.asarray(a, np.int64)) @ torch.from_numpy(np.asarray(w, np.int64))
    acc = acc + torch.from_numpy(np.asarray(bias, np.int64))
    y = requantize(acc, torch.from_numpy(np.asarray(mult, np.int64)),
                   torch.from_numpy(np.asarray(shift, np.int64)), fxp, relu=relu)
    return y.numpy()
