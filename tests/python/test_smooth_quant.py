"""SmoothQuant: the factors against a float64 reference written here (no SmoothQuant op
exists in PyTorch), the smoothed float model against the original, the smoothed layers
through prepare / convert / save / load, GPTQ on smoothed layers, the alpha search, and
bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import qtorchext as q
from qtorchext.nn import intrinsic, qat, quantized
from qtorchext.ptq import ptq_qconfig

ops = torch.ops.qtorchext


def outlier_inputs(n=4, rows=48, k=32, seed=0):
    """Batches whose channels 3 and 17 are 40x and 25x the others (the LayerNorm-output
    outliers SmoothQuant targets)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(k)
    scale[3], scale[17] = 40.0, 25.0
    return [torch.randn(rows, k, generator=g) * scale + 0.1 for _ in range(n)]


class Block(nn.Module):
    """q / k / v on one input (a shared tensor), out after them, then an MLP."""

    def __init__(self, k=32):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(k, k), nn.Linear(k, k), nn.Linear(k, k)
        self.out = nn.Linear(k, k)
        self.mlp = nn.Sequential(nn.Linear(k, 48), nn.GELU(), nn.Linear(48, 8))

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).T / 6.0, -1)
        return self.mlp(self.out(a @ self.v(x)) + x)


def block(seed=0):
    torch.manual_seed(seed)
    return Block().eval()


def reference_factors(absmax, weight, alpha):
    a = absmax.double()
    w = weight.detach().double().abs().amax(0)
    s = torch.tensor([(a[j] ** alpha / w[j] ** (1 - alpha)) if a[j] > 0 and w[j] > 0 else 1.0
                      for j in range(a.numel())], dtype=torch.float64)
    return s.clamp(min=1e-5).float()


def input_absmax(model, batches, name):
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(
        lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1]).abs().amax(0)))
    with torch.no_grad():
        for b in batches:
            model(b)
    h.remove()
    return torch.stack(seen).amax(0)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.85, 1.0])
def test_smooth_factors_match_the_float64_formula(alpha):
    torch.manual_seed(1)
    absmax = torch.rand(24) * 30
    absmax[5] = 0  # a dead input: left alone
    absmax[7] = 1e-30  # a negligible one: at least 1e-5
    w = torch.randn(16, 24)
    w[:, 9] = 0  # a dead weight column: left alone
    s = q.smooth_factors(absmax, w, alpha)
    ref = reference_factors(absmax, w, alpha)
    assert s.dtype == torch.float32 and torch.equal(s, ref)
    assert s[5] == 1 and s[9] == 1


