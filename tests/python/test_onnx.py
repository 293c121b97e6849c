"""ONNX export (qtorchext.export_onnx / onnx_translations), checked in onnxruntime.

Every preset, as a QAT model and converted, on Block (embedding, Linear+ReLU, Conv+BN folded,
depthwise, grouped 'same' reflect-padded conv, Conv1d, head): onnxruntime without graph
optimizations computes what qtorchext computes (the graph holds the same integers and
scales), and with onnxruntime's integer fusions stays within the requantization steps
those kernels take. Plus the CNN of the issue's target through the three-way check, dynamic
batch and sequence, the graph forms (QDQ, MatMulInteger, blocked DequantizeLinear), and the
refusals."""

import copy
import os

import pytest
import torch
from torch import nn

import onnx  # make deps installs onnx, onnxscript and onnxruntime
import onnxruntime as ort
import qtorchext as q
from layer_cases import PRESETS, indices, qat_block

NO_OPT = {"graph_optimization_level": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def _run(path, x, **options):
    s = q.onnx_session(path, **options)
    return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])


def _eager(model, x):
    with torch.no_grad():
        return model(x).float()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module", params=PRESETS)
def block_files(request, tmp_path_factory):
    preset = request.param
    qat = qat_block(preset)
    converted = q.convert(copy.deepcopy(qat))
    folder = tmp_path_factory.mktemp(preset)
    idx = indices(3, 7)
    files = {}
    for kind, model in (("qat", qat), ("converted", converted)):
        if preset == "w1a8" and kind == "converted":
            # a converted binary embedding has no ONNX form: exported without it (below
            # the refusal is tested)
            model.emb = nn.Embedding(50, 32)
            model.emb.weight.data = _eager(qat.emb, torch.arange(50))
        path = folder / f"{kind}.onnx"
        q.export_onnx(model, (idx,), path)
        files[kind] = (model, path)
    return preset, files


@pytest.mark.parametrize("kind", ["qat", "converted"])
def test_onnxruntime_computes_what_qtorchext_computes(block_files, kind):
    preset, files = block_files
    model, path = files[kind]
    idx = indices(3, 7)
    ref = _eager(model, idx)
    # without onnxruntime's fusions: the exported arithmetic, to float rounding
    assert _rel(_run(path, idx, **NO_OPT), ref) < 1e-5, preset
    # with them (QLinearConv / QLinearMatMul requantize in integers, MatMulNBits at fp32
    # accuracy): within the steps those kernels round to
    got = _run(path, idx)
    assert _cos(got, ref) > 0.9995 and _rel(got, ref) < 0.05, (preset, _rel(got, ref))


@pytest.mark.parametrize("kind", ["qat", "converted"])
def test_batch_and_sequence_are_dynamic(block_files, kind):
    preset, files = block_files
    model, path = files[kind]
    idx = indices(5, 11)  # exported with (3, 7)
    ref = _eager(model, idx)
    got = _run(path, idx, **NO_OPT)
    # a float rounding upstream can move a dynamic per-token code by one step downstream
    assert got.shape == ref.shape
    assert _cos(got, ref) > 0.99999 and _rel(got, ref) < 1e-2, (preset, _rel(got, ref))


