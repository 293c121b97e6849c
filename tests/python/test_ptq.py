"""Post-training quantization: quantize_dynamic, prepare / calibrate / quantize_static,
and the per-layer report."""

import math

import pytest
import torch
from torch import nn

import qtorchext as q
from qtorchext.nn import quantized


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def _rel(y, ref):
    return ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _bytes(m):
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


def test_quantize_dynamic_int8_is_per_token_activations_times_int8_weights():
    model = _mlp()
    qm = q.quantize_dynamic(model, "int8")
    assert all(isinstance(qm[i], quantized.Linear) for i in (0, 2, 4))
    assert type(model[0]) is nn.Linear  # not in place by default
    x = torch.randn(7, 5, 64) * 3
    # reference: per-token fake quant of the input, per-channel int8 weights, float64
    lin = model[0]
    w = lin.weight.detach()
    ws = w.abs().amax(1) / 127.5
    wq = torch.clamp(torch.round(w * (1.0 / ws[:, None])), -128, 127) * ws[:, None]
    s, z = torch.ops.qtorchext.choose_qparams_per_token(x, -128, 127, False,
                                                        torch.finfo(torch.float32).eps)
    xq = (torch.clamp(torch.round(x * (1.0 / s)) + z, -128, 127) - z) * s
    ref = xq.double() @ wq.double().t() + lin.bias.double()
    with torch.no_grad():
        assert _rel(qm[0](x), ref) < 1e-5
        # end to end close to float
        assert _rel(qm(x), model(x)) < 0.05


# Per group: the packed codes, a float16 scale and an int8 zero point (4-bit, g32: 19 bytes
# per 128 float bytes = 0.148; g128: 0.131; 2-bit g32: 0.086); plus quant_meta per layer.
@pytest.mark.parametrize("name,group,limit", [("int4_weight_only", 32, 0.149),
                                              ("int4_weight_only", 128, 0.132),
                                              ("int2_weight_only", 32, 0.087)])
def test_quantize_dynamic_weight_only_sizes(name, group, limit):
    model = nn.Sequential(nn.Linear(256, 512, bias=False), nn.ReLU(), nn.Linear(512, 256, bias=False))
    qm = q.quantize_dynamic(model, name, group_size=group)
    assert qm[0].meta.group_size == group
    assert qm[0].weight_zero_point.dtype == torch.int8
    assert qm[0].weight_scale.dtype == torch.float16
    assert _bytes(qm) <= limit * _bytes(model)
    x = torch.randn(4, 256)
    with torch.no_grad():
        assert _rel(qm(x), model(x)) < (0.2 if "int4" in name else 0.7)


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_quantize_dynamic_half_weights(name, dtype):
    model = _mlp()
    qm = q.quantize_dynamic(model, name)
    assert qm[0].weight.dtype == dtype
    x = torch.randn(3, 64)
    with torch.no_grad():
        ref = nn.functional.linear(x, model[0].weight.to(dtype).float(), model[0].bias)
        assert _rel(qm[0](x), ref) < 1e-6  # float activations, half-precision weights
    assert _bytes(qm) < 0.51 * _bytes(model)


def test_quantize_dynamic_errors():
    with pytest.raises(ValueError, match="qconfig must be one of int8, int4_weight_only"):
        q.quantize_dynamic(_mlp(), "int3")
    with pytest.raises(ValueError, match="activation must be None or DynamicFakeQuantize"):
        q.quantize_dynamic(_mlp(), q.qconfig("int8"))
    with pytest.raises(TypeError, match="qconfig must be a name or a QConfig"):
        q.quantize_dynamic(_mlp(), 8)
    with pytest.raises(ValueError, match="group_size applies to preset names only"):
        q.quantize_dynamic(_mlp(), q.qconfig("dynamic_int8"), group_size=32)


def test_quantize_dynamic_only_touches_the_chosen_layer_types():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 8))
    qm = q.quantize_dynamic(model, "int8")
    assert type(qm[0]) is nn.Conv2d and isinstance(qm[2], quantized.Linear)


