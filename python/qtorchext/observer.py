"""Observers: modules that watch tensors and yield ``(scale, zero_point)``.

Statistics updates and the qparam formula are ``torch.ops.qtorchext`` ops shared
with the C++ observers (``include/qtorchext/observer.h``), which have the same
names, constructor options and state_dict keys:

=================================  ==========================================
observer                           state_dict keys
=================================  ==========================================
MinMaxObserver (+ per-channel,     ``min_val``, ``max_val``
moving average)
HistogramObserver,                 ``histogram`` (int64 counts), ``min_val``,
PercentileObserver                 ``max_val`` (the histogram's range)
MSEObserver                        ``min_val``, ``max_val``, ``num_batches``
=================================  ==========================================

Hard data: empty tensors are ignored; +-Inf values are skipped; NaN in an
observed CPU tensor raises (the statistics are left unchanged); constant and
all-zero tensors give valid qparams (the range always holds 0, scale >= eps).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

__all__ = [
    "HistogramObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "ObserverBase",
    "PerChannelMinMaxObserver",
    "PerTokenMinMaxObserver",
    "PercentileObserver",
]

_ops = torch.ops.qtorchext
EPS = torch.finfo(torch.float32).eps


class ObserverBase(nn.Module):
    """Common options of the observers.

    Args:
        quant_min, quant_max: integer range (quant_min <= 0 <= quant_max, within [-128, 255]).
        symmetric: symmetric qparams (zero point 0, or the middle of an unsigned range).
        ch_axis: per-channel statistics along this axis (None: per tensor).
        eps: the smallest scale.
        group_size: per-group statistics: groups of this many elements along the last dim.
    """

    def __init__(self, quant_min=0, quant_max=255, symmetric=False, ch_axis=None, eps=EPS,
                 group_size=None):
        super().__init__()
        # The qparam op validates the range and eps with clear errors.
        _ops.choose_qparams(torch.zeros(1), torch.zeros(1), quant_min, quant_max, symmetric, eps)
        if ch_axis is not None and group_size is not None:
            raise ValueError("ch_axis and group_size are exclusive")
        if group_size is not None and group_size <= 0:
            raise ValueError(f"group_size must be > 0, got {group_size}")
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.symmetric = symmetric
        self.ch_axis = ch_axis
        self.eps = eps
        self.group_size = group_size

    @classmethod
    def with_args(cls, **kwargs):
        """A factory with these arguments (for QConfig)."""
        factory = functools.partial(cls, **kwargs)
        factory.__name__ = cls.__name__  # type: ignore[attr-defined]
        return factory

    @property
    def per_channel(self) -> bool:
        return self.ch_axis is not None or self.group_size is not None

    def _stats_view(self, x: torch.Tensor):
        """(tensor, axis) the statistics are taken over."""
        if self.group_size is not None:
            if x.dim() == 0 or x.shape[-1] % self.group_size != 0:
                raise ValueError(f"{type(self).__name__}: group_size {self.group_size} does not "
                                 f"divide the last dimension of an input of shape "
                                 f"{tuple(x.shape)}")
            return x.reshape(-1, self.group_size), 0
        if self.ch_axis is not None and not -x.dim() <= self.ch_axis < x.dim():
            raise ValueError(f"{type(self).__name__}: ch_axis {self.ch_axis} is out of range for "
                             f"an input of shape {tuple(x.shape)}")
        return x, self.ch_axis

    def _qparams(self, min_val, max_val):
        return _ops.choose_qparams(
            min_val, max_val, self.quant_min, self.quant_max, self.symmetric, self.eps)

    def extra_repr(self) -> str:
        s = f"quant_min={self.quant_min}, quant_max={self.quant_max}, symmetric={self.symmetric}"
        if self.ch_axis is not None:
            s += f", ch_axis={self.ch_axis}"
        if self.group_size is not None:
            s += f", group_size={self.group_size}"
        return s

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Per-channel statistics are sized by the first batch: take the size
        # of the saved ones.
        for name, buf in self.named_buffers(recurse=False):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != buf.shape and self.per_channel:
                buf.resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _MinMaxBase(ObserverBase):
    averaging_constant = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        shape = (0,) if self.per_channel else ()
        self.register_buffer("min_val", torch.full(shape, math.inf))
        self.register_buffer("max_val", torch.full(shape, -math.inf))

    def _sized_stats(self, x):
        """The stats view of x, with per-channel buffers sized (to +-inf) on first use."""
        v, axis = self._stats_view(x)
        if axis is not None and self.min_val.numel() != v.shape[axis]:
            if self.min_val.numel() != 0:
                raise RuntimeError(
                    f"{type(self).__name__}: input has {v.shape[axis]} channels along axis "
                    f"{axis}, the statistics {self.min_val.numel()}")
            self.min_val.resize_(v.shape[axis]).fill_(math.inf)
            self.max_val.resize_(v.shape[axis]).fill_(-math.inf)
        return v, axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        v, axis = self._sized_stats(x.detach())
        _ops.observer_minmax_update(v, self.min_val, self.max_val, axis, self.averaging_constant)
        return x

    def calculate_qparams(self):
        return self._qparams(self.min_val, self.max_val)


class MinMaxObserver(_MinMaxBase):
    """Running min / max (per tensor, per channel with ``ch_axis`` or per group with
    ``group_size``); qparams as ``torch.ao.quantization.MinMaxObserver``."""


class MovingAverageMinMaxObserver(_MinMaxBase):
    """Moving average of batch min / max: the first batch is taken as is, later ones move
    the statistics by ``averaging_constant * (batch - running)``."""

    def __init__(self, averaging_constant=0.01, **kwargs):
        super().__init__(**kwargs)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must lie in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def extra_repr(self) -> str:
        return super().extra_repr() + f", averaging_constant={self.averaging_constant}"


class PerChannelMinMaxObserver(MinMaxObserver):
    """MinMaxObserver per channel (``ch_axis``, 0 by default)."""

    def __init__(self, ch_axis=0, **kwargs):
        super().__init__(ch_axis=ch_axis, **kwargs)


class MovingAveragePerChannelMinMaxObserver(MovingAverageMinMaxObserver):
    """MovingAverageMinMaxObserver per channel (``ch_axis``, 0 by default)."""

    def __init__(self, ch_axis=0, **kwargs):
        super().__init__(ch_axis=ch_axis, **kwargs)


class HistogramObserver(ObserverBase):
    """A histogram of everything observed, and the clipping range that minimises the
    expected squared quantization error (exhaustive L2 search; see
    ``torch.ops.qtorchext.histogram_search_range``). Per tensor.

    ``bins`` int64 counts (at most 2^22) of width 2^e over ``[min_val, max_val)`` =
    ``[m * 2^e, (m + bins) * 2^e)``: e is the smallest exponent (no finer than twice
    float32's spacing at the largest |x|) whose bins, starting at ``floor(min / 2^e)``,
    hold the smallest and largest value seen; a value counts in bin
    ``floor(x / 2^e) - m``, exactly. The state therefore depends only on the values seen,
    not on the order of the batches or how they were split: histograms counted apart (on
    data-parallel ranks) merge into exactly the state of one observer fed everything
    (``torch.ops.qtorchext.histogram_merge``). Values within about 2^e of float32's
    largest magnitude (3.4e38) count in the end bins, so that the range stays finite (there
    the merge keeps every count but is not promised exact)."""

    def __init__(self, bins=2048, **kwargs):
        super().__init__(**kwargs)
        if self.per_channel:
            raise ValueError(f"{type(self).__name__} is per tensor (no ch_axis / group_size)")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.int64))
        self.register_buffer("min_val", torch.tensor(math.inf))
        self.register_buffer("max_val", torch.tensor(-math.inf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        _ops.observer_histogram_update(x.detach(), self.histogram, self.min_val, self.max_val)
        return x

    # The state at the last synchronisation across torch.distributed ranks (what every
    # rank's histogram held then; None: nothing), so that sync_observers counts it once.
    # Not saved; a load makes the loaded state the base.
    _sync_base = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync_base = (self.histogram.clone(), self.min_val.clone(), self.max_val.clone())

    def clip_range(self):
        return _ops.histogram_search_range(
            self.histogram, self.min_val, self.max_val, self.quant_min, self.quant_max,
            self.symmetric)

    def calculate_qparams(self):
        return self._qparams(*self.clip_range())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bins={self.bins}"


class PercentileObserver(HistogramObserver):
    """Clips at a percentile of the observed values (of |x| when symmetric, else the
    (100 - p) and p quantiles), read from the same kind of histogram."""

    def __init__(self, percentile=99.99, bins=2048, **kwargs):
        super().__init__(bins=bins, **kwargs)
        if not 50 <= percentile <= 100:
            raise ValueError("percentile must lie in [50, 100] (the range keeps that share of "
                             f"the values), got {percentile}")
        self.percentile = percentile

    def clip_range(self):
        return _ops.histogram_percentile_range(
            self.histogram, self.min_val, self.max_val, self.percentile, self.symmetric)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", percentile={self.percentile}"


class MSEObserver(ObserverBase):
    """Per batch, the range ``alpha * [min, max]`` whose fake quantization has the least
    squared error (``candidates`` values of alpha, errors computed exactly); keeps the
    running mean of these ranges. Per tensor, per channel or per group."""

    def __init__(self, candidates=100, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= candidates <= 10000:
            raise ValueError(f"candidates must lie in [1, 10000], got {candidates}")
        self.candidates = candidates
        shape = (0,) if self.per_channel else ()
        self.register_buffer("min_val", torch.full(shape, math.inf))
        self.register_buffer("max_val", torch.full(shape, -math.inf))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))

    _sized_stats = _MinMaxBase._sized_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        v, axis = self._sized_stats(x.detach())
        _ops.observer_mse_update(v, self.min_val, self.max_val, self.num_batches,
                                 self.quant_min, self.quant_max, self.symmetric, axis,
                                 self.candidates)
        return x

    def calculate_qparams(self):
        return self._qparams(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", candidates={self.candidates}"


class PerTokenMinMaxObserver(ObserverBase):
    """Dynamic per-token ranges: one scale / zero point per row (all dims but the last) of
    the latest input, as dynamic quantization computes them at run time. Keeps no state."""

    def __init__(self, quant_min=-128, quant_max=127, symmetric=False, eps=EPS):
        super().__init__(quant_min=quant_min, quant_max=quant_max, symmetric=symmetric, eps=eps)
        self._last = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._last = _ops.choose_qparams_per_token(
            x.detach(), self.quant_min, self.quant_max, self.symmetric, self.eps)
        return x

    def calculate_qparams(self):
        if self._last is None:
            raise RuntimeError("PerTokenMinMaxObserver: observe a tensor first")
        return self._last
