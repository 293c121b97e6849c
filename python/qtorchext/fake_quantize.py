"""Fake quantizers: modules that simulate quantization in training.

All share two uint8 buffers, ``fake_quant_enabled`` and ``observer_enabled`` (so
they replicate under data parallelism and travel in state_dicts), with
``enable_*`` / ``disable_*`` methods. Forward decides from host-side copies of the
flags (kept in step by those methods and by ``load_state_dict``), so it never
reads a device value; the fused path passes the flag tensors to the op itself.
Names, options and state_dict keys are those of the C++ classes
(``include/qtorchext/fake_quantize.h``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .observer import (
    EPS,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)

__all__ = [
    "BinaryFakeQuantize",
    "DynamicFakeQuantize",
    "FakeQuantize",
    "FakeQuantizeBase",
    "FloatFakeQuantize",
    "LearnableFakeQuantize",
]

_ops = torch.ops.qtorchext
_FUSABLE = (MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMinMaxObserver,
            MovingAveragePerChannelMinMaxObserver)


class FakeQuantizeBase(nn.Module):
    """Flags and their switches."""

    def __init__(self):
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))
        self._fake_quant_on = True
        self._observer_on = True

    @classmethod
    def with_args(cls, **kwargs):
        """A factory with these arguments (for QConfig)."""
        factory = functools.partial(cls, **kwargs)
        factory.__name__ = cls.__name__  # type: ignore[attr-defined]
        return factory

    def enable_fake_quant(self, enabled: bool = True) -> FakeQuantizeBase:
        self.fake_quant_enabled.fill_(int(enabled))
        self._fake_quant_on = bool(enabled)
        return self

    def disable_fake_quant(self) -> FakeQuantizeBase:
        return self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> FakeQuantizeBase:
        self.observer_enabled.fill_(int(enabled))
        self._observer_on = bool(enabled)
        return self

    def disable_observer(self) -> FakeQuantizeBase:
        return self.enable_observer(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Per-channel qparams are sized by the first input: take the saved size (only
        # over a per-channel observer: per-tensor state keeps its shape, as in C++).
        obs = getattr(self, "activation_post_process", None)
        per_channel = bool(getattr(obs, "per_channel", False))
        for name, buf in self.named_buffers(recurse=False):
            key = prefix + name
            if (per_channel and key in state_dict and state_dict[key].shape != buf.shape
                    and buf.dim() == 1):
                buf.resize_(state_dict[key].shape)
        for name, param in self.named_parameters(recurse=False):
            key = prefix + name
            if (per_channel and key in state_dict and state_dict[key].shape != param.shape
                    and param.dim() == 1):
                param.data = torch.empty(state_dict[key].shape, dtype=param.dtype,
                                         device=param.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # One read of the loaded flags (at load time, not per step).
        self._fake_quant_on = bool(self.fake_quant_enabled.cpu()[0])
        self._observer_on = bool(self.observer_enabled.cpu()[0])


def round_scale(scale: torch.Tensor, dtype) -> torch.Tensor:
    """Scales rounded to nearest in ``dtype`` (None: unchanged), as float32, kept within
    that type's positive finite range."""
    if dtype is None:
        return scale
    info = torch.finfo(dtype)
    return scale.to(dtype).float().clamp(info.smallest_normal * info.eps, info.max)