class CNN(nn.Module):
    """The issue's small CNN: conv + BN + ReLU, depthwise conv, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = self.relu2(self.dw(self.relu(self.bn(self.conv(x)))))
        return self.fc(x.flatten(1))


def _trained_cnn(preset):
    torch.manual_seed(0)
    model = q.fuse_modules(CNN().train(), [["conv", "bn", "relu"], ["dw", "relu2"]])
    model = q.prepare_qat(model, preset)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(4):
        x = torch.randn(16, 3, 8, 8)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _one_input_step(layer):
    """How far one code of difference in every input can move a converted layer's output:
    its input scale times the largest sum of |weight| over one output."""
    packed, scale, zero_point = layer._stored()
    w = torch.ops.qtorchext.dequantize_weight(packed, scale, zero_point, layer.meta.bits,
                                              layer.meta.weight_quant_min, layer.in_features)
    return float(layer.input_scale) * float(w.abs().sum(1).max())


@pytest.mark.parametrize("preset", ["int8", "w4a8"])
def test_three_way_check_of_the_cnn(preset, tmp_path):
    qat = _trained_cnn(preset)
    converted = q.convert(copy.deepcopy(qat))
    x = torch.randn(8, 3, 8, 8)
    layers = dict(converted.named_modules())
    for model, name in ((qat, "qat"), (converted, "converted")):
        path = tmp_path / f"{name}.onnx"
        q.export_onnx(model, (x,), path)
        rows = q.compare_onnx(model, (x,), path,
                              qat_model=qat if model is converted else None)
        assert [r["layer"] for r in rows] == ["conv", "dw", "fc", "(output)"]
        for r in rows:
            step = _one_input_step(layers[r["layer"] if r["layer"] != "(output)" else "fc"])
            if r["layer"] != "(output)":
                # layer by layer, the graph's arithmetic is qtorchext's
                assert r["ort_vs_model"] <= 1e-5 * r["max_abs"], r
            else:
                # the file as onnxruntime runs it: QLinearConv requantizes each conv's
                # output straight to the next layer's input codes, one code away at most
                assert r["ort_vs_model"] <= step, (r, step)
            if "qat_vs_model" in r:
                # the converted model reproduces the QAT model within one step of the
                # quantizers in between (the BatchNorm fold rounds differently)
                assert r["qat_vs_model"] <= step and r["ort_vs_qat"] <= 2 * step, (r, step)
    # the converted model in onnxruntime runs integer convolutions
    assert "QLinearConv" in _fused_ops(tmp_path / "converted.onnx", tmp_path)


def _fused_ops(path, folder):
    out = str(folder / "optimized.onnx")
    q.onnx_session(path, optimized_model_filepath=out)
    return {n.op_type for n in onnx.load(out).graph.node}


class MLP(nn.Module):
    # weights of more than 8192 entries: the exporter's optimizer does not fold them (the
    # file keeps qtorchext's packed codes; onnxruntime unpacks them once, when it loads)
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 256)
        self.b = nn.Linear(256, 64)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("qconfig,group_size,form", [
    ("int8", None, "MatMulInteger"),
    ("int4_weight_only", 32, "DequantizeLinear"),
    ("int4_weight_only", 64, "DequantizeLinear"),
    ("int2_weight_only", 32, "DequantizeLinear"),
    ("fp16", None, "Cast"),
    ("bf16", None, "Cast"),
])
def test_quantize_dynamic_models(qconfig, group_size, form, tmp_path):
    torch.manual_seed(0)
    model = q.quantize_dynamic(MLP().eval(), qconfig, group_size=group_size)
    x = torch.randn(2, 5, 64)
    path = tmp_path / "m.onnx"
    q.export_onnx(model, (x,), path)
    assert form in _ops(path)
    for shape in ((2, 5, 64), (7, 3, 64)):
        x = torch.randn(*shape)
        ref = _eager(model, x)
        got = _run(path, x)
        if qconfig == "int8":  # integer products in int32 on both sides
            assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
        else:
            assert _rel(got, ref) < 1e-5
    if qconfig.endswith("weight_only"):
        # onnxruntime fuses the blocked DequantizeLinear + MatMul into MatMulNBits; at its
        # default accuracy level 4 that quantizes activations to int8 (not what qtorchext
        # computes), which onnx_session(exact=True) turns off
        assert "MatMulNBits" in _fused_ops(path, tmp_path)
        assert _rel(_run(path, x, exact=False), ref) > 1e-4


def test_compare_onnx_finds_nested_layers(tmp_path):
    torch.manual_seed(0)
    model = q.quantize_dynamic(nn.Sequential(nn.Sequential(MLP())).eval(), "int4_weight_only")
    x = torch.randn(3, 64)
    q.export_onnx(model, (x,), tmp_path / "m.onnx")
    rows = q.compare_onnx(model, (x,), tmp_path / "m.onnx")
    assert [r["layer"] for r in rows] == ["0.0.a", "0.0.b", "(output)"]
    assert all(r["ort_vs_model"] <= 1e-5 * r["max_abs"] for r in rows)


def test_per_channel_dynamic_int8_is_exact_in_integers(tmp_path):
    torch.manual_seed(1)
    model = q.quantize_dynamic(MLP().eval(), "int8")
    x = torch.randn(4, 64) * 3
    path = tmp_path / "m.onnx"
    q.export_onnx(model, (x,), path)
    assert torch.equal(_run(path, x, **NO_OPT), _eager(model, x))


def test_plain_torch_onnx_export_with_the_translation_table(tmp_path):
    torch.manual_seed(0)
    model = q.quantize_dynamic(MLP().eval(), "int4_weight_only")
    x = torch.randn(3, 64)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=21,
                      custom_translation_table=q.onnx_translations())
    assert _rel(_run(path, x), _eager(model, x)) < 1e-5


def test_export_does_not_change_the_model(tmp_path):
    model = _trained_cnn("int8").train()
    before = copy.deepcopy(model.state_dict())
    q.export_onnx(model, (torch.randn(2, 3, 8, 8),), tmp_path / "m.onnx")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- refusals --------------------------------------------------------------------------


def test_a_never_calibrated_model_is_refused_and_nothing_is_written(tmp_path):
    model = q.prepare(CNN().eval(), "int8")  # no calibration batches
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="'conv.input_fake_quant' never observed"):
        q.export_onnx(model, (torch.randn(2, 3, 8, 8),), path)
    assert os.listdir(tmp_path) == []


def test_a_failed_export_keeps_the_existing_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the user's file")
    model = q.prepare(CNN().eval(), "int8")
    with pytest.raises(ValueError):
        q.export_onnx(model, (torch.randn(2, 3, 8, 8),), path)
    assert path.read_bytes() == b"the user's file"
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_a_binary_embedding_is_refused_by_name(tmp_path):
    qat = q.prepare_qat(nn.Sequential(nn.Embedding(10, 64)).train(),
                        {"": "w1a8", nn.Embedding: "w1a8"})
    qat(torch.arange(10))
    converted = q.convert(qat.eval())
    with pytest.raises(ValueError, match="Embedding '0' is a binary embedding"):
        q.export_onnx(converted, (torch.arange(4),), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_disabled_fake_quant_passes_through_as_in_eager(tmp_path):
    model = _trained_cnn("int8")
    model.fc.weight_fake_quant.disable_fake_quant()
    x = torch.randn(4, 3, 8, 8)
    q.export_onnx(model, (x,), tmp_path / "m.onnx")
    ref = _eager(q.disable_observer(copy.deepcopy(model)), x)
    assert _rel(_run(tmp_path / "m.onnx", x, **NO_OPT), ref) < 1e-5


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the user's file")

    def fail(self, *args, **kwargs):
        open(args[0], "wb").write(b"half")  # something written, then the failure
        raise OSError("disk full")
    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        q.export_onnx(q.quantize_dynamic(MLP().eval(), "int8"), (torch.randn(2, 64),), path)
    assert path.read_bytes() == b"the user's file"
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_the_file_gets_the_usual_permissions(tmp_path):
    path = tmp_path / "m.onnx"
    q.export_onnx(q.quantize_dynamic(MLP().eval(), "int8"), (torch.randn(2, 64),), path)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask


def test_bad_arguments(tmp_path):
    model = q.quantize_dynamic(MLP().eval(), "int8")
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"opset_version must be >= 21 \(blocked DequantizeLinear\), got 18"):
        q.export_onnx(model, (x,), tmp_path / "m.onnx", opset_version=18)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        q.export_onnx(model, (x,), tmp_path / "no" / "m.onnx")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        q.export_onnx("model", (x,), tmp_path / "m.onnx")
