"""The bundled workload: a small CNN trained on scikit-learn's handwritten digits (8x8, 1797
images, shipped inside the wheel: no download).

Training is deterministic on one machine (fixed seeds, one thread) and takes a few seconds on
a CPU; the float weights are cached under ``$ZEROSKIP_CACHE`` (default ``~/.cache/zeroskip``)
keyed by a hash of the training recipe, so a changed recipe retrains.

Float training is not bit-identical across CPUs (torch's kernels follow the instruction set:
AVX-512, AVX2 and the generic build give three different sets of weights here), so the
weights of the current recipes are also shipped in ``models/trained/`` (``bundled``): every
machine then quantises and simulates the same network and prints the same figures. A run
with ``retrain`` (``zeroskip digits --retrain``) trains on this machine instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from zeroskip import cache_dir
from zeroskip.hw.config import FixedPointConfig
from zeroskip.models.quant import CLIP_RULES, clip_value, quantize_layer
from zeroskip.models.reference import QuantLayer, network_forward
from zeroskip.models.workloads import digits_layers

SEED = 0
EPOCHS = 40
BATCH = 64
LR = 3e-3
TEST_FRACTION = 0.2
CALIBRATION_IMAGES = 256
INPUT_SCALE = 1.0 / 16.0  # sklearn digits pixels are integers 0..16: exact as uint8
RECIPE = f"digits-v1-seed{SEED}-ep{EPOCHS}-b{BATCH}-lr{LR}-t{TEST_FRACTION}"


class DigitsNet(nn.Module):
    """conv3x3(1->16) - conv3x3(16->32) - pool - conv3x3(32->32) - pool - fc(128->64) - fc(64->10).

    Every conv/FC but the last is followed by ReLU; shapes are ``workloads.digits_layers``.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, 10)

    def compute_layers(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.conv3, self.fc1, self.fc2]

    def forward(self, x, masks: dict | None = None, record: list | None = None):
        specs = digits_layers()
        for mod, spec in zip(self.compute_layers(), specs):
            w = mod.weight if masks is None or spec.name not in masks else mod.weight * masks[spec.name]
            if spec.kind == "fc":
                x = F.linear(x.flatten(1), w, mod.bias)
            else:
                x = F.conv2d(x, w, mod.bias, stride=spec.stride, padding=spec.pad)
            if spec.relu:
                x = F.relu(x)
            if record is not None:
                record.append(x.detach())
            if spec.pool > 1:
                x = F.max_pool2d(x, spec.pool)
        return x


@dataclass
class DigitsData:
    x_train: torch.Tensor  # float [N, 1, 8, 8] in [0, 1]
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def x_calib(self) -> torch.Tensor:
        return self.x_train[:CALIBRATION_IMAGES]


def load_data() -> DigitsData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    n_test = int(len(y) * TEST_FRACTION)
    test, train = perm[:n_test], perm[n_test:]
    return DigitsData(x[train], y[train], x[test], y[test])


