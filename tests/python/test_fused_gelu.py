"""Linear + GELU fused (fuse_modules): the float, QAT and converted layers, the GELU applied
by the converted layer's op to each block of its output (CPU), format version 2 of
quant_meta, and the errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qtorchext as q
from qtorchext.nn import intrinsic, meta as M, qat
from qtorchext.nn import quantized as qnn


class GELUActivation(nn.Module):
    """Stands in for Hugging Face's transformers.activations.GELUActivation (BERT's
    intermediate_act_fn): the same class name, module and ``act``."""

    __module__ = "transformers.activations"

    def __init__(self, act=F.gelu):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x)


def _net(k=48, n=96, approximate="none", act=None):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(k, n), act or nn.GELU(approximate=approximate),
                         nn.Linear(n, 8)).eval()


@pytest.mark.parametrize("act", ["none", "tanh", "hf"])
def test_fusion_keeps_the_float_output(act):
    net = _net(act=GELUActivation() if act == "hf" else None, approximate=act)
    fused = q.fuse_modules(net, [["0", "1"]])
    assert type(fused[0]) is intrinsic.LinearGELU and type(fused[1]) is nn.Identity
    assert fused[0].approximate == ("none" if act == "hf" else act)
    x = torch.randn(5, 48)
    assert torch.equal(fused(x), net(x))
    assert type(net[1]) is not nn.Identity  # not in place


def test_other_activations_are_refused_by_name():
    fake = GELUActivation(act=lambda x: 0.5 * x * (1 + torch.tanh(x)))  # not F.gelu
    with pytest.raises(ValueError, match=r"cannot fuse \['0', '1'\].*GELUActivation"):
        q.fuse_modules(_net(act=fake), [["0", "1"]])
    with pytest.raises(ValueError, match="cannot fuse"):
        q.fuse_modules(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GELU()), [["0", "1"]])
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'.*'fast'"):
        intrinsic.LinearGELU(4, 4, approximate="fast")


def _prepared(net, preset, calib):
    model = q.prepare_qat(copy.deepcopy(net).train(), preset)
    with torch.no_grad():
        for x in calib:
            model(x)
    q.disable_observer(model)
    return model.eval()


def _convert(net, preset, calib):
    if preset in ("int8", "int4_weight_only", "int2_weight_only", "fp16"):
        kwargs = {"group_size": 32} if preset.endswith("weight_only") else {}
        return None, q.quantize_dynamic(net, preset, **kwargs)
    qat_model = _prepared(net, preset, calib)
    return qat_model, q.convert(qat_model)


# int8 dynamic (oneDNN where exact, else the int16 tiles), static int8, weight-only int4 /
# int2 (fused kernel up to 8 rows, the middle-row kernel up to 64, dequantize + float
# GEMM beyond), binary, float16 (the GELU after the op); rows: few (one GEMM), middle,
# ATen's float GEMM for weight-only, and enough for the row blocks of the oneDNN path on
# 2 threads (>= 1024)
@pytest.mark.parametrize("preset", ["int8", "w4a8", "int4_weight_only", "int2_weight_only",
                                    "w1a8", "fp16"])
@pytest.mark.parametrize("rows", [3, 40, 300, 1100])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_fused_layer_is_gelu_of_the_converted_linear(preset, rows, threads, approximate,
                                                          cpu_capability):
    torch.set_num_threads(threads)
    k, n = 64, 2100 if rows < 1100 else 160  # several weight-only slices of channels
    torch.manual_seed(1)
    calib = [torch.randn(64, k) * 2 for _ in range(2)]
    x = torch.randn(rows, k) * 2
    base = nn.Sequential(nn.Linear(k, n), nn.GELU(approximate=approximate)).eval()
    qat_plain, plain = _convert(base, preset, calib)
    qat_fused, fused = _convert(q.fuse_modules(base, [["0", "1"]]), preset, calib)
    assert type(fused[0]) is qnn.Linear and type(fused[1]) is nn.Identity
    assert fused[0].meta.activation == (M.ACT_GELU_TANH if approximate == "tanh" else M.ACT_GELU)
    with torch.inference_mode():
        want = F.gelu(plain[0](x), approximate=approximate)
        got = fused(x)
    # the same GELU on the same values, by ATen's vector or scalar erf / tanh: 1 ulp of
    # 1 + erf(x / sqrt 2) apart, so up to about 1e-6 where that sum nears 0 (x near -5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    if qat_fused is not None:  # and what the QAT layer simulated (the converted-model contract)
        with torch.no_grad():
            simulated = qat_fused(x)
        assert isinstance(qat_fused[0], qat.LinearGELU)
        torch.testing.assert_close(got, simulated, rtol=1e-4, atol=1e-4)


def test_the_gelu_is_applied_once_and_to_every_row():
    """A row block skipped or done twice shows against the unfused layer (2 threads, the
    row blocks of the oneDNN path)."""
    torch.set_num_threads(2)
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU()).eval()
    fused = q.quantize_dynamic(q.fuse_modules(net, [["0", "1"]]), "int8")
    plain = q.quantize_dynamic(nn.Sequential(net[0]), "int8")
    x = torch.randn(3001, 32) * 3  # a partial last block
    with torch.inference_mode():
        y, lin = fused(x), plain(x)
    torch.testing.assert_close(y, F.gelu(lin), rtol=1e-6, atol=1e-5)
    assert not torch.allclose(y, lin, atol=1e-3) and not torch.allclose(y, F.gelu(F.gelu(lin)))


def test_state_dict_is_format_2_and_reloads(tmp_path):
    torch.manual_seed(3)
    net = q.fuse_modules(_net(approximate="tanh"), [["0", "1"]])
    model = q.quantize_dynamic(net, "int8")
    sd = model.state_dict()
    assert sd["0.quant_meta"].tolist()[0] == 2 and sd["0.quant_meta"].tolist()[10] == 3
    assert sd["2.quant_meta"].tolist()[0] == 1  # layers without a GELU stay version 1
    torch.save(sd, tmp_path / "m.pt")
    other = q.quantize_dynamic(q.fuse_modules(_net(approximate="tanh"), [["0", "1"]]), "int8")
    other.load_state_dict(torch.load(tmp_path / "m.pt"))
    x = torch.randn(7, 48)
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
    plain = q.quantize_dynamic(_net(), "int8")  # the same layer without a fused GELU
    with pytest.raises(RuntimeError, match="fused GELU \\(tanh\\)"):
        plain.load_state_dict(sd, strict=False)


def test_quant_meta_checks_the_activation():
    good = M.QuantMeta(M.LAYER_LINEAR, M.MODE_INT8, 8, -128, 127, 0, M.INPUT_DYNAMIC, -128,
                       127, M.ACT_GELU).to_list()
    assert good[0] == 2 and M.QuantMeta.from_list(good).activation == M.ACT_GELU
    v1 = list(good)
    v1[0] = 1  # a version 1 reader would apply ReLU: never written, refused
    with pytest.raises(RuntimeError, match="activation 2 in format version 1"):
        M.QuantMeta.from_list(v1)
    bad = list(good)
    bad[10] = 4
    with pytest.raises(RuntimeError, match="activation 4"):
        M.QuantMeta.from_list(bad)
    conv = list(good)
    conv[1] = M.LAYER_CONV2D
    with pytest.raises(RuntimeError, match="GELU fuses into linear layers"):
        M.QuantMeta.from_list(conv)


def test_smooth_quant_smooths_a_fused_gelu_layer():
    torch.manual_seed(4)
    net = q.fuse_modules(_net(), [["0", "1"]])
    xs = [torch.randn(16, 48) for _ in range(2)]
    with torch.no_grad():
        ref = net(xs[0])
    smoothed = q.smooth_quant(net, xs)
    assert "input_smooth" in dict(smoothed[0].named_buffers())
    with torch.no_grad():
        torch.testing.assert_close(smoothed(xs[0]), ref, rtol=1e-5, atol=1e-5)


def test_load_quantized_needs_the_gelu_fused_in_the_model(tmp_path):
    torch.manual_seed(5)
    model = q.quantize_dynamic(q.fuse_modules(_net(), [["0", "1"]]), "int8")
    path = tmp_path / "m.pt"
    q.save_state_dict(model, path)
    x = torch.randn(4, 48)
    with torch.no_grad():
        want = model(x)
    # the float model as it was before fusion: its GELU module would run a second time
    with pytest.raises(ValueError, match="'0': the file's layer ends with a fused GELU"):
        q.load_quantized(_net(), path)
    loaded = q.load_quantized(q.fuse_modules(_net(), [["0", "1"]]), path)
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
    # a model fused with the other approximation, or a file without the GELU
    with pytest.raises(ValueError, match="fused GELU"):
        q.load_quantized(q.fuse_modules(_net(approximate="tanh"), [["0", "1"]]), path)
    q.save_state_dict(q.quantize_dynamic(_net(), "int8"), path)
    with pytest.raises(ValueError, match="'0': the model's layer is a LinearGELU"):
        q.load_quantized(q.fuse_modules(_net(), [["0", "1"]]), path)


def test_a_refused_load_leaves_the_model_as_it_was(tmp_path):
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU())
    model = q.quantize_dynamic(q.fuse_modules(net, [["0", "1"], ["2", "3"]]), "int8")
    q.save_state_dict(model, tmp_path / "m.pt")
    target = q.fuse_modules(net, [["0", "1"]])  # '2' and '3' not fused: refused on '2'
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = target(x)
    with pytest.raises(ValueError, match="'2': the file's layer ends with a fused GELU"):
        q.load_quantized(target, tmp_path / "m.pt")
    assert type(target[0]) is intrinsic.LinearGELU and type(target[2]) is nn.Linear
    with torch.no_grad():
        assert torch.equal(target(x), before)
    # a failing strict load (a scale out of range) undoes the swaps too
    sd = torch.load(tmp_path / "m.pt")
    sd["2.weight_scale"] = -sd["2.weight_scale"]
    torch.save(sd, tmp_path / "bad.pt")
    fused = q.fuse_modules(net, [["0", "1"], ["2", "3"]])
    with pytest.raises(Exception, match="weight_scale"):
        q.load_quantized(fused, tmp_path / "bad.pt")
    assert type(fused[0]) is intrinsic.LinearGELU and type(fused[2]) is intrinsic.LinearGELU


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("preset", ["int8", "int4_weight_only"])
def test_other_input_dtypes_round_once_after_the_gelu(dtype, preset):
    """A half input: the layer computes in float32, applies the GELU there and rounds once to
    the input's dtype (the unfused layer rounds, then its GELU rounds again)."""
    torch.manual_seed(7)
    base = nn.Sequential(nn.Linear(64, 96), nn.GELU()).eval()
    kwargs = {"group_size": 32} if preset.endswith("weight_only") else {}
    fused = q.quantize_dynamic(q.fuse_modules(base, [["0", "1"]]), preset, **kwargs)
    plain = q.quantize_dynamic(nn.Sequential(base[0]), preset, **kwargs)
    x = torch.randn(1100, 64) * 2
    with torch.inference_mode():
        got = fused(x.to(dtype))
        want = F.gelu(plain(x.to(dtype).float()).double()).to(dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if dtype == torch.float64 else
                               2 * torch.finfo(dtype).eps * want.abs().max().item())
