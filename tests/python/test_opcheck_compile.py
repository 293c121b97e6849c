"""torch.library.opcheck for every op (schema, autograd registration, fake
tensors, AOT dispatch) and torch.compile(fullgraph=True) for each family."""

import pytest
import torch

import qtorchext

ops = torch.ops.qtorchext


def _affine_samples(requires_grad):
    x = torch.randn(4, 6, 5) * 3
    x.requires_grad_(requires_grad)
    s, z = torch.tensor([0.1]), torch.tensor([2], dtype=torch.int32)
    sc = torch.rand(6) * 0.1 + 0.01
    zc = torch.randint(-8, 8, (6,), dtype=torch.int32)
    sg = torch.rand(4, 6, 1) * 0.1 + 0.01
    zg = torch.randint(-8, 8, (4, 6, 1), dtype=torch.int32)
    return [
        (ops.fake_quantize_per_tensor_affine, (x, s, z, -8, 7)),
        (ops._fake_quantize_per_tensor_affine_cachemask, (x.detach(), s, z, -8, 7)),
        (ops.fake_quantize_per_channel_affine, (x, sc, zc, 1, -8, 7)),
        (ops._fake_quantize_per_channel_affine_cachemask, (x.detach(), sc, zc, 1, -8, 7)),
        (ops.fake_quantize_per_group, (x, sg, zg, 5, -8, 7)),
        (ops._fake_quantize_per_group_cachemask, (x.detach(), sg, zg, 5, -8, 7)),
        (ops._fake_quantize_mask_backward, (x.detach(), x.detach() > 0)),
    ]


def _learnable_samples(requires_grad):
    x = (torch.randn(4, 6, 5) * 3).requires_grad_(requires_grad)
    s = torch.tensor([0.1]).requires_grad_(requires_grad)
    z = torch.tensor([1.0]).requires_grad_(requires_grad)
    sc = (torch.rand(6) * 0.1 + 0.01).requires_grad_(requires_grad)
    zc = (torch.rand(6) * 4).requires_grad_(requires_grad)
    g = torch.randn(4, 6, 5)
    return [
        (ops.fake_quantize_learnable_per_tensor_affine, (x, s, z, -8, 7, 1.0)),
        (ops.fake_quantize_learnable_per_channel_affine, (x, sc, zc, 1, -8, 7, 0.5)),
        (ops._fake_quantize_learnable_per_tensor_affine_backward,
         (g, x.detach(), s.detach(), z.detach(), -8, 7, 1.0, [True, True, True])),
        (ops._fake_quantize_learnable_per_channel_affine_backward,
         (g, x.detach(), sc.detach(), zc.detach(), 1, -8, 7, 1.0, [True, False, True])),
    ]


def _other_samples(requires_grad):
    x = torch.randn(4, 6, 5).requires_grad_(requires_grad)
    a = torch.tensor(0.5).requires_grad_(requires_grad)
    ac = (torch.rand(6) + 0.1).requires_grad_(requires_grad)
    return [
        (ops.binarize, (x, a, 0, 1.0)),
        (ops.binarize, (x, ac, 1, 0.5)),
        (ops._binarize_backward, (torch.randn(4, 6, 5), x.detach(), ac.detach(), 1, 1.0,
                                  [True, True])),
        (ops.fake_cast, (x, torch.float16)),
        (ops.fake_cast, (x, torch.bfloat16)),
    ]