def train(model: DigitsNet, data: DigitsData, epochs: int = EPOCHS, masks: dict | None = None,
          lr: float = LR, seed: int = SEED, progress=None) -> DigitsNet:
    """Deterministic Adam training; with ``masks`` the masked weights stay zero."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data.y_train)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = F.cross_entropy(model(data.x_train[idx], masks), data.y_train[idx])
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    if masks:
        with torch.no_grad():
            for mod, spec in zip(model.compute_layers(), digits_layers()):
                if spec.name in masks:
                    mod.weight.mul_(masks[spec.name])
    return model


#: trained weights shipped with the package, by the same file names as the cache's
BUNDLED = Path(__file__).resolve().parent / "trained"


def bundled(name: str) -> Path | None:
    """The shipped copy of the cache file ``name``, if the package has one."""
    path = BUNDLED / name
    return path if path.is_file() else None


def trained_model(progress=None, retrain: bool = False) -> DigitsNet:
    """The trained float net: the bundled weights, else the cache, else trained now (a
    few seconds); ``retrain`` trains now whatever is cached or bundled."""
    name = f"{hashlib.sha1(RECIPE.encode()).hexdigest()[:12]}-digits.pt"
    path = cache_dir() / name
    torch.manual_seed(SEED)
    model = DigitsNet()
    for source in ([bundled(name), path] if not retrain else []):
        if source is None or not source.exists():
            continue
        try:
            model.load_state_dict(torch.load(source, weights_only=True))
            return model.eval()
        except Exception:  # a truncated or stale cache file: retrain over it
            pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical weights on every machine and run
    try:
        train(model, load_data(), progress=progress)
    finally:
        torch.set_num_threads(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model.eval()


@torch.no_grad()
def float_accuracy(model: DigitsNet, x: torch.Tensor, y: torch.Tensor, masks=None) -> float:
    model.eval()
    return float((model(x, masks).argmax(1) == y).double().mean())


def quantize_input(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8-range int64 activations with scale 1/16 (exact)."""
    return torch.round(x * 16.0).long()


@torch.no_grad()
def quantize_model(model: DigitsNet, calib: torch.Tensor, rule: str = "kl",
                   fxp: FixedPointConfig | None = None, masks=None) -> list[QuantLayer]:
    """Post-training quantisation of the float net with clip ranges from ``calib`` images."""
    fxp = fxp or FixedPointConfig()
    model.eval()
    record: list[torch.Tensor] = []
    model(calib, masks, record=record)
    layers, in_scale = [], INPUT_SCALE
    for mod, spec, out in zip(model.compute_layers(), digits_layers(), record):
        values = out.numpy() if spec.relu else out.abs().numpy()
        clip = clip_value(values, rule) if spec.relu else float(values.max())
        w = mod.weight if masks is None or spec.name not in masks else mod.weight * masks[spec.name]
        q = quantize_layer(spec, w, mod.bias, in_scale, clip, fxp)
        layers.append(q)
        in_scale = q.out_scale
    return layers


def int_accuracy(layers: list[QuantLayer], x: torch.Tensor, y: torch.Tensor) -> float:
    logits = network_forward(quantize_input(x), layers)[-1].reshape(len(y), -1)
    return float((logits.argmax(1) == y).double().mean())


def layer_inputs(layers: list[QuantLayer], x: torch.Tensor) -> list[torch.Tensor]:
    """Real integer input activations of every layer for float images ``x`` ([N,1,8,8]).

    FC inputs are returned as [N, C*H*W, 1, 1], the shape the layer spec expects."""
    acts = network_forward(quantize_input(x), layers)[:-1]
    return [a.reshape(a.shape[0], l.spec.in_ch, l.spec.in_h, l.spec.in_w)
            for a, l in zip(acts, layers)]


@dataclass
class DigitsWorkload:
    model: DigitsNet
    data: DigitsData
    layers: list[QuantLayer]
    rule: str
    float_acc: float
    int_acc: float


def load_workload(rule: str = "kl", fxp: FixedPointConfig | None = None,
                  progress=None) -> DigitsWorkload:
    if rule not in CLIP_RULES:
        raise ValueError(f"unknown clip rule {rule!r}; choose one of {', '.join(CLIP_RULES)}")
    data = load_data()
    model = trained_model(progress=progress)
    layers = quantize_model(model, data.x_calib, rule, fxp)
    return DigitsWorkload(model, data, layers, rule,
                          float_accuracy(model, data.x_test, data.y_test),
                          int_accuracy(layers, data.x_test, data.y_test))


def sample_images(data: DigitsData, n: int, seed: int = SEED) -> torch.Tensor:
    """``n`` test images chosen with a fixed seed (for RTL tests on real activations)."""
    idx = np.random.default_rng(seed).choice(len(data.y_test), size=n, replace=False)
    return data.x_test[torch.from_numpy(idx)]
