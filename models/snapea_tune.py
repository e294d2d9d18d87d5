"""Choosing SnaPEA's predictive parameters (Th, n) per kernel under an accuracy budget.

Profiling (on calibration images, never the test set):
- for every layer that may terminate early and every speculation fraction ``f`` in
  ``N_FRACTIONS``, each kernel speculates on its ``n = max(1, round(f * nnz))`` largest-|w|
  weights; ``P_n`` (bias + those taps) is profiled over the calibration windows;
- a *miss rate* ``eps`` in ``MISS_RATES`` sets each kernel's threshold ``Th`` to the
  ``eps``-quantile of ``P_n`` over the windows whose true output is positive: about ``eps``
  of the kernel's positive outputs are predicted to 0 (``eps = 0``: below every positive
  window seen). A kernel with no positive window on the calibration set predicts every
  window as 0.
- each (layer, f, eps) candidate gets its MAC count (``models.snapea.termination`` on the
  profiling windows, exact termination included).

Selection (the paper thresholds speculation by each layer's sensitivity): greedy over layers,
starting from exact mode everywhere; each step applies the single (layer -> candidate) change
that saves the most MACs while the *validation* accuracy stays within ``budget`` percentage
points of exact mode's **and** at most ``budget`` percent of the validation images change
class against exact mode (so gains and losses cannot cancel), with the cut-off rule in every
layer at once
(``models.snapea.snapea_network_forward``). Stops when no change fits.

Data (``honest_tuning``), all from the training split, so the test split is never seen:
thresholds are profiled on the first ``PROFILE_IMAGES`` training images; the greedy
selection checks the budget on ``TUNING_IMAGES`` further training images; a *margin* (the
fraction of the budget held back on the tuning images) is chosen on ``VALIDATION_IMAGES``
others: the smallest margin whose choice keeps the full budget there with 90 % confidence
(Wilson upper bounds of the accuracy loss and of the share of changed classes). The net classifies
its training images almost perfectly, so the agreement with exact mode (label-free) is
what binds on them. Accuracy is then measured on the whole test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from zeroskip.hw.fixedpoint import requantize
from zeroskip.models.snapea import (LayerParams, eligible, reorder, snapea_network_forward,
                                    spec_weight, termination)

N_FRACTIONS = (0.0625, 0.125, 0.25, 0.5)
MISS_RATES = (0.0, 0.01, 0.03, 0.1, 0.2, 0.4, 0.6, 0.8)
PROFILE_IMAGES = 64  # images whose windows are profiled for thresholds and MAC counts


@dataclass
class Candidate:
    layer: int
    frac: float
    eps: float
    params: LayerParams
    macs: int  # MACs of the layer on the profiling windows with these parameters


@dataclass
class TuneResult:
    budget: float  # percentage points
    params: list  # per layer LayerParams or None
    choice: dict  # layer name -> (frac, eps)
    calib_acc_exact: float
    calib_acc: float
    calib_agreement: float  # images classified as in exact mode
    macs_exact: int  # profiling windows, exact mode, eligible layers + dense layers
    macs: int
    history: list = field(default_factory=list)  # (layer, frac, eps, calib_acc, macs)

    def to_dict(self) -> dict:
        return {"budget_pct": self.budget, "choice": self.choice,
                "calib_acc_exact": self.calib_acc_exact, "calib_acc": self.calib_acc,
                "calib_agreement": self.calib_agreement,
                "macs_exact": self.macs_exact, "macs": self.macs,
                "macs_saved_vs_exact": 1 - self.macs / self.macs_exact,
                "history": self.history}


def _im2col(x: torch.Tensor, spec) -> np.ndarray:
    """[B, C, H, W] -> [B * M, K] windows of every image."""
    from zeroskip.models.reference import im2col_np

    return im2col_np(x.numpy(), spec)


def _thresholds(p_n: np.ndarray, positive: np.ndarray, eps: float) -> np.ndarray:
    """Per kernel: the ``eps``-quantile of ``P_n`` over positive windows ([W, N] arrays)."""
    n_k = p_n.shape[1]
    th = np.empty(n_k, np.int64)
    for k in range(n_k):
        vals = np.sort(p_n[positive[:, k], k])
        if len(vals) == 0:
            th[k] = int(p_n[:, k].max()) + 1
        else:
            th[k] = int(vals[min(len(vals) - 1, int(np.floor(eps * len(vals))))])
    return th


class Tuner:
    """Profiles the candidates once; ``tune(budget)`` selects parameters for a budget."""

    def __init__(self, layers, x_profile: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                 check_every=1, quantize=None):
        from zeroskip.models.digits import quantize_input

        quantize = quantize or quantize_input
        self.layers = layers
        self.ok = eligible(layers)
        self.check_every = check_every
        self.x_acc, self.y_acc = quantize(x_val), y_val
        self.inputs = snapea_network_forward(quantize(x_profile[:PROFILE_IMAGES]), layers)
        self.candidates: dict[int, list[Candidate]] = {}
        self.macs_exact: dict[int, int] = {}
        for i, layer in enumerate(layers):
            s = layer.spec
            x = self.inputs[i].reshape(-1, s.in_ch, s.in_h, s.in_w)
            a = _im2col(x, s)
            wm = layer.weight_matrix.numpy()
            b = layer.bias.numpy()
            t = termination(a, wm, b, reorder(layer.weight.numpy()), check_every, self.ok[i])
            self.macs_exact[i] = int(t.macs.sum())
            if not self.ok[i]:
                continue
            # true outputs (before pooling) that are positive
            y = requantize(t.acc, layer.mult.numpy(), layer.shift.numpy(), layer.fxp, True)
            positive = y > 0
            cands = []
            nnz = (layer.weight.reshape(s.out_ch, -1) != 0).sum(1).numpy()
            for frac in N_FRACTIONS:
                n = np.maximum(1, np.round(frac * nnz)).astype(np.int64)
                w_spec = spec_weight(layer, LayerParams(n, np.zeros_like(n)))
                p_n = a @ w_spec.reshape(s.out_ch, -1).T.numpy() + b
                for eps in MISS_RATES:
                    params = LayerParams(n, _thresholds(p_n, positive, eps))
                    tc = termination(a, wm, b, reorder(layer.weight.numpy(), params),
                                     check_every)
                    cands.append(Candidate(i, frac, eps, params, int(tc.macs.sum())))
            self.candidates[i] = cands
        self.exact_pred = self._classes([None] * len(layers))
        self.acc_exact = float((self.exact_pred == self.y_acc).double().mean())

    def _classes(self, params: list) -> torch.Tensor:
        logits = snapea_network_forward(self.x_acc, self.layers, params)[-1]
        return logits.reshape(len(self.y_acc), -1).argmax(1)

    def accuracy(self, params: list) -> float:
        return float((self._classes(params) == self.y_acc).double().mean())

    def agreement(self, params: list) -> float:
        """Fraction of calibration images classified as in exact mode."""
        return float((self._classes(params) == self.exact_pred).double().mean())

    def tune(self, budget: float) -> TuneResult:
        """Greedy selection within ``budget`` percentage points of exact mode's accuracy."""
        if not (isinstance(budget, (int, float)) and 0 <= budget <= 100):
            raise ValueError(f"the accuracy budget must be in 0..100 percentage points, not "
                             f"{budget!r}")
        chosen: dict[int, Candidate] = {}
        floor = self.acc_exact - budget / 100 - 1e-12
        history = []
        acc = self.acc_exact

        def total(ch):
            return sum(ch[i].macs if i in ch else self.macs_exact[i] for i in self.macs_exact)

        while True:
            current = total(chosen)
            # the change saving the most MACs that keeps the agreement: try in that order
            changes = sorted(((current - total({**chosen, i: c}), k, c)
                              for i, cands in self.candidates.items()
                              for k, c in enumerate(cands)), key=lambda t: (-t[0], t[1]))
            best = None
            for saved, _, c in changes:
                if saved <= 0:
                    break
                trial = {**chosen, c.layer: c}
                cls = self._classes([trial[j].params if j in trial else None
                                     for j in range(len(self.layers))])
                a = float((cls == self.y_acc).double().mean())
                flips = float((cls != self.exact_pred).double().mean())
                if a >= floor and flips <= budget / 100 + 1e-12:
                    best = (saved, c, a)
                    break
            if best is None:
                break
            _, c, acc = best
            chosen[c.layer] = c
            history.append((self.layers[c.layer].spec.name, c.frac, c.eps, acc, total(chosen)))
        params = [chosen[i].params if i in chosen else None for i in range(len(self.layers))]
        return TuneResult(budget, params,
                          {self.layers[i].spec.name: (c.frac, c.eps) for i, c in chosen.items()},
                          self.acc_exact, acc, self.agreement(params), total({}),
                          total(chosen), history)


