"""Your own network (``--model``, ``--calib``, ``--topology``): small models built here are
exported to ONNX, TorchScript and torch.export files and imported; their layer shapes and MAC
counts are checked against a count taken from the torch model itself, the integer graph's
logits against the float model's, and every block's outputs against the integer reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zeroskip import blocks as registry
from zeroskip.cli import main
from zeroskip.hw.config import FixedPointConfig
from zeroskip.models import importer, topology, workloads, zoo
from zeroskip.models.reference import layer_forward
from zeroskip.sim.workload import group_outputs, split_groups

INPUT = (3, 8, 8)
CALIB_IMAGES = 16
# Quantisation bound (minmax clipping, int8 weights per channel, int8 activations): every
# logit of the integer graph is within 10 % of the float model's largest |logit| on the
# calibration images, and the top-1 class agrees on at least 14 of the 16.
LOGIT_BOUND = 0.10
TOP1_AGREE = 14 / 16


def _randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them into the conv matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


class ConvBNReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(x + y)
        x = F.relu(self.conv3(x) + self.down(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Depthwise(nn.Module):
    """MobileNetV2-like: ReLU6 clips, a depthwise conv, a linear bottleneck (signed output)
    added back and fed to a 1x1 conv (a signed input)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        y = self.project(F.relu6(self.bn(self.dw(F.relu6(self.expand(x))))))
        x = x + y  # signed: no activation after the add
        x = F.relu6(self.grouped(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Pooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.conv4 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 1 * 1, 6)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # window = stride: into the layer
        a = F.max_pool2d(F.relu(self.conv2(x)), 3, 2, 1)  # on the host
        b = F.avg_pool2d(F.relu(self.conv3(x)), 2)
        x = F.relu(self.conv4(torch.cat([a, b], 1)))
        return self.fc(torch.flatten(F.avg_pool2d(x, 2), 1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def conv_bn_relu():
    torch.manual_seed(0)
    return _randomise_bn(ConvBNReLU())


def residual():
    torch.manual_seed(1)
    return _randomise_bn(Residual())


def depthwise():
    torch.manual_seed(2)
    return _randomise_bn(Depthwise())


def pooling():
    torch.manual_seed(3)
    return Pooling().eval()


def mlp():
    torch.manual_seed(4)
    return MLP().eval()


MODELS = {"conv_bn_relu": conv_bn_relu, "residual": residual, "depthwise": depthwise,
          "pooling": pooling, "mlp": mlp}
FORMATS = ("onnx", "torchscript", "export")


def independent_layers(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Every Conv2d / Linear the torch model runs, in call order, from forward hooks: its
    input channels, output shape and MACs (a grouped conv's real MACs)."""
    seen = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            c, h, w = out.shape[1:]
            seen.append(dict(kind="conv", in_ch=mod.in_channels, out_ch=c, k=mod.kernel_size[0],
                             stride=mod.stride[0], out_h=h, out_w=w, groups=mod.groups,
                             macs=h * w * c * (mod.in_channels // mod.groups) * mod.kernel_size[0]
                             * mod.kernel_size[1]))
        else:
            seen.append(dict(kind="fc", in_ch=mod.in_features, out_ch=mod.out_features, k=1,
                             stride=1, out_h=1, out_w=1, groups=1,
                             macs=mod.in_features * mod.out_features))
    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return seen


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every model as an ONNX, a TorchScript and a torch.export file, and the calibration
    images as .npy."""
    d = tmp_path_factory.mktemp("models")
    calib = torch.randn(CALIB_IMAGES, *INPUT, generator=torch.Generator().manual_seed(5))
    np.save(d / "calib.npy", calib.numpy())
    out = {}
    for name, fn in MODELS.items():
        m = fn()
        ex = (torch.zeros(1, *INPUT),)
        importer.torch_to_onnx(m, INPUT)  # the exporter works on it
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, ex, d / f"{name}.onnx", dynamo=False)
            torch.jit.trace(m, ex).save(str(d / f"{name}.pt"))
            torch.export.save(torch.export.export(m, ex), str(d / f"{name}.pt2"))
        out[name] = {"onnx": d / f"{name}.onnx", "torchscript": d / f"{name}.pt",
                     "export": d / f"{name}.pt2"}
    return {"dir": d, "calib": d / "calib.npy", "x": calib, "models": out}


def _load(files, name, fmt, images=2, rule="minmax"):
    return importer.load_workload(str(files["models"][name][fmt]), calib=str(files["calib"]),
                                  images=images, rule=rule)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_layer_shapes_and_macs_match_the_torch_model(files, name, fmt):
    wl = _load(files, name, fmt)
    want = independent_layers(MODELS[name](), files["x"])
    assert len(wl.layers) == len(want)
    for spec, w in zip(wl.layers, want):
        assert (spec.in_ch, spec.out_ch, spec.k, spec.stride) == \
            (w["in_ch"], w["out_ch"], w["k"], w["stride"]), spec.name
        assert (spec.out_h, spec.out_w) == (w["out_h"], w["out_w"]), spec.name
        # a grouped conv keeps its groups: its MACs are the real ones
        assert (spec.groups, spec.macs) == (w["groups"], w["macs"]), spec.name
        assert spec.kind == w["kind"], spec.name
    assert sum(s.macs for s in wl.layers) == sum(w["macs"] for w in want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_integer_logits_agree_with_the_float_model(files, name, fmt):
    wl = _load(files, name, fmt)
    x = files["x"]
    with torch.no_grad():
        ref = MODELS[name]()(x).double()
    got = importer.int_logits(wl.graph, x)
    assert got.shape == ref.shape
    err = float((got - ref).abs().max())
    assert err <= LOGIT_BOUND * float(ref.abs().max()), (err, float(ref.abs().max()))
    assert float((got.argmax(1) == ref.argmax(1)).double().mean()) >= TOP1_AGREE
    # the float graph the importer built is the model itself (BatchNorm folded)
    qg = wl.graph
    flt = importer.float_forward(qg.steps, qg.input, qg.output, x)
    assert torch.allclose(flt.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_block_outputs_equal_the_integer_reference(files, name):
    wl = _load(files, name, "onnx")
    fxp = FixedPointConfig()
    for i, (spec, q) in enumerate(zip(wl.layers, wl.quant)):
        for img in range(wl.batch):
            ref = layer_forward(wl.real_inputs[i][img], q).numpy()
            data = wl.layer_data(i, img)
            assert data.x.min() >= 0  # the blocks see unsigned activations only
            for block in registry.names("simulator"):
                mod = registry.get_block(block, "simulator").part("simulator")
                # a grouped conv: the block's outputs of each group, as it runs them
                got = group_outputs(mod.layer_outputs, data, spec, fxp)
                np.testing.assert_array_equal(got, ref, err_msg=f"{block} {spec.name}")


def test_the_integer_graph_chains_the_layers(files):
    """Each layer's recorded input is what the host made of the previous layers' outputs:
    running the graph again from those outputs gives the same final integers."""
    wl = _load(files, "conv_bn_relu", "onnx")
    out = importer.int_forward(wl.graph, files["x"][:2])
    last = layer_forward(wl.real_inputs[-1], wl.quant[-1])
    assert torch.equal(out.reshape(last.shape), last)
    # conv1 -> conv2 directly (no host op between them)
    assert torch.equal(layer_forward(wl.real_inputs[0], wl.quant[0]), wl.real_inputs[1])


def test_notes_say_what_ran_where(files):
    wl = _load(files, "depthwise", "onnx")
    where = wl.graph.where()
    assert where["blocks"] == [s.name for s in wl.layers]
    assert any("residual add" in h for h in where["host"])
    assert any("global average pool" in h for h in where["host"])
    text = " ".join(wl.notes)
    assert "depthwise" in text and "dw" in text and "grouped" in text
    assert "signed inputs" in text and "project" not in where["host"]
    hooks = independent_layers(depthwise(), files["x"])
    real = sum(w["macs"] for w in hooks if w["groups"] > 1)
    assert "runs each group as a conv of its own" in text and f"{real:,} MACs, the real" in text
    wl = _load(files, "pooling", "onnx")
    host = " ".join(wl.graph.where()["host"])
    assert "max-pool" in host and "average pool" in host and "concat" in host
    assert wl.layers[0].pool == 2  # the 2x2 max-pool right after conv1 runs with the layer


def test_every_block_simulates_an_imported_model(files):
    from zeroskip.sim import compare

    wl = _load(files, "residual", "onnx")
    reports = compare.run_blocks(wl)
    assert set(reports) == set(registry.names("simulator"))
    for rep in reports.values():
        assert [l.name for l in rep.layers] == [s.name for s in wl.layers]
        assert rep.accuracy is None  # no digits test set behind an imported model


def test_every_block_runs_a_grouped_conv_one_group_at_a_time(files):
    """The depthwise model on every block: a grouped conv's row is the sum of its groups' rows,
    each group a conv of its own (what the split workload gives the block), and the report
    says so."""
    from zeroskip.sim import compare

    wl = _load(files, "depthwise", "onnx", images=1)
    split, spans = split_groups(wl)
    grouped = [i for i, s in enumerate(wl.layers) if s.groups > 1]
    assert [wl.layers[i].name for i in grouped] == ["dw", "grouped"]
    assert [len(spans[i]) for i in grouped] == [16, 2]
    assert split.layers[spans[grouped[0]][3]] == workloads.ConvLayer(
        "dw.group3", 1, 1, 8, 8, k=3, pad=1, relu=True)
    configs = compare.equal_configs()
    reports = compare.run_blocks(wl, configs=configs)
    for block, rep in reports.items():
        assert [l.name for l in rep.layers] == [s.name for s in wl.layers], block
        mod = registry.get_block(block, "simulator").part("simulator")
        # the same blocks on the split workload itself: one row per group
        alone = mod.simulate_network(split, configs[block]).layers
        for i, spec in enumerate(wl.layers):
            rows = [alone[j] for j in spans[i]]
            row = rep.layers[i]
            assert row.cycles == sum(r.cycles for r in rows), (block, spec.name)
            assert row.macs_dense == spec.macs * wl.batch, (block, spec.name)
            assert row.macs_performed == sum(r.macs_performed for r in rows)
            assert row.energy_pj == pytest.approx(sum(r.energy_pj for r in rows))
            if spec.groups > 1:
                assert row.extra["conv_groups"] == spec.groups
        assert any("one group at a time" in n and "dw (16 x 1 -> 1 channels)" in n
                   for n in rep.notes), block
        assert not any(n.startswith("dw.group") for n in rep.notes), block
    # no block gets more from a depthwise group than its 9 taps into one output channel
    sys_dw = reports["systolic"].layers[grouped[0]]
    assert sys_dw.utilization < 0.1


def test_sim_cli_on_module_function_and_weights(files, tmp_path, capsys):
    assert main(["sim", "systolic", "--model", "tests.test_import:residual", "--input-size",
                 "3,8,8", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "note: on the host, in integers" in out and "no --calib" in out
    import json

    d = json.loads((tmp_path / "r.json").read_text())
    assert d["workload_notes"] and len(d["layers"]) == 6
    # --weights: a state dict replaces the function's weights
    m = residual()
    with torch.no_grad():
        m.stem.weight.mul_(-1)
    torch.save(m.state_dict(), tmp_path / "w.pth")
    a = importer.load_workload("tests.test_import:residual", input_size="3,8,8")
    b = importer.load_workload("tests.test_import:residual", str(tmp_path / "w.pth"),
                               input_size="3,8,8")
    assert torch.equal(a.quant[0].weight, -b.quant[0].weight)
    assert "weights from" in b.description


def test_calib_folder_of_images(files, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
            tmp_path / f"img{i}.png")
    wl = importer.load_workload(str(files["models"]["pooling"]["onnx"]), calib=str(tmp_path),
                                input_size="3,8,8", mean="0.5,0.5,0.5", std="0.25",
                                images=3)
    assert wl.batch == 3 and "3 calibration image(s)" in wl.description
    x = importer.load_calib(str(tmp_path), (3, 8, 8), [0.5] * 3, [0.25])
    assert x.shape == (3, 3, 8, 8) and float(x.min()) >= -2.0 and float(x.max()) <= 2.0


def _one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zeroskip: error: "), err
    for w in words:
        assert w in err, err
    return err


class SoftmaxMid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.conv2(torch.softmax(self.conv1(x), 1))


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.lstm = nn.LSTM(36, 8, batch_first=True)

    def forward(self, x):
        return self.lstm(self.conv1(x).reshape(1, 4, 36))[0]


class WithSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv1(x))


@pytest.mark.parametrize("cls,op", [(SoftmaxMid, "Softmax"), (WithLSTM, "LSTM"),
                                    (WithSigmoid, "Sigmoid")])
def test_unsupported_op_is_one_line(tmp_path, capsys, cls, op):
    import warnings

    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cls().eval(), (torch.zeros(1, *INPUT),), path, dynamo=False)
    err = _one_line_error(capsys, ["sim", "systolic", "--model", str(path)],
                          "unsupported ONNX op", op, "node '/", "supported: Conv")
    assert "(node '/" in err


def test_bad_files_are_one_line(files, tmp_path, capsys):
    onnx_file = str(files["models"]["mlp"]["onnx"])
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 not an onnx file")
    _one_line_error(capsys, ["sim", "systolic", "--model", str(tmp_path / "bad.onnx")],
                    "not a valid ONNX model")
    _one_line_error(capsys, ["sim", "systolic", "--model", str(tmp_path / "none.onnx")],
                    "no such file")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    _one_line_error(capsys, ["sim", "systolic", "--model", str(tmp_path / "bad.pt")],
                    "not a TorchScript file")
    _one_line_error(capsys, ["sim", "systolic", "--model", "no_such_module:net",
                             "--input-size", "3,8,8"], "cannot import")
    _one_line_error(capsys, ["sim", "systolic", "--model", "tests.test_import:residual"],
                    "--input-size")
    np.save(tmp_path / "shape.npy", np.zeros((4, 3, 9, 9), np.float32))
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--calib",
                             str(tmp_path / "shape.npy")], "(3, 9, 9)", "(3, 8, 8)")
    np.save(tmp_path / "dtype.npy", np.zeros((4, 3, 8, 8), np.int64))
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--calib",
                             str(tmp_path / "dtype.npy")], "dtype int64")
    np.save(tmp_path / "ndim.npy", np.zeros((3, 8, 8), np.float32))
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--calib",
                             str(tmp_path / "ndim.npy")], "N x C x H x W")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--calib",
                             str(tmp_path / "junk.npy")], "not an .npy")
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--calib",
                             str(tmp_path / "missing.npy")], "no such file")
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--network", "vgg16"],
                    "give one of")
    _one_line_error(capsys, ["sim", "systolic", "--calib", str(files["calib"])],
                    "--calib applies to --model only")
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--calib",
                             str(files["calib"]), "--images", "99"], "--images must be in 1..16")
    _one_line_error(capsys, ["sim", "systolic", "--model", "torchvision.models:resnet18"],
                    "cannot import", "--model resnet18 is the same architecture")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3, 8, 8), np.float32),
             b=np.zeros((2, 3, 8, 8), np.float32))
    _one_line_error(capsys, ["sim", "systolic", "--model", onnx_file, "--calib",
                             str(tmp_path / "two.npz")], "holds arrays a, b")
    import shutil

    if shutil.which("iverilog"):
        _one_line_error(capsys, ["verify", "systolic", "--model", onnx_file, "--calib",
                                 str(files["calib"]), "--image", "16"], "--image must be in 0..15")


def test_calib_npz(files, tmp_path):
    np.savez(tmp_path / "c.npz", images=files["x"].numpy()[:4])
    wl = importer.load_workload(str(files["models"]["mlp"]["onnx"]), calib=str(tmp_path / "c.npz"),
                                images=4)
    assert wl.batch == 4 and "4 calibration image(s)" in wl.description


CONV_CSV = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
            "Num Filter, Strides,\n") + """Conv1, 230, 230, 7, 7, 3, 64, 2,
Conv2, 58, 58, 3, 3, 64, 64, 1,
FC, 1, 1, 1, 1, 512, 1000, 1,
"""
GEMM_CSV = """Layer, M, N, K,
gemm1, 128, 64, 256,
gemm2, 32, 10, 64,
"""


def test_topology_files(tmp_path, capsys):
    (tmp_path / "net.csv").write_text(CONV_CSV)
    (tmp_path / "g.csv").write_text(GEMM_CSV)
    layers, fmt = topology.read_topology(tmp_path / "net.csv")
    assert fmt == "conv" and [l.name for l in layers] == ["Conv1", "Conv2", "FC"]
    c1 = layers[0]
    assert (c1.in_ch, c1.out_ch, c1.in_h, c1.k, c1.stride, c1.pad) == (3, 64, 230, 7, 2, 0)
    assert c1.out_h == 112 and c1.macs == 112 * 112 * 3 * 49 * 64
    layers, fmt = topology.read_topology(tmp_path / "g.csv")
    assert fmt == "gemm" and layers[0].gemm == (128, 256, 64) and layers[1].gemm == (32, 64, 10)
    assert main(["sim", "systolic", "--topology", str(tmp_path / "g.csv")]) == 0
    assert "SCALE-Sim gemm topology" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("a, 1, 2, x,\n")
    _one_line_error(capsys, ["sim", "systolic", "--topology", str(tmp_path / "bad.csv")],
                    "line 1", "not all integers")
    (tmp_path / "rect.csv").write_text("c, 9, 9, 1, 3, 4, 4, 1,\n")
    _one_line_error(capsys, ["sim", "systolic", "--topology", str(tmp_path / "rect.csv")],
                    "square")
    _one_line_error(capsys, ["sim", "systolic", "--topology", str(tmp_path / "none.csv")],
                    "no such file")


def _geometry(l):
    """A layer's shape, its padding written into the input (``quantize`` pads a signed input
    on the host: the same layer, the same GEMM)."""
    return (l.kind, l.in_ch, l.out_ch, l.in_h + 2 * l.pad, l.in_w + 2 * l.pad, l.k, l.stride,
            l.pool, l.out_h, l.out_w, l.gemm, l.macs)


def test_mobilenet_v2_keeps_its_depthwise_convs():
    """``--model mobilenet_v2``: every conv and the classifier, in call order, with the shapes,
    groups and MACs a forward-hook count of the torch model gives (300,774,272 MACs: the
    17 depthwise convs as the groups they are, not as dense convs)."""
    got = importer.layer_shapes(importer.load_model("mobilenet_v2").graph)
    want = independent_layers(zoo.build("mobilenet_v2"), torch.zeros(1, *zoo.INPUT_SIZE))
    assert [(l.in_ch, l.out_ch, l.k, l.stride, l.groups, l.out_h, l.macs) for l in got] == \
        [(w["in_ch"], w["out_ch"], w["k"], w["stride"], w["groups"], w["out_h"], w["macs"])
         for w in want]
    assert sum(l.groups > 1 for l in got) == 17 and all(
        l.groups == l.in_ch == l.out_ch for l in got if l.groups > 1)
    assert sum(l.macs for l in got) == 300_774_272


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_zoo_shapes_equal_the_hand_written_lists(name):
    """The named architectures import to exactly the hand-written shape lists of
    models/workloads.py (names and ReLU flags aside: the hand-written lists take every layer
    but the classifier with a ReLU; in the real ResNet the ReLU comes after the add)."""
    got = importer.layer_shapes(importer.load_model(name).graph)
    want = workloads.network_layers(name)
    assert [_geometry(l) for l in got] == [_geometry(l) for l in want]
    names = [l.name for l in got]
    if name == "resnet18":
        assert names[:4] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
        assert names[7] == "layer2.0.downsample.0"
        # the hand-written list's ReLU flags are the ones that differ: conv2 and the
        # downsampling conv feed the residual add, which the ReLU follows
        assert [l.name for l, w in zip(got, want) if l.relu != w.relu] == [
            n for n in names if n.endswith(("conv2", "downsample.0"))]
    else:
        assert [l.relu for l in got] == [l.relu for l in want]
    # the same shapes through the calibrated path: conv1's signed input padded on the host
    if name == "resnet18":
        qg = importer.quantize(importer.load_model(name).graph,
                               importer.seeded_images(zoo.INPUT_SIZE, 1), "minmax")
        assert [_geometry(q.spec) for q in qg.layers] == [_geometry(l) for l in want]
        assert (qg.layers[0].spec.in_h, qg.layers[0].spec.pad) == (230, 0)


def test_named_models_are_listed_and_seeded():
    a, b = zoo.build("alexnet"), zoo.build("alexnet")
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert zoo.MODELS == workloads.ZOO_MODELS == (
        "resnet18", "resnet50", "vgg16", "mobilenet_v2", "alexnet")
    with pytest.raises(ValueError, match="named models"):
        zoo.build("resnet19")


@pytest.mark.rtl
@pytest.mark.parametrize("block", registry.names("verifier"))
def test_verify_one_layer_of_an_imported_model(files, capsys, block):
    """One layer of an imported ONNX model on each block's RTL (Icarus): outputs bit-exact
    against the integer reference, cycles equal to the simulator's (the combined array on the
    model's own weights, pruned and packed as its simulator does)."""
    assert main(["verify", block, "--model", str(files["models"]["residual"]["onnx"]),
                 "--calib", str(files["calib"]), "--layer", "conv2"]) == 0
    out = capsys.readouterr().out
    assert "conv2: 512 outputs bit-exact" in out and "= simulator prediction" in out


@pytest.mark.rtl
@pytest.mark.parametrize("block", registry.names("verifier"))
def test_verify_one_group_of_a_depthwise_conv(files, capsys, block):
    """A depthwise conv's group on each block's RTL: the block runs it as a conv of its own
    (1 input channel, 1 output channel, 3x3), bit-exact and cycle-exact."""
    assert main(["verify", block, "--model", str(files["models"]["depthwise"]["onnx"]),
                 "--calib", str(files["calib"]), "--layer", "dw.group5"]) == 0
    out = capsys.readouterr().out
    assert "dw.group5: 64 outputs bit-exact" in out and "= simulator prediction" in out


class SoftmaxEnd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return torch.softmax(self.fc(torch.flatten(F.relu(self.conv1(x)), 1)), 1)


def test_a_final_softmax_is_left_off_and_said(tmp_path):
    import warnings

    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SoftmaxEnd().eval(), (torch.zeros(1, *INPUT),), path, dynamo=False)
    wl = importer.load_workload(str(path))
    assert [l.name for l in wl.layers] == ["conv1", "fc"]
    assert "final Softmax" in wl.notes[0]


def test_combine_on_an_imported_model(files, capsys):
    assert main(["combine", "--model", str(files["models"]["residual"]["onnx"]), "--calib",
                 str(files["calib"])]) == 0
    out = capsys.readouterr().out
    assert "column combining on residual" in out
    assert "magnitude-pruned" in out and "without retraining" in out