class FakeQuantize(FakeQuantizeBase):
    """An observer (``activation_post_process``) and affine fake quantization with its
    qparams (buffers ``scale``, float32, and ``zero_point``, int32): per tensor, per channel
    (observer ``ch_axis``) or per group (observer ``group_size``).

    With a min/max or moving-average observer (per tensor or channel) forward runs one fused
    op (observe, choose qparams, fake-quantize); ``fused=False`` runs the same steps as
    separate ops, with bit-identical results.

    ``scale_dtype`` (torch.float16 or torch.bfloat16): the observer's scales are rounded to
    that type (kept as float32 values), so a converted model stores them in it exactly: per
    group of 32 int4 weights, 2 bytes of scale instead of 4.
    """

    def __init__(self, observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                 fused=True, scale_dtype=None, **observer_kwargs):
        super().__init__()
        self.activation_post_process = observer(
            quant_min=quant_min, quant_max=quant_max, **observer_kwargs)
        obs = self.activation_post_process
        self.quant_min, self.quant_max = obs.quant_min, obs.quant_max
        self.ch_axis, self.group_size = obs.ch_axis, obs.group_size
        if scale_dtype in (None, torch.float32):
            scale_dtype = None
        elif scale_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"scale_dtype must be None, torch.float16 or torch.bfloat16, got "
                             f"{scale_dtype}")
        self.scale_dtype = scale_dtype
        self.fused = (fused and isinstance(obs, _FUSABLE) and obs.group_size is None
                      and scale_dtype is None)
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))

    def calculate_qparams(self):
        scale, zero_point = self.activation_post_process.calculate_qparams()
        return round_scale(scale, self.scale_dtype), zero_point

    def _size_qparams(self, like):
        if self.scale.shape != like.shape:
            self.scale.resize_(like.shape).fill_(1.0)
            self.zero_point.resize_(like.shape).zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        obs = self.activation_post_process
        if self.fused:
            obs._sized_stats(x)
            self._size_qparams(obs.min_val.reshape(-1))
        # With the observer off the fused op only fake-quantizes: the separate ops below give
        # the same values and, unlike the fused op, mutate nothing (ONNX export takes them).
        if self.fused and self._observer_on:
            return _ops.fused_observe_fake_quantize(
                x, self.observer_enabled, self.fake_quant_enabled, obs.min_val, obs.max_val,
                self.scale, self.zero_point, self.quant_min, self.quant_max, obs.symmetric,
                obs.eps, self.ch_axis, obs.averaging_constant)
        if self._observer_on and x.numel() > 0:
            obs(x.detach())
            scale, zero_point = self.calculate_qparams()
            self._size_qparams(scale)
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if not self._fake_quant_on:
            return x
        if self.group_size is not None:
            groups = x.shape[:-1] + (x.shape[-1] // self.group_size,)
            return _ops.fake_quantize_per_group(
                x, self.scale.reshape(groups), self.zero_point.reshape(groups), self.group_size,
                self.quant_min, self.quant_max)
        if self.ch_axis is not None:
            return _ops.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max)
        return _ops.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max)

    def extra_repr(self) -> str:
        s = f"fused={self.fused}, quant_min={self.quant_min}, quant_max={self.quant_max}"
        return s + (f", scale_dtype={self.scale_dtype}" if self.scale_dtype else "")