def test_prepare_calibrate_convert_uses_histogram_ranges_over_all_batches():
    model = _mlp()
    prepared = q.prepare(model, "int8")
    assert not prepared.training
    obs = prepared[0].input_fake_quant.activation_post_process
    assert isinstance(obs, q.HistogramObserver)
    batches = [torch.randn(32, 64) * (1 + i) for i in range(4)]  # widening ranges
    q.calibrate(prepared, batches, progress=False)
    assert obs.max_val.item() >= batches[-1].max().item() - 1e-6  # saw every batch
    q.disable_observer(prepared)
    with torch.no_grad():
        ref = prepared(batches[0])
        qm = q.convert(prepared)
        assert _rel(qm(batches[0]), ref) < 1e-5
    assert qm[0].input_scale.item() != 1.0


def test_quantize_static_accuracy_and_batch_forms():
    model = _mlp()
    calib = [torch.randn(64, 64) for _ in range(8)]
    qm = q.quantize_static(model, calib, "int8", progress=False)
    x = torch.randn(500, 64)
    with torch.no_grad():
        agree = (qm(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree > 0.95

    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, a, scale=1.0):
            return self.fc(a) * scale

    for batches in ([{"a": torch.randn(4, 8), "scale": 2.0}], [(torch.randn(4, 8), 2.0)]):
        m = q.quantize_static(Kw(), batches, "int8", progress=False)
        assert isinstance(m.fc, quantized.Linear)


def test_calibrate_shows_a_progress_bar(capsys):
    prepared = q.prepare(_mlp(), "int8")
    q.calibrate(prepared, [torch.randn(4, 64)] * 3, progress=True)
    assert "calibrate" in capsys.readouterr().err


def test_calibrate_without_tqdm_prints_a_plain_progress_line(capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    prepared = q.prepare(_mlp(), "int8")
    q.calibrate(prepared, [torch.randn(4, 64)] * 3, progress=True)
    assert "calibrate 3/3" in capsys.readouterr().err
    q.calibrate(prepared, [torch.randn(4, 64)] * 2, progress=False)
    assert capsys.readouterr().err == ""


def test_report_ranks_layers_by_sqnr(tmp_path):
    import importlib.util
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None  # the PNG needs it
    model = _mlp()
    data = [torch.randn(64, 64) for _ in range(3)]
    qm = q.quantize_static(model, data, {"": "int8", "4": "w2a8"}, progress=False)
    out = tmp_path / "sqnr.png"
    import io
    buf = io.StringIO()
    rows = q.report(model, qm, data, plot=str(out) if has_matplotlib else None, file=buf)
    assert [r["layer"] for r in rows] == ["0", "2", "4"]
    by = {r["layer"]: r for r in rows}
    assert by["0"]["sqnr_db"] > 30  # int8: ~40 dB
    assert by["4"]["sqnr_db"] < by["2"]["sqnr_db"]  # the 2-bit layer is the sensitive one
    assert all(math.isfinite(r["sqnr_db"]) for r in rows)
    assert by["0"]["bytes"] < 0.3 * by["0"]["float_bytes"]
    assert out.exists() == has_matplotlib
    if has_matplotlib:
        assert out.stat().st_size > 1000
        svg = tmp_path / "sqnr.svg"  # the format C++'s report writes; matplotlib's too
        q.report(model, qm, data, plot=str(svg), file=io.StringIO())
        assert svg.read_text().lstrip().startswith("<?xml")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sqnr.png", "sqnr.svg"]  # no temp left
    assert "SQNR dB" in buf.getvalue()
    with pytest.raises(ValueError, match="no quantized layers"):
        q.report(model, model, data)
    # the CSV C++'s qat::report(..., csv_path) writes: same columns, %g numbers
    csv = tmp_path / "sqnr.csv"
    q.report(model, qm, data, file=io.StringIO(), csv=str(csv))
    lines = csv.read_text().splitlines()
    assert lines[0] == "layer,precision,sqnr_db,bytes,float_bytes" and len(lines) == 4
    import csv as csv_module
    layer, precision, sqnr, nbytes, fbytes = next(csv_module.reader([lines[1]]))
    assert layer == "0" and precision == by["0"]["precision"]
    assert abs(float(sqnr) - by["0"]["sqnr_db"]) < 1e-3
    assert int(nbytes) == by["0"]["bytes"] and int(fbytes) == by["0"]["float_bytes"]


def test_half_scales_are_exact_and_the_converted_layer_matches_the_simulation():
    torch.manual_seed(4)
    lin = nn.Linear(96, 40)
    wq = q.fake_quantize.FakeQuantize(q.observer.MinMaxObserver, quant_min=-8, quant_max=7,
                                      group_size=32, scale_dtype=torch.float16)
    assert not wq.fused
    wq(lin.weight.detach())
    s, _ = wq.calculate_qparams()
    assert torch.equal(s, s.half().float())  # representable in float16
    ref_obs = q.observer.MinMaxObserver(quant_min=-8, quant_max=7, group_size=32)
    ref_obs(lin.weight.detach())
    s32, _ = ref_obs.calculate_qparams()
    assert torch.equal(s, s32.half().float())  # round to nearest of the float32 scale
    model = nn.Sequential(lin)
    prepared = q.prepare_qat(model, "int4_weight_only")
    x = torch.randn(5, 96)
    with torch.no_grad():
        prepared.eval()
        sim = prepared(x)
        conv = q.convert(prepared)
        assert conv[0].weight_scale.dtype == torch.float16
        assert _rel(conv(x), sim) < 1e-6
    with pytest.raises(ValueError, match="scale_dtype must be None, torch.float16 or "
                                         "torch.bfloat16, got torch.int8"):
        q.fake_quantize.FakeQuantize(scale_dtype=torch.int8)


def test_quantize_dynamic_int4_searches_ranges():
    # the MSE range search beats min / max on heavy-tailed weights
    torch.manual_seed(5)
    w = torch.distributions.StudentT(3.0).sample((64, 256))
    lin = nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    searched = q.quantize_dynamic(nn.Sequential(lin), "int4_weight_only", group_size=128)
    minmax = q.convert(q.prepare_qat(nn.Sequential(lin), q.qconfig("int4_weight_only",
                                                                    group_size=128)).eval())

    def err(m):
        return (ops_dequant(m[0]) - w).pow(2).sum().item()
    assert err(searched) < 0.95 * err(minmax)  # measured 0.91


def ops_dequant(layer):
    m = layer.meta
    return torch.ops.qtorchext.dequantize_weight(layer.weight_packed, layer.weight_scale,
                                                 layer.weight_zero_point, m.bits,
                                                 m.weight_quant_min, layer.in_features)


def test_quantize_dynamic_group_size_rules_match_cpp():
    model = torch.nn.Sequential(torch.nn.Linear(64, 8))
    for name in ("int8", "fp16", "bf16"):
        with pytest.raises(ValueError, match=f"group_size does not apply to {name}"):
            q.quantize_dynamic(model, name, group_size=32)
    with pytest.raises(ValueError, match="group_size must be a positive integer, got 0"):
        q.quantize_dynamic(model, "int4_weight_only", group_size=0)
    # None is the default, 32 (the preset too, as QConfig::preset(name, std::nullopt))
    qm = q.quantize_dynamic(model, "int4_weight_only", group_size=None)
    assert qm[0].weight_scale.shape == (8, 2)
    assert q.qconfig("int4_weight_only", group_size=None).weight().activation_post_process \
        .group_size == 32
    # an inference model whatever mode the input was in, as torch.ao's quantize_dynamic
    assert not q.quantize_dynamic(model.train(), "int8").training
