"""Bad input gets a clear error naming the argument and its value."""

import re

import pytest
import torch

import qtorchext

x = torch.randn(4, 6)
s1, z1 = torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
sc, zc = torch.full((6,), 0.1), torch.zeros(6, dtype=torch.int32)


def raises(match, fn, exc=RuntimeError):
    with pytest.raises(exc, match=re.escape(match)):
        fn()


def test_quant_range():
    pt = qtorchext.fake_quantize_per_tensor_affine
    raises("quant_min (5) must be <= quant_max (3)", lambda: pt(x, s1, z1, 5, 3))
    raises("[quant_min, quant_max] = [1, 255] must include 0", lambda: pt(x, s1, z1, 1, 255))
    raises("[quant_min, quant_max] = [-129, 127] must lie within [-128, 255]",
           lambda: pt(x, s1, z1, -129, 127))
    raises("[quant_min, quant_max] = [0, 256] must lie within [-128, 255]",
           lambda: pt(x, s1, z1, 0, 256))


def test_zero_point_outside_range():
    pt = qtorchext.fake_quantize_per_tensor_affine
    raises("zero_point (300) must lie within [quant_min, quant_max] = [0, 255]",
           lambda: pt(x, s1, torch.tensor([300], dtype=torch.int32), 0, 255))
    raises("zero_point (300) must lie within", lambda: pt(x, 0.1, 300, 0, 255))
    zc_bad = zc.clone()
    zc_bad[4] = -9
    raises("zero_point (-9) must lie within [quant_min, quant_max] = [-8, 7] at index 4",
           lambda: qtorchext.fake_quantize_per_channel_affine(x, sc, zc_bad, 1, -8, 7))


def test_scale_values():
    pt = qtorchext.fake_quantize_per_tensor_affine
    for bad, shown in ((0.0, "0"), (-0.5, "-0.5"), (float("nan"), "nan"), (float("inf"), "inf")):
        raises(f"scale must be finite and > 0, got {shown}",
               lambda: pt(x, torch.tensor([bad]), z1, 0, 255))
    raises("scale must be finite and > 0 in float32, got -1.0", lambda: pt(x, -1.0, 0, 0, 255))
    raises("scale must be finite and > 0 in float32, got 1e-50", lambda: pt(x, 1e-50, 0, 0, 255))
    sc_bad = sc.clone()
    sc_bad[2] = 0
    raises("scale must be finite and > 0, got 0 at index 2",
           lambda: qtorchext.fake_quantize_per_channel_affine(x, sc_bad, zc, 1, 0, 255))
    raises("scale must be finite and > 0, got -0.1",
           lambda: qtorchext.fake_quantize_learnable_per_tensor_affine(
               x, torch.tensor([-0.1]), torch.tensor([0.0]), 0, 255))


def test_shapes_and_dtypes():
    pt = qtorchext.fake_quantize_per_tensor_affine
    pc = qtorchext.fake_quantize_per_channel_affine
    raises("scale must hold one element (shape [] or [1]), got shape [2]",
           lambda: pt(x, torch.tensor([0.1, 0.2]), z1, 0, 255))
    raises("zero_point must be an int32 or int64 tensor, got Float",
           lambda: pt(x, s1, torch.tensor([0.0]), 0, 255))
    raises("scale must be a floating point tensor, got Int",
           lambda: pt(x, torch.tensor([1], dtype=torch.int32), z1, 0, 255))
    raises("scale must be 1-D with input.size(1) = 6 entries, got shape [5]",
           lambda: pc(x, torch.full((5,), 0.1), zc, 1, 0, 255))
    raises("zero_point must be 1-D with input.size(0) = 4 entries, got shape [6]",
           lambda: pc(x, torch.full((4,), 0.1), zc, 0, 0, 255))
    raises("input must be a floating point tensor (float32, float64, float16 or bfloat16), "
           "got Int", lambda: pt(torch.ones(3, dtype=torch.int32), s1, z1, 0, 255))
    raises("input must be a floating point tensor", lambda: pc(x.long(), sc, zc, 1, 0, 255))
    raises("scale must be a float32 tensor, got Double",
           lambda: qtorchext.fake_quantize_learnable_per_tensor_affine(
               x, torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.0]), 0, 255))
    raises("zero_point must be a float32 tensor (it is learned), got Int",
           lambda: qtorchext.fake_quantize_learnable_per_tensor_affine(x, s1, z1, 0, 255))
    raises("zero_point must be a tensor or an int, got float", lambda: pt(x, 0.1, 1.5, 0, 255),
           exc=TypeError)


def test_axis_and_group_size():
    pc = qtorchext.fake_quantize_per_channel_affine
    raises("axis (2) is out of range for an input with 2 dimension(s)",
           lambda: pc(x, sc, zc, 2, 0, 255))
    raises("axis (-3) is out of range for an input with 2 dimension(s)",
           lambda: pc(x, sc, zc, -3, 0, 255))
    pg = qtorchext.fake_quantize_per_group
    sg, zg = torch.full((4, 2), 0.1), torch.zeros(4, 2, dtype=torch.int32)
    raises("group_size (4) must divide the last dimension of input (6)",
           lambda: pg(x, sg, zg, 4, -8, 7))
    raises("group_size (0) must be > 0", lambda: pg(x, sg, zg, 0, -8, 7))
    raises("scale must have shape [4, 2] (input.shape[:-1] + [input.size(-1) / group_size]), "
           "got shape [4, 3]",
           lambda: pg(x, torch.full((4, 3), 0.1), zg, 3, -8, 7))


