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