SPLIT_SEED = 4
#: training images (after the calibration ones) on which the budget is checked while
#: choosing, and on which the margin is chosen; the rest of the training split is unused
TUNING_IMAGES = 400
VALIDATION_IMAGES = 400
#: fractions of the budget held back on the tuning images, tried smallest first
MARGINS = (0.0, 0.25, 0.5, 0.75, 0.9)


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """(tuning, validation) indices into the digits *training* split: seeded, disjoint, and
    disjoint from the first ``PROFILE_IMAGES`` (the profiling images) and from the
    quantiser's calibration images. The test split is never used for tuning."""
    from zeroskip.models import digits

    n = len(digits.load_data().y_train)
    first = max(PROFILE_IMAGES, digits.CALIBRATION_IMAGES)
    perm = first + np.random.default_rng(SPLIT_SEED).permutation(n - first)
    return (np.sort(perm[:TUNING_IMAGES]),
            np.sort(perm[TUNING_IMAGES:TUNING_IMAGES + VALIDATION_IMAGES]))


def digits_tuner(check_every: int = 1, workload=None) -> Tuner:
    """A tuner on the bundled digits net: thresholds profiled on the first
    ``PROFILE_IMAGES`` training images, the budget checked on the tuning images
    (``digits_split``), all from the training split."""
    from zeroskip.models import digits

    w = workload or digits.load_workload("kl")
    tune, _ = digits_split()
    t = torch.from_numpy(tune)
    return Tuner(w.layers, w.data.x_train[:PROFILE_IMAGES], w.data.x_train[t],
                 w.data.y_train[t], check_every)