def test_devices_differ():
    meta_scale = torch.tensor([0.1], device="meta")
    raises("all tensors must be on one device, but input is on cpu and scale is on meta",
           lambda: qtorchext.fake_quantize_per_tensor_affine(x, meta_scale, z1, 0, 255))


def test_binarize_and_fake_cast():
    raises("alpha must be finite and >= 0, got -1", lambda: qtorchext.binarize(x, torch.tensor(-1.)))
    raises("alpha must hold one element or be 1-D with input.size(1) = 6 entries, got shape [4]",
           lambda: qtorchext.binarize(x, torch.ones(4), 1))
    raises("clip must be finite and >= 0, got -1", lambda: qtorchext.binarize(x, 1.0, 0, -1.0))
    raises("dtype must be torch.float16 or torch.bfloat16, got Float",
           lambda: qtorchext.fake_cast(x, torch.float32))
    raises("input must be a floating point tensor",
           lambda: qtorchext.fake_cast(torch.ones(3, dtype=torch.int64), torch.float16))


def test_nothing_crashes_on_bad_grad():
    raises("grad (shape [3]) and input (shape [4, 6]) must have the same shape",
           lambda: torch.ops.qtorchext._fake_quantize_learnable_per_tensor_affine_backward(
               torch.ones(3), x, s1, torch.tensor([0.0]), 0, 255, 1.0, [True, True, True]))
    raises("mask must be a bool tensor, got Float",
           lambda: torch.ops.qtorchext._fake_quantize_mask_backward(x, x))


def test_cpu_capability_errors():
    raises("capability 'avx9000' is not available on this CPU; supported: default",
           lambda: qtorchext.set_cpu_capability("avx9000"))


# Found by fuzzing the ops (each was a crash, a wrong answer or an unclear message).
O = torch.ops.qtorchext


def test_weight_ops_refuse_empty_groups_and_bad_in_features():
    raises("weight [N, K] with scale [N] (per channel) or [N, groups]",
           lambda: O.quantize_weight(torch.randn(2, 4), torch.ones(2, 0),
                                     torch.zeros(2, 0, dtype=torch.int32), -8, 7))
    raises("scale must be a floating point tensor, got Bool",
           lambda: O.quantize_weight(torch.randn(2, 4), torch.ones(2, dtype=torch.bool),
                                     torch.zeros(2, dtype=torch.int32), -8, 7))
    raises("in_features must lie in [1, 2^48], got 0",
           lambda: O.dequantize_weight(torch.zeros(2, 0, dtype=torch.uint8), torch.ones(2, 1),
                                       torch.zeros(2, 1, dtype=torch.int32), 4, -8, 0))
    raises("in_features must lie in [0, 2^48], got -1",
           lambda: O.unpack_int_weight(torch.zeros(2, 1, dtype=torch.uint8), 4, -8, -1))
    raises("in_features must lie in [1, 2^48], got 4611686018427387904",
           lambda: O.dequantize_binary_weight(torch.zeros(0, 1, dtype=torch.int32),
                                              torch.ones(0), 2 ** 62))


def test_linear_binary_needs_both_input_qparams_and_8_bit_codes():
    wb = O.pack_binary_weight(torch.randn(4, 32))
    for rows in (1, 9):  # the bit-plane kernel (< 8 rows) and the GEMM
        raises("give both input_scale and input_zero_point (static input) or neither, got "
               "input_scale alone",
               lambda: O.linear_binary(torch.randn(rows, 32), wb, torch.ones(4), 32, None,
                                       torch.tensor([0.1]), None, -128, 127))
        raises("got input_zero_point alone",
               lambda: O.linear_binary(torch.randn(rows, 32), wb, torch.ones(4), 32, None, None,
                                       torch.tensor([0], dtype=torch.int32), -128, 127))
        raises("the input range [-128, 255] must span at most 256 codes",
               lambda: O.linear_binary(torch.randn(rows, 32), wb, torch.ones(4), 32, None,
                                       torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32),
                                       -128, 255))


def test_linear_int8_is_exact_up_to_its_accumulation_bound():
    # int8 weights (|w - zp| <= 128) and a signed 8-bit input range (|q - zp| <= 255): the
    # int32 sums are exact up to k = (2^31 - 1) // (255 * 128) = 65793 - 1, refused beyond
    k = (2 ** 31 - 1) // (255 * 128)
    w = torch.full((1, k), -128, dtype=torch.int32)
    packed = O.pack_linear_weight(w, torch.zeros(1, dtype=torch.int32), True)
    x = torch.full((1, k), -1000.0)  # code -128, minus zero point 127: -255
    scale, zp = torch.tensor([1.0]), torch.tensor([127], dtype=torch.int32)
    y = O.linear_int8(x, packed, torch.ones(1), None, scale, zp, -128, 127)
    assert y.item() == float(torch.tensor(255 * 128 * k, dtype=torch.float64).float())
    raises(f"in_features ({k + 1}) is too large for exact int32 accumulation",
           lambda: O.linear_int8(torch.zeros(1, k + 1), O.pack_linear_weight(
               torch.zeros(1, k + 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), True),
               torch.ones(1), None, scale, zp, -128, 127))
    raises("input must have at least one feature",
           lambda: O.linear_int8(torch.zeros(3, 0), packed, torch.ones(1), None, None, None,
                                 -128, 127))