def _observer_samples(requires_grad):
    x = torch.randn(4, 6, 5).requires_grad_(requires_grad)
    inf = float("inf")
    mn, mx = torch.tensor(inf), torch.tensor(-inf)
    mnc, mxc = torch.full((6,), inf), torch.full((6,), -inf)
    hist = torch.zeros(64, dtype=torch.int64)
    hmn, hmx = torch.tensor(inf), torch.tensor(-inf)
    ops.observer_histogram_update(torch.randn(100), hist, hmn, hmx)
    flag_on = torch.ones(1, dtype=torch.uint8)
    return [
        (ops.choose_qparams, (torch.randn(6) - 1, torch.randn(6) + 1, 0, 255, False, 1e-7)),
        (ops.choose_qparams, (torch.tensor(-1.0), torch.tensor(2.0), -8, 7, True, 1e-7)),
        (ops.observer_minmax_update, (x.detach(), mn.clone(), mx.clone(), None, None)),
        (ops.observer_minmax_update, (x.detach(), mnc.clone(), mxc.clone(), 1, 0.1)),
        (ops.observer_histogram_update,
         (x.detach(), torch.zeros(32, dtype=torch.int64), mn.clone(), mx.clone())),
        (ops.histogram_search_range, (hist, hmn, hmx, -8, 7, False)),
        (ops.histogram_percentile_range, (hist, hmn, hmx, 99.0, True)),
        (ops.histogram_merge, (torch.stack([hist, hist]), torch.stack([hmn, hmn]),
                               torch.stack([hmx, hmx]))),
        (ops.histogram_merge, (torch.stack([hist, hist]), torch.stack([hmn, hmn]),
                               torch.stack([hmx, hmx]), hist, hmn, hmx)),
        (ops.observer_mse_update, (x.detach(), mn.clone(), mx.clone(),
                                   torch.zeros((), dtype=torch.int64), -8, 7, True, None, 10)),
        (ops.choose_qparams_per_token, (x.detach(), -128, 127, False, 1e-7)),
        (ops.fused_observe_fake_quantize,
         (x, flag_on, flag_on, mn.clone(), mx.clone(), torch.ones(1),
          torch.zeros(1, dtype=torch.int32), 0, 255, False, 1e-7, None, 0.01)),
        (ops.fused_observe_fake_quantize,
         (x, flag_on, flag_on, mnc.clone(), mxc.clone(), torch.ones(6),
          torch.zeros(6, dtype=torch.int32), -8, 7, True, 1e-7, 1, None)),
        (ops._fused_observe_fake_quantize_cachemask,
         (x.detach(), flag_on, flag_on, mn.clone(), mx.clone(), torch.ones(1),
          torch.zeros(1, dtype=torch.int32), 0, 255, False, 1e-7, None, 0.01)),
        (ops.binary_scale, (x, 1)),
    ]


def _quantized_samples(requires_grad):
    """Inference ops: not differentiable (a clear error if asked for a gradient)."""
    x = torch.randn(5, 64).requires_grad_(requires_grad)
    w = torch.randn(12, 64)
    sc, zc = torch.rand(12) * 0.1 + 0.01, torch.zeros(12, dtype=torch.int32)
    sg, zg = torch.rand(12, 4) * 0.1 + 0.01, torch.randint(-2, 2, (12, 4), dtype=torch.int32)
    codes = ops.quantize_weight(w, sc, zc, -127, 127)
    packed = ops.pack_linear_weight(codes, zc)
    codes4 = ops.quantize_weight(w, sg, zg, -8, 7)
    p4 = ops.pack_int_weight(codes4, 4, -8)
    bits = ops.pack_binary_weight(w)
    s, z = torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32)
    b = torch.randn(12)
    return [
        (ops.quantize_weight, (w, sc, zc, -127, 127)),
        (ops.quantize_weight, (w, sg, zg, -8, 7)),
        (ops.pack_linear_weight, (codes, zc)),
        (ops.pack_linear_weight, (codes, zc, True)),
        (ops.pack_linear_weight, (codes, zc, True, True)),
        (ops.linear_int8, (x, ops.pack_linear_weight(codes, zc, True), sc, b, None, None,
                           -128, 127, False, False)),
        (ops.linear_int8, (x, packed, sc, b, s, z, -128, 127, False, True)),
        (ops.linear_int8, (x, packed, sc, None, None, None, -127, 127, True, False)),
        (ops.pack_int_weight, (codes4, 4, -8)),
        (ops.unpack_int_weight, (p4, 4, -8, 64)),
        (ops.dequantize_weight, (p4, sg, zg, 4, -8, 64)),
        (ops.linear_weight_only, (x, p4, sg, zg, 4, -8, b, False)),
        (ops.pack_binary_weight, (w,)),
        (ops.dequantize_binary_weight, (bits, sc, 64)),
        (ops.linear_binary, (x, bits, sc, 64, b, s, z, -128, 127, False, False)),
        (ops.linear_binary, (x, bits, sc, 64, None, None, None, 0, 0, True, True)),
        (ops.linear_binary, (torch.randn(20, 64), bits, sc, 64, b, s, z, -128, 127)),
        (ops.im2row, (torch.randn(2, 3, 7, 6), [3, 2], [2, 1], [1, 0], [1, 2])),
        (ops.conv2d_int8, (torch.randn(2, 6, 7, 6), torch.stack([ops.pack_linear_weight(
            torch.randint(-9, 9, (6, 18)), torch.zeros(6, dtype=torch.int32), True)] * 2), sc, b,
            s, z, -128, 127, [3, 2], [2, 1], [1, 0], [1, 2], 2, True)),
        (ops.conv2d_depthwise_int8, (torch.randn(2, 6, 7, 6), torch.randint(-9, 9, (12, 6),
                                     dtype=torch.int16), sc, b, s, z, -128, 127, [3, 2], [2, 1],
                                     [1, 0], [1, 2], True)),
    ]