@dataclass
class HonestTuning:
    """A budget's parameters with the margin chosen on the validation images, and what they
    do on the tuning, validation and (never seen) test images."""

    budget: float
    margin: float  # fraction of the budget held back while choosing on the tuning images
    result: TuneResult  # the optimiser's choice at budget * (1 - margin)
    validation: dict  # accuracy, accuracy_exact, agreement on the validation images
    accuracy_test: float
    accuracy_test_exact: float
    tuning_images: dict  # which images: profile, tuning, validation (training indices)
    test_images: int

    @property
    def params(self) -> list:
        return self.result.params

    def to_dict(self) -> dict:
        return {**self.result.to_dict(), "budget_pct": self.budget, "margin": self.margin,
                "tuned_budget_pct": self.result.budget, "validation": self.validation,
                "accuracy_test": self.accuracy_test,
                "accuracy_test_exact": self.accuracy_test_exact,
                "tuning_images": self.tuning_images, "test_images": self.test_images}


class Validator:
    """Accuracy and agreement with exact mode of a parameter set on fixed images."""

    def __init__(self, layers, x, y, quantize=None):
        from zeroskip.models.digits import quantize_input

        self.layers, self.x, self.y = layers, (quantize or quantize_input)(x), y
        self.exact = self._classes(None)

    def _classes(self, params) -> torch.Tensor:
        logits = snapea_network_forward(self.x, self.layers, params)[-1]
        return logits.reshape(len(self.y), -1).argmax(1)

    def __call__(self, params) -> dict:
        cls = self._classes(params)
        return {"accuracy": float((cls == self.y).double().mean()),
                "accuracy_exact": float((self.exact == self.y).double().mean()),
                "agreement": float((cls == self.exact).double().mean()), "images": len(self.y)}


#: one-sided confidence of the validation check (z of a 90 % upper bound)
CONFIDENCE_Z = 1.2816


def upper_bound(rate: float, n: int, z: float = CONFIDENCE_Z) -> float:
    """Wilson score upper bound of a rate observed on ``n`` images."""
    if n == 0:
        return 1.0
    centre = rate + z * z / (2 * n)
    spread = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return float((centre + spread) / (1 + z * z / n))


def holds(stats: dict, budget: float) -> bool:
    """The budget holds on these images with 90 % confidence: the upper bounds
    (``upper_bound``) of the accuracy loss against exact mode and of the share of images
    classified differently are both within ``budget`` percentage points. A point estimate
    would not do: the validation images are training images, easier than the test split."""
    b = budget / 100 + 1e-12
    n = stats["images"]
    loss = max(0.0, stats["accuracy_exact"] - stats["accuracy"])
    return upper_bound(loss, n) <= b and upper_bound(1 - stats["agreement"], n) <= b


def honest_tuning(budget: float, check_every: int = 1, workload=None, tuner=None,
                  validator=None) -> HonestTuning:
    """(Th, n) for ``budget`` from training data only: the optimiser chooses on the tuning
    images with ``budget * (1 - margin)``, for the smallest margin of ``MARGINS`` whose
    choice keeps the full budget on the validation images with 90 % confidence (``holds``;
    exact mode if none does); the
    accuracy is then measured on the whole test split."""
    from zeroskip.models import digits

    w = workload or digits.load_workload("kl")
    tuner = tuner or digits_tuner(check_every, w)
    tune, val = digits_split()
    if validator is None:
        v = torch.from_numpy(val)
        validator = Validator(w.layers, w.data.x_train[v], w.data.y_train[v])
    chosen = None
    for margin in MARGINS:
        r = tuner.tune(budget * (1 - margin))
        stats = validator(r.params)
        if holds(stats, budget):
            chosen = (margin, r, stats)
            break
    if chosen is None:
        r = tuner.tune(0.0)
        r.params = [None] * len(w.layers)
        r.choice, r.macs, r.history = {}, r.macs_exact, []
        chosen = (1.0, r, validator(r.params))
    margin, r, stats = chosen
    images = {"split": "train", "profile": list(range(PROFILE_IMAGES)),
              "tuning": tune.tolist(), "validation": val.tolist()}
    return HonestTuning(budget, margin, r, stats, digits_test_accuracy(w.layers, r.params),
                        digits_test_accuracy(w.layers, None), images,
                        len(digits.load_data().y_test))


def digits_test_accuracy(layers, params) -> float:
    """Test accuracy of the digits net with SnaPEA parameters (None: exact mode) on the whole
    test split (never used for tuning)."""
    from zeroskip.models import digits

    data = digits.load_data()
    x, y = data.x_test, data.y_test
    logits = snapea_network_forward(digits.quantize_input(x), layers, params)[-1]
    return float((logits.reshape(len(x), -1).argmax(1) == y).double().mean())