class LearnableFakeQuantize(FakeQuantizeBase):
    """LSQ: ``scale`` and ``zero_point`` are parameters trained by gradient descent.

    While ``observer_enabled`` (the first ``init_steps`` forward calls in training mode, then
    it switches itself off; ``init_steps=0`` or ``None``: never, as C++'s init_steps(0)),
    the observer's qparams are copied into the parameters; afterwards
    only gradients move them. The gradient scale is LSQ's 1 / sqrt(elements per scale *
    quant_max) when ``use_grad_scaling``. ``channel_len`` sizes per-channel parameters up
    front (else the first input does); the scale is kept >= eps.
    """

    def __init__(self, observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                 init_steps=1, use_grad_scaling=True, channel_len=None, **observer_kwargs):
        super().__init__()
        self.activation_post_process = observer(
            quant_min=quant_min, quant_max=quant_max, **observer_kwargs)
        obs = self.activation_post_process
        if obs.group_size is not None:
            raise ValueError("LearnableFakeQuantize is per tensor or per channel")
        self.quant_min, self.quant_max, self.ch_axis = obs.quant_min, obs.quant_max, obs.ch_axis
        if init_steps is not None and (not isinstance(init_steps, int) or init_steps < 0):
            raise ValueError(f"init_steps must be a non-negative integer or None, got {init_steps!r}")
        self.init_steps = init_steps
        self.use_grad_scaling = use_grad_scaling
        n = channel_len if (channel_len is not None and self.ch_axis is not None) else 1
        self.scale = nn.Parameter(torch.ones(n))
        self.zero_point = nn.Parameter(torch.zeros(n))
        self._steps = 0

    def _resize(self, n: int):
        if self.scale.numel() != n:
            self.scale.data = torch.ones(n, device=self.scale.device)
            self.zero_point.data = torch.zeros(n, device=self.zero_point.device)

    def calculate_qparams(self):
        return self.scale.detach(), self.zero_point.detach().round().clamp(
            self.quant_min, self.quant_max).to(torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ch_axis is not None:
            self._resize(x.shape[self.ch_axis])
        if self._observer_on and x.numel() > 0:
            obs = self.activation_post_process
            obs(x.detach())
            # sync_observers combines this observation even if init_steps ends below
            self._observed_since_sync = True
            scale, zero_point = obs.calculate_qparams()
            with torch.no_grad():
                self.scale.copy_(scale.reshape(self.scale.shape))
                self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))
            if self.training:
                self._steps += 1
                if self.init_steps and self._steps >= self.init_steps:
                    self.disable_observer()
        with torch.no_grad():
            self.scale.clamp_(min=self.activation_post_process.eps)
        if not self._fake_quant_on:
            return x
        per_scale = x.numel() // self.scale.numel()
        grad_factor = (1.0 / math.sqrt(max(per_scale, 1) * max(self.quant_max, 1))
                       if self.use_grad_scaling else 1.0)
        if self.ch_axis is not None:
            return _ops.fake_quantize_learnable_per_channel_affine(
                x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max,
                grad_factor)
        return _ops.fake_quantize_learnable_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max, grad_factor)


class BinaryFakeQuantize(FakeQuantizeBase):
    """1-bit weights: ``alpha * sign(x)`` with alpha = mean |x| per channel (``ch_axis``) or
    per tensor (``ch_axis=None``), computed from x each step (gradients flow through alpha
    too), and the clipped straight-through gradient (|x| <= ``clip``)."""

    def __init__(self, ch_axis=0, clip=1.0):
        super().__init__()
        self.ch_axis = ch_axis
        self.clip = clip

    def calculate_qparams(self):
        raise RuntimeError("BinaryFakeQuantize has no stored qparams: alpha = mean |x| of its "
                           "input (torch.ops.qtorchext.binary_scale)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fake_quant_on:
            return x
        alpha = _ops.binary_scale(x, self.ch_axis)
        return _ops.binarize(x, alpha, 0 if self.ch_axis is None else self.ch_axis, self.clip)

    def extra_repr(self) -> str:
        return f"ch_axis={self.ch_axis}, clip={self.clip}"


class FloatFakeQuantize(FakeQuantizeBase):
    """Rounds to float16 or bfloat16 and back (straight-through gradient)."""

    def __init__(self, dtype=torch.float16):
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fake_quant_on:
            return x
        return _ops.fake_cast(x, self.dtype)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


class DynamicFakeQuantize(FakeQuantizeBase):
    """Per-token dynamic activation quantization: one scale / zero point per row (all dims
    but the last) computed from each input, as dynamic int8 layers do at run time. No state.
    """

    def __init__(self, quant_min=-128, quant_max=127, symmetric=False, eps=EPS):
        super().__init__()
        _ops.choose_qparams(torch.zeros(1), torch.zeros(1), quant_min, quant_max, symmetric, eps)
        self.quant_min, self.quant_max = quant_min, quant_max
        self.symmetric, self.eps = symmetric, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fake_quant_on or x.numel() == 0:
            return x
        scale, zero_point = _ops.choose_qparams_per_token(
            x.detach(), self.quant_min, self.quant_max, self.symmetric, self.eps)
        rows = x.reshape(-1, x.shape[-1])
        return _ops.fake_quantize_per_channel_affine(
            rows, scale.reshape(-1), zero_point.reshape(-1), 0, self.quant_min,
            self.quant_max).reshape(x.shape)

    def extra_repr(self) -> str:
        return (f"quant_min={self.quant_min}, quant_max={self.quant_max}, "
                f"symmetric={self.symmetric}")
