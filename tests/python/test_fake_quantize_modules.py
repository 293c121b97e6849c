"""Fake-quantize modules and QConfig presets."""

import warnings

import pytest
import torch

import qtorchext as q

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import fake_quantize as tao_fq
        from torch.ao.quantization import observer as tao_obs
except ImportError:
    tao_fq = None


FUSABLE = [
    dict(observer=q.MovingAverageMinMaxObserver, quant_min=0, quant_max=255),
    dict(observer=q.MinMaxObserver, quant_min=-128, quant_max=127, symmetric=True),
    dict(observer=q.MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7,
         symmetric=True, ch_axis=1, averaging_constant=0.2),
    dict(observer=q.PerChannelMinMaxObserver, quant_min=0, quant_max=15, ch_axis=0),
]


@pytest.mark.parametrize("kwargs", FUSABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_equals_unfused(cpu_capability, kwargs, dtype):
    fused, plain = q.FakeQuantize(fused=True, **kwargs), q.FakeQuantize(fused=False, **kwargs)
    assert fused.fused and not plain.fused
    for step in range(6):
        if step == 3:
            fused.disable_observer(), plain.disable_observer()
        if step == 4:
            fused.disable_fake_quant(), plain.disable_fake_quant()
        if step == 5:
            fused.enable_fake_quant(), plain.enable_fake_quant()
            fused.enable_observer(), plain.enable_observer()
        x = (torch.randn(8, 6, 5) * (step + 1)).to(dtype)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = fused(x1), plain(x2)
        assert torch.equal(y1, y2), step
        g = torch.randn(x.shape).to(dtype)
        y1.backward(g)
        y2.backward(g)
        assert torch.equal(x1.grad, x2.grad), step
        for (n1, b1), (n2, b2) in zip(fused.state_dict().items(), plain.state_dict().items()):
            assert n1 == n2 and torch.equal(b1, b2), (step, n1)


@pytest.mark.skipif(tao_fq is None, reason="torch.ao.quantization is not in this torch")
def test_fake_quantize_matches_torch_ao():
    ours = q.FakeQuantize(observer=q.MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tao_fq.FakeQuantize(observer=tao_obs.MovingAverageMinMaxObserver, quant_min=0,
                                  quant_max=255)
        for i in range(5):
            x = torch.randn(32, 16) * (i + 1) - i
            assert torch.equal(ours(x), ref(x))
        assert torch.equal(ours.scale, ref.scale)
        assert torch.equal(ours.zero_point, ref.zero_point)


def test_flags_are_uint8_buffers_and_survive_state_dict():
    fq = q.FakeQuantize()
    sd = fq.state_dict()
    assert sd["fake_quant_enabled"].dtype == torch.uint8
    assert sd["observer_enabled"].dtype == torch.uint8
    assert set(sd) == {"fake_quant_enabled", "observer_enabled", "scale", "zero_point",
                       "activation_post_process.min_val", "activation_post_process.max_val"}
    fq(torch.randn(10))
    fq.disable_observer()
    fresh = q.FakeQuantize()
    fresh.load_state_dict(fq.state_dict())
    x = torch.randn(10) * 100
    before = fresh.activation_post_process.max_val.clone()
    fresh(x)  # observer off: statistics unchanged
    assert torch.equal(fresh.activation_post_process.max_val, before)
    assert torch.equal(fresh(x), fq(x))


def test_per_channel_state_dict_into_fresh_module():
    fq = q.FakeQuantize(observer=q.MovingAveragePerChannelMinMaxObserver, quant_min=-8,
                        quant_max=7, symmetric=True, ch_axis=0)
    fq(torch.randn(6, 4))
    fresh = q.FakeQuantize(observer=q.MovingAveragePerChannelMinMaxObserver, quant_min=-8,
                           quant_max=7, symmetric=True, ch_axis=0)
    fresh.load_state_dict(fq.state_dict())
    assert fresh.scale.shape == (6,)
    assert torch.equal(fresh.scale, fq.scale)


def test_per_group_fake_quantize():
    fq = q.FakeQuantize(observer=q.MinMaxObserver, quant_min=-8, quant_max=7, symmetric=True,
                        group_size=16)
    assert not fq.fused
    w = torch.randn(4, 64, requires_grad=True)
    y = fq(w)
    s, z = fq.calculate_qparams()
    ref = q.fake_quantize_per_group(w.detach(), s.reshape(4, 4), z.reshape(4, 4), 16, -8, 7)
    assert torch.equal(y, ref)
    y.sum().backward()
    assert w.grad is not None


def test_learnable_fake_quantize_initialises_then_learns():
    lfq = q.LearnableFakeQuantize(observer=q.MovingAveragePerChannelMinMaxObserver,
                                  quant_min=-8, quant_max=7, symmetric=True, ch_axis=0,
                                  init_steps=2)
    w = torch.randn(6, 32, requires_grad=True)
    lfq(w)
    obs_scale, _ = lfq.activation_post_process.calculate_qparams()
    assert torch.equal(lfq.scale.detach(), obs_scale) and lfq.scale.shape == (6,)
    assert lfq._observer_on
    lfq(w)
    assert not lfq._observer_on and int(lfq.observer_enabled) == 0
    opt = torch.optim.SGD(list(lfq.parameters()) + [w], lr=0.1)
    before = lfq.scale.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        (lfq(w) - 2 * w.detach()).square().sum().backward()
        assert lfq.scale.grad is not None and lfq.zero_point.grad is not None
        opt.step()
    assert not torch.equal(lfq.scale.detach(), before)
    assert bool((lfq.scale > 0).all())


def test_binary_and_float_fake_quantize():
    b = q.BinaryFakeQuantize(ch_axis=0)
    w = torch.randn(4, 10, requires_grad=True)
    y = b(w)
    alpha = w.detach().abs().mean(1, keepdim=True)
    assert torch.equal(y.detach(), torch.where(w.detach() < 0, -alpha, alpha))
    y.sum().backward()
    assert w.grad is not None
    f = q.FloatFakeQuantize(dtype=torch.bfloat16)
    x = torch.randn(100)
    assert torch.equal(f(x), x.bfloat16().float())
    f.disable_fake_quant()
    assert torch.equal(f(x), x)


@pytest.mark.parametrize("name", sorted(q.qconfig.__globals__["PRESETS"]))
def test_presets_build_and_run(name):
    qc = q.qconfig(name)
    w = torch.randn(8, 64)
    x = torch.randn(4, 64).relu()
    if qc.weight is not None:
        wq = qc.weight()
        assert wq(w).shape == w.shape
    if qc.activation is not None:
        aq = qc.activation()
        assert aq(x).shape == x.shape


def test_preset_contents():
    qc = q.qconfig("int8")
    a, w = qc.activation(), qc.weight()
    assert (a.quant_min, a.quant_max, a.ch_axis) == (0, 255, None)
    assert (w.quant_min, w.quant_max, w.ch_axis) == (-128, 127, 0)
    assert w.activation_post_process.symmetric
    assert q.qconfig("int4_weight_only").activation is None
    assert q.qconfig("int4_weight_only").weight().group_size == 32
    assert q.qconfig("w4a8", group_size=64).weight().group_size == 64
    assert isinstance(q.qconfig("w1a8").weight(), q.BinaryFakeQuantize)
    assert isinstance(q.qconfig("lsq_w4a4").activation(), q.LearnableFakeQuantize)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown qconfig preset 'int3'; valid: bf16, dynamic_int8, "
                                         "fp16, int2_weight_only, int4_weight_only, int8, "
                                         "lsq_w4a4, w1a8, w2a8, w4a8"):
        q.qconfig("int3")


def test_compiled_fused_fake_quantize():
    fq = q.FakeQuantize()
    ref = q.FakeQuantize()
    compiled = torch.compile(fq, fullgraph=True, backend="aot_eager")
    for i in range(3):
        x = torch.randn(16, 8) * (i + 1)
        assert torch.equal(compiled(x), ref(x))
    assert torch.equal(fq.scale, ref.scale)
    assert torch.equal(fq.activation_post_process.min_val, ref.activation_post_process.min_val)


def test_learnable_init_steps_zero_or_none_never_switches_the_observer_off():
    # as C++'s LearnableFakeQuantizeOptions().init_steps(0)
    for steps in (0, None):
        m = q.LearnableFakeQuantize(init_steps=steps)
        m.train()
        for _ in range(3):
            m(torch.randn(8))
        assert bool(m.observer_enabled[0])
    m = q.LearnableFakeQuantize(init_steps=2)
    m.train()
    m(torch.randn(8))
    assert bool(m.observer_enabled[0])
    m(torch.randn(8))
    assert not bool(m.observer_enabled[0])
    with pytest.raises(ValueError, match="init_steps must be a non-negative integer or None"):
        q.LearnableFakeQuantize(init_steps=-1)


def test_preset_names_lists_every_preset_qconfig_builds():
    names = q.preset_names()
    assert names == sorted(names) and {"int8", "w4a8", "lsq_w4a4", "int4_weight_only"} <= set(names)
    for name in names:
        assert isinstance(q.qconfig(name), q.QConfig)