def test_smoothed_model_computes_the_float_model_and_holds_the_factors():
    model, xs = block(), outlier_inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sm = q.smooth_quant(model, xs, alpha=0.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    names = ["q", "k", "v", "out", "mlp.0", "mlp.2"]
    for name in names:
        layer = sm.get_submodule(name)
        assert type(layer) is intrinsic.SmoothLinear
        ref = reference_factors(input_absmax(model, xs, name), model.get_submodule(name).weight,
                                0.5)
        assert torch.allclose(layer.input_smooth, ref, rtol=1e-6)
        assert torch.allclose(layer.weight, model.get_submodule(name).weight * ref, rtol=1e-6)
    assert sm.smooth_alphas == {n: 0.5 for n in names}
    with torch.no_grad():
        for x in xs:
            y, ys = model(x), sm(x)
            assert torch.allclose(ys, y, rtol=1e-5, atol=1e-5 * y.abs().max().item())
    # alpha 0.5: the outlier channels of q's input shrink to about the square root of their
    # ratio to the others (40x -> about 6x)
    raw = input_absmax(model, xs, "q")
    flat = raw / sm.q.input_smooth
    assert float(flat.max() / flat.median()) < 0.25 * float(raw.max() / raw.median())


def test_smoothing_lowers_the_int8_static_error_on_outlier_channels():
    model, xs = block(), outlier_inputs()
    test = outlier_inputs(seed=7)

    def err(m):
        with torch.no_grad():
            return sum(float((m(x) - model(x)).pow(2).sum()) for x in test)
    plain = err(q.quantize_static(model, xs, "int8", progress=False))
    smoothed = err(q.quantize_static(q.smooth_quant(model, xs, alpha=0.5), xs, "int8",
                                     progress=False))
    assert smoothed < 0.5 * plain


def test_converted_smoothed_layer_computes_what_the_qat_layer_simulated():
    model, xs = block(), outlier_inputs()
    prepared = q.prepare(q.smooth_quant(model, xs, alpha=0.6), "int8")
    q.calibrate(prepared, xs, progress=False)
    q.disable_observer(prepared)
    assert isinstance(prepared.q, qat.Linear) and prepared.q.input_smooth is not None
    converted = q.convert(prepared)
    assert isinstance(converted.q, quantized.Linear)
    assert torch.equal(converted.q.input_smooth, prepared.q.input_smooth)
    with torch.no_grad():
        for x in xs:
            y_qat, y = prepared(x), converted(x)
            assert torch.allclose(y, y_qat, rtol=1e-5, atol=1e-5 * y_qat.abs().max().item())


def test_smoothed_checkpoints_load_into_models_made_before_the_smoothing(tmp_path):
    model, xs = block(), outlier_inputs()
    sm = q.smooth_quant(model, xs, alpha=0.5)
    qm = q.quantize_static(sm, xs, "int8", progress=False)
    q.save_state_dict(qm, str(tmp_path / "q.pt"))
    fresh = q.load_quantized(block(seed=3), str(tmp_path / "q.pt"))  # plain nn.Linears
    with torch.no_grad():
        for x in xs:
            assert torch.equal(fresh(x), qm(x))
    # a QAT checkpoint into a model prepared without smoothing
    prepared = q.prepare_qat(sm.train(), "int8")
    with torch.no_grad():
        prepared.train()(xs[0])
    state = prepared.state_dict()
    assert "q.input_smooth" in state
    other = q.prepare_qat(block(seed=3).train(), "int8")
    other.load_state_dict(state)
    prepared.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(other(xs[1]), prepared(xs[1]))
    # a float checkpoint of the smoothed model into the plain float model
    plain = block(seed=3)
    with pytest.raises(RuntimeError, match="Unexpected key.*input_smooth"):
        plain.load_state_dict(sm.state_dict())  # a plain nn.Linear has no factors to take
    for name in ["q", "k", "v", "out"]:
        setattr(plain, name, intrinsic.SmoothLinear(32, 32))
    plain.mlp[0], plain.mlp[2] = intrinsic.SmoothLinear(32, 48), intrinsic.SmoothLinear(48, 8)
    plain.load_state_dict(sm.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(xs[0]), sm(xs[0]))


def test_bad_factors_in_a_state_dict_are_refused_naming_the_layer():
    model, xs = block(), outlier_inputs()
    qm = q.quantize_static(q.smooth_quant(model, xs), xs, "int8", progress=False)
    for bad, what in ((torch.zeros(32), "finite and > 0"), (torch.full((32,), math.nan),
                                                            "finite and > 0"),
                      (torch.ones(31), "shape"), (torch.ones(32, dtype=torch.int32), "float")):
        state = qm.state_dict()
        state["out.input_smooth"] = bad
        with pytest.raises(ValueError, match=f"'out'.*input_smooth.*{what}"):
            q.load_quantized(block(), state)
        with pytest.raises(ValueError, match=f"'out'.*input_smooth.*{what}"):
            qm.load_state_dict(state)


def test_dtype_moves_keep_the_converted_model_right():
    model, xs = block(), outlier_inputs()
    qm = q.quantize_dynamic(q.smooth_quant(model, xs, alpha=0.7), "int8")
    with torch.no_grad():
        y = qm(xs[0])
        qm.double()
        assert qm.q.input_smooth.dtype == torch.float32  # converted layers keep their buffers
        # each smoothed layer: float64 inputs give the float32 codes exactly
        for name in ["q", "out", "mlp.0", "mlp.2"]:
            layer = qm.get_submodule(name)
            x = torch.randn(48, layer.in_features) * 3
            assert torch.equal(layer(x.double()).float(), layer(x))
        # the model: only the float64 glue (softmax, GELU, residual) differs, which may move
        # an activation across a rounding boundary (one step of the per-token scale)
        y64 = qm(xs[0].double())
    assert y64.dtype == torch.float64
    assert torch.allclose(y64.float(), y, rtol=0, atol=5e-3 * y.abs().max().item())


def test_gptq_on_smoothed_layers_uses_the_hessian_of_the_smoothed_input():
    model, xs = block(), outlier_inputs()
    sm = q.smooth_quant(model, xs, alpha=0.5)
    prepared = q.prepare(sm, ptq_qconfig("int4_weight_only", 16))
    expected = {}
    for name in ["q", "k", "v"]:  # one shared input, three different factors
        layer = prepared.get_submodule(name)
        x = torch.cat(xs) / layer.input_smooth
        h = torch.zeros(32, 32, dtype=torch.float64)
        ops.gptq_hessian_update(x, h, torch.zeros(1, dtype=torch.int64))
        layer.weight_fake_quant(layer.weight.detach())  # the grid, from the original weight
        wq = layer.weight_fake_quant
        expected[name] = ops.gptq_quantize(layer.weight.detach(), h, wq.scale, wq.zero_point,
                                           wq.quant_min, wq.quant_max, 16, False, 0.01, 128)[0]
    q.gptq(prepared, xs, progress=False)
    for name, w in expected.items():
        assert torch.allclose(prepared.get_submodule(name).weight, w, rtol=0, atol=1e-6)


def test_auto_alpha_picks_the_grid_alpha_with_the_least_layer_error():
    torch.manual_seed(4)
    layer = nn.Linear(32, 16).eval()
    xs = outlier_inputs(n=2, rows=40)
    auto = q.smooth_quant(layer, xs, alpha="auto")
    assert set(auto.smooth_alphas) == {""} and auto.smooth_alphas[""] in q.smooth_auto_alphas()

    def err(alpha):
        m = q.quantize_static(q.smooth_quant(layer, xs, alpha=alpha), xs, "int8", progress=False)
        with torch.no_grad():
            return sum(float((m(x) - layer(x)).double().pow(2).sum()) for x in xs)
    errors = {a: err(a) for a in q.smooth_auto_alphas()}
    best = min(errors.values())
    assert errors[auto.smooth_alphas[""]] <= best * (1 + 1e-6)
    assert errors[auto.smooth_alphas[""]] < errors[0.0]


def test_layers_selects_what_is_smoothed():
    model, xs = block(), outlier_inputs()
    sm = q.smooth_quant(model, xs, layers=["q", "mlp.2"])
    assert type(sm.q) is intrinsic.SmoothLinear and type(sm.mlp[2]) is intrinsic.SmoothLinear
    assert type(sm.k) is nn.Linear and type(sm.mlp[0]) is nn.Linear


def test_smooth_quant_errors_name_the_argument():
    model, xs = block(), outlier_inputs()
    for alpha in (1.5, -0.1, math.nan, "best", True):
        with pytest.raises(ValueError, match="alpha must be"):
            q.smooth_quant(model, xs, alpha=alpha)
    with pytest.raises(ValueError, match="batches is empty"):
        q.smooth_quant(model, [])
    with pytest.raises(TypeError, match="batches must be an iterable"):
        q.smooth_quant(model, xs[0])
    bad = [x.clone() for x in xs]
    bad[1][0, 0] = math.nan
    with pytest.raises(ValueError, match="layer 'q' saw NaN"):
        q.smooth_quant(model, bad)
    with pytest.raises(ValueError, match="not a module of the model"):
        q.smooth_quant(model, xs, layers=["nope"])
    with pytest.raises(ValueError, match="'mlp.1', a GELU"):
        q.smooth_quant(model, xs, layers=["mlp.1"])
    with pytest.raises(ValueError, match="qconfig"):
        q.smooth_quant(model, xs, alpha="auto", qconfig="no_such_preset")

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 4), nn.Linear(32, 4)

        def forward(self, x):
            return self.a(x)
    with pytest.raises(ValueError, match="never reach layer 'b'"):
        q.smooth_quant(Branch(), xs)
    with pytest.raises(ValueError, match="finite and > 0"):
        intrinsic.SmoothLinear.from_linear(nn.Linear(32, 4), torch.zeros(32))