def _layer_samples():
    """The converted-layer ops, as converted layers of every kind call them, and the
    packing / BatchNorm folding ops behind convert."""
    from layer_cases import layer_cases, op_call

    out = [op_call(layer, x) for _, layer, x in
           layer_cases(["int8", "dynamic_int8", "w1a8", "int4_weight_only", "bf16"])]
    w = torch.randn(12, 4, 3, 3)
    meta = qtorchext.nn.meta
    int4 = meta.QuantMeta(meta.LAYER_CONV2D, meta.MODE_INT8, 4, -8, 7, 0, meta.INPUT_STATIC,
                          0, 255).to_list()
    grouped = meta.QuantMeta(meta.LAYER_LINEAR, meta.MODE_WEIGHT_ONLY, 2, -2, 1, 18,
                             scale_dtype=1).to_list()
    binary = meta.QuantMeta(meta.LAYER_CONV2D, meta.MODE_BINARY, 1, -1, 1).to_list()
    fp16 = meta.QuantMeta(meta.LAYER_CONV2D, meta.MODE_FLOAT16, 16).to_list()
    out += [
        (ops.pack_quantized_weight, (w, torch.rand(12) * 0.1 + 0.01,
                                     torch.zeros(12, dtype=torch.int32), int4)),
        (ops.pack_quantized_weight, (w, torch.tensor([0.05]), torch.tensor([1]), int4)),
        (ops.pack_quantized_weight, (w.reshape(12, 36), torch.rand(12, 2) + 0.1,
                                     torch.zeros(12, 2, dtype=torch.int32), grouped)),
        (ops.pack_quantized_weight, (w, None, None, binary)),
        (ops.pack_quantized_weight, (w, torch.tensor([0.3]), None, binary)),
        (ops.pack_quantized_weight, (w, None, None, fp16)),
        (ops.fold_batch_norm, (w, torch.randn(12), torch.randn(12), torch.rand(12) + 0.5,
                               torch.randn(12), torch.randn(12), 1e-5)),
        (ops.fold_batch_norm, (w, None, torch.randn(12), torch.rand(12) + 0.5, None, None,
                               1e-3)),
    ]
    return out


def _gptq_samples():
    """SmoothQuant's factors; GPTQ's Hessian accumulation (in place) and its
    column-by-column quantization, per-channel and per-group, with and without activation
    order."""
    x = torch.randn(5, 3, 8)
    h = torch.randn(40, 8, dtype=torch.float64)
    h = h.T @ h / 40
    w = torch.randn(6, 8)
    s = torch.rand(6, 1) * 0.1 + 0.05
    z = torch.zeros(6, 1, dtype=torch.int32)
    sg = torch.rand(6, 2) * 0.1 + 0.05
    zg = torch.randint(-1, 2, (6, 2), dtype=torch.int32)
    absmax = torch.rand(8) * 20
    absmax[2] = 0
    return [
        (ops.smooth_factors, (absmax, w, 0.5)),
        (ops.smooth_factors, (absmax, w, 1.0)),
        (ops.gptq_hessian_update, (x, torch.zeros(8, 8, dtype=torch.float64),
                                   torch.zeros((), dtype=torch.int64))),
        (ops.gptq_quantize, (w, h, s, z, -8, 7, None, False, 0.01, 4)),
        (ops.gptq_quantize, (w, h, sg, zg, -8, 7, 4, True, 0.01, 3)),
    ]


