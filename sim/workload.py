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

A grouped conv (``ConvLayer.groups`` > 1; MobileNet's depthwise convs) runs on every block as
``groups`` layers of its own, one per group, issued one after another by the host: no block
has a grouped mode, and each group is a small conv (a depthwise 3x3 group is a 9-deep dot
product into one output channel) that leaves most of a block's MAC units idle, which its
utilisation shows. ``split_groups`` makes that workload, ``simulate_per_group`` runs a block's
``simulate_network`` on it and folds each grouped conv's groups back into one report row
(``fold_layer``), and ``group_outputs`` is a block's output of a grouped layer: its groups'
outputs, channel after channel.
"""

from __future__ import annotations

import dataclasses
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

    @property
    def grouped(self) -> bool:
        """Has a grouped conv (which the blocks run one group at a time)."""
        return any(s.groups > 1 for s in self.layers)


def _model_layer(layers: list[ConvLayer], i: int, seed: int) -> LayerData:
    from zeroskip.hw.config import FixedPointConfig
    from zeroskip.hw.fixedpoint import quantize_multiplier

    spec = layers[i]
    rng = np.random.default_rng([seed, i])
    fxp = FixedPointConfig()
    w = np.clip(np.rint(rng.normal(0, 40, (spec.out_ch, spec.in_ch // spec.groups, spec.k,
                                           spec.k))),
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


# --- grouped convs: one layer per group ------------------------------------------------------
def group_slices(spec: ConvLayer, g: int) -> tuple[slice, slice]:
    """(input channels, output channels) of group ``g``."""
    ci, co = spec.in_ch // spec.groups, spec.out_ch // spec.groups
    return slice(g * ci, (g + 1) * ci), slice(g * co, (g + 1) * co)


def group_data(data: LayerData, spec: ConvLayer, g: int) -> LayerData:
    """Group ``g``'s share of a grouped layer's ``LayerData`` (views, no copies)."""
    cin, cout = group_slices(spec, g)
    return LayerData(data.x[cin], data.w[cout], data.bias[cout], data.mult[cout],
                     data.shift[cout])


def group_outputs(layer_outputs, data: LayerData, spec: ConvLayer, fxp) -> np.ndarray:
    """A block's output of a layer (its ``layer_outputs``), one group at a time for a grouped
    conv: the groups' outputs, concatenated over the output channels."""
    if spec.groups == 1:
        return layer_outputs(data, spec, fxp)
    return np.concatenate([layer_outputs(group_data(data, spec, g), spec.group_layer(g), fxp)
                           for g in range(spec.groups)])


@dataclass
class GroupSplit(Workload):
    """A workload with every grouped conv of ``parent`` split into one layer per group
    (``origin[j]``: the parent's layer and group of layer ``j``)."""

    parent: Workload | None = None
    origin: list = field(default_factory=list)

    @property
    def batch(self) -> int:
        return self.parent.batch

    def layer_data(self, j: int, image: int = 0) -> LayerData:
        i, g = self.origin[j]
        data = self.parent.layer_data(i, image)
        spec = self.parent.layers[i]
        return group_data(data, spec, g) if spec.groups > 1 else data


def split_groups(workload: Workload) -> tuple[GroupSplit, list[range]]:
    """(the workload with one layer per group, the split layers of each of its layers)."""
    layers, origin, spans, quant, inputs = [], [], [], [], []
    for i, spec in enumerate(workload.layers):
        start = len(layers)
        for g in range(spec.groups):
            sub = spec.group_layer(g)
            layers.append(sub)
            origin.append((i, g))
            if workload.real:
                q = workload.quant[i]
                if spec.groups > 1:
                    cin, cout = group_slices(spec, g)
                    q = dataclasses.replace(q, spec=sub, weight=q.weight[cout],
                                            bias=q.bias[cout], mult=q.mult[cout],
                                            shift=q.shift[cout])
                    x = workload.real_inputs[i][:, cin]
                else:
                    x = workload.real_inputs[i]
                quant.append(q)
                inputs.append(x)
        spans.append(range(start, len(layers)))
    split = GroupSplit(workload.name, layers, workload.description,
                       quant=quant if workload.real else None,
                       real_inputs=inputs if workload.real else None, seed=workload.seed,
                       notes=list(workload.notes), trained_digits=workload.trained_digits,
                       parent=workload, origin=origin)
    return split, spans


# extras of a grouped layer's groups: kept from the first group (settings, the same for all)
KEEP_EXTRA = ("alpha", "gamma", "group_block", "batched_images", "slice_channels",
              "sampled_every", "groups", "bands", "groups_per_block")
# ratios: the groups' mean, weighted by energy (energy ratios) or cycles (the others), which
# for a ratio of a total to the layer's cycles (or energy) is that ratio of the summed totals;
# densities and fractions of equal-sized groups: their plain mean
RATIO_WORDS = ("speedup", "saving", "share", "ratio", "reduction", "utilization",
               "efficiency", "balance", "gain", "macs_vs", "density", "fraction")


def fold_layer(spec: ConvLayer, reps: list) -> "LayerReport":
    """One report row for a grouped conv from its groups' rows: cycles, MACs, events and
    energy summed; extras summed, kept (``KEEP_EXTRA``) or averaged (``RATIO_WORDS``)."""
    from .report import LayerReport

    if len(reps) == 1:
        return reps[0]
    cycles = [r.cycles for r in reps]
    energy = [r.energy_pj for r in reps]

    def mean(vals, weights):
        total = sum(weights)
        return (sum(v * w for v, w in zip(vals, weights)) / total if total
                else sum(vals) / len(vals))

    extra = {}
    for key, first in reps[0].extra.items():
        vals = [r.extra.get(key) for r in reps]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if not numeric or key in KEEP_EXTRA:
            extra[key] = first
        elif any(w in key for w in RATIO_WORDS):
            weights = ([1] * len(reps) if "density" in key or "fraction" in key else
                       energy if "energy" in key or "saving" in key else cycles)
            extra[key] = mean(vals, weights)
        else:
            extra[key] = sum(vals)
    extra["conv_groups"] = spec.groups
    extra["group_cycles"] = cycles[0] if len(set(cycles)) == 1 else [min(cycles), max(cycles)]
    events = {}
    for r in reps:
        for k, v in r.events.items():
            events[k] = events.get(k, 0) + v
    breakdown = {}
    for r in reps:
        for k, v in r.energy_breakdown_pj.items():
            breakdown[k] = breakdown.get(k, 0.0) + v
    return LayerReport(spec.name, sum(cycles), sum(r.macs_dense for r in reps),
                       sum(r.macs_performed for r in reps), reps[0].mac_units, events,
                       sum(energy), breakdown, extra)


def simulate_per_group(simulate_network, workload: Workload, cfg, table=None, progress=None,
                       **options):
    """``simulate_network`` (a block's) on ``workload`` with every grouped conv run one group
    at a time, each grouped conv's groups folded back into one row. A per-layer list in
    ``options`` (SnaPEA's ``params``) is given to every group of its layer; one with an entry
    per split layer (packings made on ``split_groups``' workload) is passed as it is."""
    split, spans = split_groups(workload)
    for key, val in options.items():
        if isinstance(val, list) and len(val) == len(workload.layers) != len(split.layers):
            options[key] = [val[i] for i, span in enumerate(spans) for _ in span]
    last = {span[-1]: workload.layers[i].name for i, span in enumerate(spans)}
    index = {s.name: j for j, s in enumerate(split.layers)}

    def step(name):  # the caller's progress: once per layer of ``workload``
        j = index.get(name)
        if progress and j in last:
            progress(last[j])

    import torch

    # a group's convs and matmuls are tiny: handing each to two threads costs more than the
    # work (a 1-channel 9x9 conv: 14 ms on two threads of a loaded machine, 4 us on one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = simulate_network(split, cfg, table, progress=step if progress else None,
                                  **options)
    finally:
        torch.set_num_threads(threads)
    rows = report.layers
    sub = {s.name for span, spec in zip(spans, workload.layers) if spec.groups > 1
           for s in (split.layers[j] for j in span)}
    grouped = [s for s in workload.layers if s.groups > 1]
    report.layers = [fold_layer(spec, [rows[j] for j in span])
                     for spec, span in zip(workload.layers, spans)]
    # a per-layer note of one group is left off: its grouped conv's row has the totals
    notes = [n for n in report.notes if n.partition(":")[0] not in sub]
    notes.append(grouped_note(grouped))
    report.notes = notes
    return report


def grouped_note(grouped: list[ConvLayer]) -> str:
    """The report's word on how the blocks ran the grouped convs."""
    names = ", ".join(f"{s.name} ({s.groups} x {s.in_ch // s.groups} -> "
                      f"{s.out_ch // s.groups} channels)" for s in grouped)
    return (f"grouped convs ran one group at a time, each group as a conv of its own (no "
            f"block has a grouped mode): {names}; a row is the sum over its groups (ratios: "
            f"their cycle- or energy-weighted mean)")