def test_cpu_and_meta_tensors_mixed_are_refused():
    meta = torch.ones(2, device="meta")
    raises("all tensors must be on one device",
           lambda: O.quantize_weight(torch.ones(2, 64), meta, torch.zeros(2, dtype=torch.int32),
                                     -8, 7))
    packed = O.pack_int_weight(torch.zeros(2, 8, dtype=torch.int8), 4, -8)
    raises("all tensors must be on one device",
           lambda: O.dequantize_weight(packed, torch.ones(2, 1, device="meta"),
                                       torch.zeros(2, 1, dtype=torch.int32), 4, -8, 8))
    raises("all tensors must be on one device",
           lambda: O.linear_weight_only(torch.randn(3, 8, device="meta"), packed, torch.ones(2, 1),
                                        torch.zeros(2, 1, dtype=torch.int32), 4, -8, None))
    raises("all tensors must be on one device",
           lambda: O.observer_histogram_update(torch.randn(10, device="meta"),
                                               torch.zeros(16, dtype=torch.int64),
                                               torch.tensor(float("inf")),
                                               torch.tensor(float("-inf"))))


def test_im2row_refuses_sizes_that_overflow():
    raises("padding must lie in [0, 2^31 - 1], got [2147483648, 1]",
           lambda: O.im2row(torch.randn(1, 1, 2, 2), [1, 1], [1, 1], [2 ** 31, 1], [1, 1]))
    raises("is too large",
           lambda: O.im2row(torch.randn(1, 1, 2, 2), [1, 1], [1, 1], [2 ** 31 - 1] * 2, [1, 1]))


def test_qparam_arguments_must_fit_float32_and_a_range():
    lo, hi = torch.tensor([-1.0]), torch.tensor([1.0])
    for eps in (1e-50, 1e39):
        raises(f"eps must be a normal float32 value (in [1.17549e-38, 3.40282e+38]), got {eps:g}",
               lambda: O.choose_qparams(lo, hi, -128, 127, False, eps))
    raises("quant_min (0) must be < quant_max (0) to choose a scale",
           lambda: O.choose_qparams(lo, hi, 0, 0, False, 1e-6))
    raises("quant_min (0) must be < quant_max (0)",
           lambda: qtorchext.MinMaxObserver(quant_min=0, quant_max=0)(torch.randn(4)))
    raises("grad_factor must be finite in float32, got 1e+39",
           lambda: qtorchext.fake_quantize_learnable_per_tensor_affine(
               torch.randn(4), torch.tensor([0.1]), torch.tensor([0.0]), -128, 127, 1e39))
    raises("percentile must lie in [50, 100]",
           lambda: O.histogram_percentile_range(torch.ones(8, dtype=torch.int64),
                                                torch.tensor(0.0), torch.tensor(1.0), 10.0, False))
    raises("percentile must lie in [50, 100]",
           lambda: qtorchext.PercentileObserver(percentile=10), ValueError)


@pytest.mark.parametrize("outlier", [1e20, -1e20, 3e38])
def test_histogram_widens_to_any_finite_outlier(outlier):
    obs = qtorchext.HistogramObserver(bins=2048)
    first = torch.rand(1000) * 1e-3
    obs(first)
    obs(torch.tensor([outlier, 5e-4]))
    assert obs.min_val <= min(outlier, first.min()) and obs.max_val >= max(outlier, first.max())
    assert int(obs.histogram.sum()) == 1002  # every count kept


def test_converted_layers_check_the_input_width():
    qm = qtorchext.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(64, 5)), "int8")
    # the layer op checks it (C++: the same message from qat::nn::Linear)
    raises("input must have in_features = 64 in its last dimension, got shape [3, 63]",
           lambda: qm(torch.randn(3, 63)), ValueError)
    conv = qtorchext.prepare_qat(torch.nn.Sequential(torch.nn.Conv2d(64, 8, 1)), "int8").eval()
    conv(torch.randn(2, 64, 3, 3))
    qc = qtorchext.convert(conv)
    raises("input must be [N, 64, ...] or unbatched [64, ...] with 2 spatial dimension(s), got "
           "shape [2, 63, 3, 3]", lambda: qc(torch.randn(2, 63, 3, 3)), ValueError)


def test_group_observer_names_an_input_it_cannot_group():
    raises("MinMaxObserver: group_size 3 does not divide the last dimension of an input of shape (10,)",
           lambda: qtorchext.MinMaxObserver(group_size=3)(torch.randn(10)), ValueError)
