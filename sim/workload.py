"""What the simulators run: layer shapes plus, where a block's cycles depend on data, integer
weights and input activations.

- ``digits``: the bundled trained CNN, quantised, with the **real** activations of
  calibration images (``images`` of them) at every layer's input.
- ``vgg16``, ``resnet18``, ``alexnet``: layer shapes only. Weights and activations come from
  the activation model below, generated per layer on demand with a fixed seed:
  weights ~ N(0, 40) rounded and clipped to int8; an input activation is non-zero with the
  layer's density from ``ACTIVATION_DENSITY`` (the first layer's input, an image, is dense)
  and non-zero values are 1 + a geometric draw with mean 24, clipped to 255 (post-ReLU
  activations are small-valued and long-tailed). The densities follow the per-layer
  zero fractions reported for VGG-16 by the NullHop paper (Aimar et al. 2018, Fig. 2: about
  50-90 % zeros, sparser in deeper layers) and by SnaPEA's profiling (Akhlaghi et al. 2018).
  Requantisation constants scale a layer's outputs into the 8-bit range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zeroskip.models.workloads import ConvLayer, network_layers

SEED = 2018
# input density (fraction of non-zero activations) by depth fraction through the network
DENSITY_POINTS = ((0.0, 1.0), (0.1, 0.55), (0.5, 0.40), (1.0, 0.20))


def activation_density(index: int, count: int) -> float:
    """Model density of layer ``index``'s input (layer 0's input is the dense image)."""
    if index == 0:
        return 1.0
    x, y = zip(*DENSITY_POINTS)
    return float(np.interp(index / max(1, count - 1), x, y))


@dataclass
class LayerData:
    """Integer tensors of one layer: ``x`` [C, H, W] input (a batch of one), ``w`` [O, C, k, k],
    ``bias``, ``mult``, ``shift`` [O] — the same form as ``models.reference.QuantLayer``."""

    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray


@dataclass
class Workload:
    name: str
    layers: list[ConvLayer]
    description: str
    quant: list | None = None  # list[QuantLayer] for the trained net
    real_inputs: list | None = None  # per layer int64 [N, C, H, W] real activations
    seed: int = SEED
    notes: list[str] = field(default_factory=list)
    trained_digits: bool = False  # the bundled digits net: its data set and joint training apply

    @property
    def real(self) -> bool:
        """Real weights and activations (the digits net or an imported model)."""
        return self.quant is not None

    @property
    def batch(self) -> int:
        """Images the report covers (every simulator reports the whole batch)."""
        return len(self.real_inputs[0]) if self.real else 1

    def layer_data(self, i: int, image: int = 0) -> LayerData:
        """Integer weights and one input of layer ``i`` (real or from the activation model)."""
        if self.real:
            q = self.quant[i]
            return LayerData(self.real_inputs[i][image].numpy(), q.weight.numpy(),
                             q.bias.numpy(), q.mult.numpy(), q.shift.numpy())
        return _model_layer(self.layers, i, self.seed)


def _model_layer(layers: list[ConvLayer], i: int, seed: int) -> LayerData:
    from zeroskip.hw.config import FixedPointConfig
    from zeroskip.hw.fixedpoint import quantize_multiplier

    spec = layers[i]
    rng = np.random.default_rng([seed, i])
    fxp = FixedPointConfig()
    w = np.clip(np.rint(rng.normal(0, 40, (spec.out_ch, spec.in_ch, spec.k, spec.k))),
                -fxp.weight_max, fxp.weight_max).astype(np.int64)
    density = activation_density(i, len(layers))
    shape = (spec.in_ch, spec.in_h, spec.in_w)
    x = np.minimum(1 + rng.geometric(1 / 24, shape), fxp.act_max).astype(np.int64)
    x[rng.random(shape) >= density] = 0
    k = spec.gemm[1]
    spread = 40 * 24 * np.sqrt(k * density) + 1  # ~ std of an accumulator
    bias = np.rint(rng.normal(0, spread / 4, spec.out_ch)).astype(np.int64)
    mult, shift = quantize_multiplier(64 / spread, fxp)
    return LayerData(x, w, bias, np.full(spec.out_ch, mult, np.int64),
                     np.full(spec.out_ch, shift, np.int64))


def load(name: str, images: int = 8, rule: str = "kl", progress=None) -> Workload:
    """The named workload (``models.workloads.NETWORKS``)."""
    layers = network_layers(name)
    if name != "digits":
        return shape_only(name, layers)
    from zeroskip.models import digits

    w = digits.load_workload(rule, progress=progress)
    x = w.data.x_calib[:images]
    return Workload("digits", layers,
                    f"trained digits CNN (float {w.float_acc:.2%}, int8 {w.int_acc:.2%} test "
                    f"accuracy, '{rule}' clipping), real activations of {images} images",
                    quant=w.layers, real_inputs=digits.layer_inputs(w.layers, x),
                    trained_digits=True)


def shape_only(name: str, layers: list[ConvLayer], source: str = "layer shapes") -> Workload:
    """A network known by its layer shapes only, with the seeded activation model."""
    densities = ", ".join(f"{activation_density(i, len(layers)):.2f}" for i in range(len(layers)))
    return Workload(name, layers, f"{source} with the seeded activation model of "
                    "sim/workload.py (random int8 weights, per-layer input densities "
                    f"{densities})")