def test_smoothed_model_exports_and_matches_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, xs = block(), outlier_inputs()
    qm = q.quantize_static(q.smooth_quant(model, xs, alpha=0.5), xs, "int8", progress=False)
    path = str(tmp_path / "m.onnx")
    q.export_onnx(qm, (xs[0],), path)
    session = q.onnx_session(path)
    name = session.get_inputs()[0].name
    y = torch.from_numpy(session.run(None, {name: xs[1].numpy()})[0])
    with torch.no_grad():
        ref = qm(xs[1])
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_python_smoothed_model_loads_in_cpp(tmp_path):
    """The interop tool's CNN (tests/cpp/interop_tool.cpp) with its Linear smoothed in
    Python, converted, saved, and rebuilt by C++'s qat::load_quantized."""
    import test_state_dict_interop as interop
    torch.manual_seed(5)
    x = torch.randn(16, 1, 8, 8)
    net = q.fuse_modules(interop.Net().eval(), [["conv", "bn", "relu"]])
    sm = q.smooth_quant(net, [x], layers=["fc"], alpha=0.7)
    qm = q.quantize_static(sm, [x], "int8", progress=False)
    assert "fc.input_smooth" in qm.state_dict()
    q.save_state_dict(qm, str(tmp_path / "py.pt"))
    torch.save({"x": x}, tmp_path / "x.pt")
    interop._tool("model:int8", "load_quantized", str(tmp_path / "py.pt"),
                  str(tmp_path / "y.pt"), str(tmp_path / "x.pt"))
    y_cpp = torch.load(tmp_path / "y.pt")["y"]
    with torch.no_grad():
        y = qm(x)
    assert torch.allclose(y_cpp, y, rtol=1e-6, atol=1e-6 * y.abs().max().item())