def _all_samples():
    out = []
    for rg in (False, True):
        samples = _affine_samples(rg) + _learnable_samples(rg) + _other_samples(rg) + \
            _observer_samples(rg) + (_quantized_samples(rg) + _layer_samples() + _gptq_samples() if not rg else [])
        for i, (op, args) in enumerate(samples):
            name = op._qualified_op_name.split("::")[1]
            out.append(pytest.param(op, args, id=f"{name}-{i}-grad{int(rg)}"))
    return out


@pytest.mark.parametrize("op,args", _all_samples())
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_inference_ops_refuse_gradients_clearly():
    for op, args in _quantized_samples(True):
        if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            y = op(*args)
            with pytest.raises(RuntimeError, match="derivative for qtorchext::.* is not implemented"):
                y.sum().backward()


def test_convolution_and_layer_ops_refuse_gradients_clearly():
    # (the int8 convolutions had no autograd registration before the ops were split by family)
    samples = [(op, args) for op, args in _quantized_samples(False) + _layer_samples()
               if op._qualified_op_name.split("::")[1] in
               ("im2row", "conv2d_int8", "conv2d_depthwise_int8", "quantized_linear",
                "quantized_conv", "quantized_embedding")]
    assert len(samples) >= 6
    for op, args in samples:
        if args[0].is_floating_point():
            x = args[0].detach().clone().requires_grad_()
            y = op(x, *args[1:])
            with pytest.raises(RuntimeError, match="derivative for qtorchext::.* is not implemented"):
                y.sum().backward()


def test_every_op_is_opchecked():
    names = {p.values[0]._qualified_op_name.split("::")[1] for p in _all_samples()}
    registered = {
        name for name in dir(ops)
        if not name.startswith("__") and isinstance(getattr(ops, name), torch._ops.OpOverloadPacket)
    }
    # check_layer_qparams / check_smooth_factors: load-time checks of stored values (read on
    # the host), never part of a traced forward; tested in test_layer_ops / test_smooth_quant
    assert registered - names == {"check_layer_qparams", "check_smooth_factors"}


def _compile_and_compare(fn, *args):
    """fullgraph compile; values and gradients equal eager."""
    eager_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    comp_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y_e, y_c = fn(*eager_args), compiled(*comp_args)
    assert torch.equal(y_e, y_c)
    y_e.square().sum().backward()
    y_c.square().sum().backward()
    for a, b in zip(eager_args, comp_args):
        if a.requires_grad:
            assert torch.equal(a.grad, b.grad)


def test_compile_affine_family():
    x = (torch.randn(8, 16) * 3).requires_grad_()

    def fn(t):
        a = qtorchext.fake_quantize_per_tensor_affine(t, 0.1, 3, -8, 7)
        b = qtorchext.fake_quantize_per_channel_affine(
            t, torch.full((16,), 0.05), torch.zeros(16, dtype=torch.int32), 1, -128, 127)
        c = qtorchext.fake_quantize_per_group(
            t, torch.full((8, 2), 0.2), torch.zeros(8, 2, dtype=torch.int32), 8, -8, 7)
        return a + b + c

    _compile_and_compare(fn, x)


def test_compile_learnable_family():
    x = (torch.randn(8, 16) * 3).requires_grad_()
    s = torch.tensor([0.1], requires_grad=True)
    z = torch.tensor([1.0], requires_grad=True)
    sc = (torch.rand(16) * 0.1 + 0.01).requires_grad_()
    zc = torch.zeros(16, requires_grad=True)

    def fn(t, s, z, sc, zc):
        return qtorchext.fake_quantize_learnable_per_tensor_affine(t, s, z, -8, 7) * \
            qtorchext.fake_quantize_learnable_per_channel_affine(t, sc, zc, 1, -8, 7, 0.5)

    _compile_and_compare(fn, x, s, z, sc, zc)


def test_compile_binarize_and_fake_cast():
    x = torch.randn(8, 16).requires_grad_()
    a = (torch.rand(16) + 0.1).requires_grad_()

    def fn(t, a):
        return qtorchext.binarize(t, a, 1) + qtorchext.fake_cast(t, torch.bfloat16)

    _compile_and_compare(fn, x, a)


def test_compile_dynamic_shapes():
    fn = torch.compile(
        lambda t: qtorchext.fake_quantize_per_tensor_affine(t, 0.1, 0, -128, 127),
        fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 9, 17):
        x = torch.randn(n, 3)
        assert torch.equal(fn(x), torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127))