def test_a_weight_shared_with_another_module_stays_as_it_was_there():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(32, 32)
            self.head = nn.Linear(32, 32, bias=False)
            self.head.weight = self.embed.weight  # tied, as language-model heads are

        def forward(self, x):
            return self.head(x) + self.embed(torch.arange(x.shape[0]) % 32)
    torch.manual_seed(0)
    model, xs = Tied().eval(), outlier_inputs()
    sm = q.smooth_quant(model, xs)
    assert torch.equal(sm.embed.weight, model.embed.weight)  # the embedding unchanged
    with torch.no_grad():
        for x in xs:
            assert torch.allclose(sm(x), model(x), rtol=1e-5, atol=1e-4)


def test_fused_linear_relu_is_smoothed_and_smoothed_linears_fuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8)).eval()
    xs = outlier_inputs()
    fused = q.fuse_modules(model, [["0", "1"]])
    sm = q.smooth_quant(fused, xs)
    assert type(sm[0]) is intrinsic.LinearReLU and sm[0].input_smooth is not None
    smf = q.fuse_modules(q.smooth_quant(model, xs), [["0", "1"]])  # smoothed, then fused
    assert type(smf[0]) is intrinsic.LinearReLU and smf[0].input_smooth is not None
    with torch.no_grad():
        for m in (sm, smf):
            for x in xs:
                assert torch.allclose(m(x), model(x), rtol=1e-5, atol=1e-5)
        qm = q.quantize_static(sm, xs, "int8", progress=False)
        assert qm[0].input_smooth is not None
        y = model(xs[0])
        assert torch.allclose(qm(xs[0]), y, rtol=0, atol=0.03 * y.abs().max().item())


def test_a_smoothed_layer_refuses_weights_without_factors_even_non_strict():
    model, xs = block(), outlier_inputs()
    sm = q.smooth_quant(model, xs)
    with pytest.raises(ValueError, match="'q'.*smoothed.*without factors"):
        sm.load_state_dict(model.state_dict(), strict=False)
    qm = q.quantize_dynamic(sm, "int8")
    plain = q.quantize_dynamic(model, "int8")
    with pytest.raises(ValueError, match="'q'.*smoothed.*without factors"):
        qm.load_state_dict(plain.state_dict(), strict=False)


def test_copies_and_half_precision_keep_the_converted_model_right():
    import copy
    model, xs = block(), outlier_inputs()
    qm = q.quantize_static(q.smooth_quant(model, xs, alpha=0.8), xs, "int8", progress=False)
    with torch.no_grad():
        y = qm(xs[0])
        assert torch.equal(copy.deepcopy(qm)(xs[0]), y)
        layer = copy.deepcopy(qm.out).half()
        x = torch.randn(48, 32) * 3
        want = qm.out(x.half().float())
        got = layer(x.half())
        assert got.dtype == torch.float16
        # x / s rounded to half may cross a rounding boundary of the int8 input grid: a
        # few codes one step away
        assert torch.allclose(got.float(), want, rtol=0, atol=1e-2 * want.abs().max().item())


def test_qconfig_attributes_survive_and_the_random_stream_is_untouched():
    model, xs = block(), outlier_inputs()
    model.k.qconfig = None  # leave k in float
    torch.manual_seed(123)
    sm = q.smooth_quant(model, xs, alpha="auto")
    drawn = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(drawn, torch.rand(3))
    assert sm.k.qconfig is None
    qm = q.quantize_dynamic(sm, "int8")
    assert type(qm.k) is intrinsic.SmoothLinear and isinstance(qm.q, quantized.Linear)


def test_layers_named_twice_is_an_error():
    model, xs = block(), outlier_inputs()
    with pytest.raises(ValueError, match="layers names 'q' 2 times"):
        q.smooth_quant(model, xs, layers=["q", "k", "q"])


def test_a_refused_load_leaves_no_smoothing_factors_behind(tmp_path):
    # the smoothed file's factors are adopted by the layers as torch's load goes; a file it
    # then refuses (an entry missing) must leave the unsmoothed model as it was, with no
    # factors, through both loads
    xs = outlier_inputs()
    plain = q.quantize_static(block(), xs, "int8", progress=False)
    smoothed = q.quantize_static(q.smooth_quant(block(seed=1), xs, alpha=0.5), xs, "int8",
                                 progress=False)
    state = dict(smoothed.state_dict())
    assert "q.input_smooth" in state
    del state["mlp.2.bias"]
    path = str(tmp_path / "q.pt")
    torch.save(state, path)
    with torch.no_grad():
        before = plain(xs[0])
    for load in (q.load_state_dict, q.load_quantized):
        with pytest.raises(RuntimeError, match="Missing key.*mlp.2.bias"):
            load(plain, path)
        assert not any(name.endswith("input_smooth") for name, _ in plain.named_buffers())
        with torch.no_grad():
            assert torch.equal(plain(xs[0]), before)
