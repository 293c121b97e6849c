"""Observers kept consistent across torch.distributed ranks.

Under DistributedDataParallel each rank observes only its shard, so without help the ranks
end with different ranges, scales and zero points. ``sync_observers`` combines them:

- min/max observers (per tensor, per channel, per group; plain and moving average): one
  all-reduce, MAX over the packed [-min_val, max_val] of all of them. Min and max (and a
  moving average's update ``old + c * (batch - old)``, monotone in the batch value) commute
  with that reduction, so every rank then holds, bit for bit, the statistics one process
  would hold had it observed every rank's batch;
- histogram and percentile observers: their grid depends only on the values seen
  (``HistogramObserver``), so ``histogram_merge`` turns the ranks' histograms (one
  all-gather) into, bit for bit, the histogram one observer fed every rank's values holds;
  the state of the previous synchronisation, which every rank started from, counts once;
- MSE observers: the ranks' running means of their per-batch best ranges, weighted by
  batch counts (same all-gather). Each rank searched its own shard, so this is consistent
  on all ranks but not one process's search over whole batches;

and then the scales and zero points chosen from the combined statistics.

Within the step itself each rank's fake quantization already used its own updated
statistics (the fused observe-and-quantize of torch.ao semantics): the activations a later
layer observes are those of that rank. Quantizers fed the model's input and weight
quantizers match one process exactly; later activation quantizers match up to what those
local qparams changed in that step.

``prepare_qat`` and ``prepare`` turn the per-step synchronisation on: after each forward
in training mode, when a process group of more than one rank is initialised.
``calibrate`` synchronises after every batch. Each synchronisation is a collective (a
6-entry signature, then the statistics): every rank must run the same training-mode
forwards and calibration batches. A forward on one rank alone (a sanity check in training
mode, uneven inputs under DDP's ``join``) blocks; turn the synchronisation off for it
(``set_observer_sync(model, False)``), or name the replicas' process group. Per-group
statistics of activations are per row of each rank's own batch: under data parallelism
quantize only weights per group. A deep copy keeps the setting but not a named group (it
uses the default group).
"""
from __future__ import annotations

import warnings
import weakref
import zlib

import torch
import torch.nn as nn

from . import fake_quantize as fq
from . import observer as ob

__all__ = ["set_observer_sync", "sync_observers"]

_ops = torch.ops.qtorchext

_GROUPS: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()
_ATTR = "_qtorchext_observer_sync"


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def _world(dist, group) -> int:
    return dist.get_world_size(group) if dist is not None else 1


def _owners(model: nn.Module):
    """The quantizers whose observer is on, by kind of statistics: min/max ([quantizer,
    observer] pairs combined by MIN / MAX), histograms (merged by histogram_merge), MSE
    ranges (averaged); and the observers that cannot be combined, by path."""
    minmax, hist, mse, unsupported = [], [], [], []
    for path, mod in model.named_modules():
        if not isinstance(mod, (fq.FakeQuantize, fq.LearnableFakeQuantize)):
            continue
        # a learnable quantizer's forward that ends init_steps observes, then switches its
        # observer off: that observation is combined too
        if not mod._observer_on and not getattr(mod, "_observed_since_sync", False):
            continue
        mod._observed_since_sync = False
        obs = mod.activation_post_process
        if isinstance(obs, ob._MinMaxBase):
            minmax.append((mod, obs))
        elif isinstance(obs, ob.HistogramObserver):
            hist.append((mod, obs))
        elif isinstance(obs, ob.MSEObserver):
            mse.append((mod, obs))
        else:
            unsupported.append(f"{path} ({type(obs).__name__})")
    return minmax, hist, mse, unsupported


def _check_layout(dist, group, layout, device, described):
    """Every rank must pack the same statistics: a 6-entry all-reduce before the statistics
    (count, entries and a hash of the sizes; MAX of [sig, -sig] equals it only if all ranks
    agree), so ranks whose models differ fail clearly instead of mixing numbers."""
    h = 1469598103934665603
    for n in layout:
        h = ((h ^ n) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    sig = torch.tensor([len(layout), sum(layout), h & 0x7FFFFFFF], dtype=torch.float64,
                       device=device)
    both = torch.cat([sig, -sig])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    if not (torch.equal(both[:3], sig) and torch.equal(both[3:], -sig)):
        raise RuntimeError(
            "sync_observers: the ranks' models hold different observer statistics (number, "
            f"sizes or, for histograms, the state of the last synchronisation; this rank has "
            f"{described}); every rank must prepare the same model with the same qconfig, load "
            "the same checkpoints and run the same layers")


def _base_digest(obs) -> int:
    """A 31-bit digest of a histogram observer's sync base (0: none), so that ranks whose
    bases differ (a checkpoint loaded on one rank only) fail instead of mixing numbers."""
    if obs._sync_base is None:
        return 0
    h, lo, hi = (t.detach().cpu() for t in obs._sync_base)
    return 1 + zlib.crc32(h.numpy().tobytes() + lo.numpy().tobytes() + hi.numpy().tobytes()) \
        % 0x7FFFFFFE


def _gathered_parts(hist, mse):
    """What each rank sends for its histogram and MSE observers (float64 holds every
    float32 value and every count below 2^53 exactly)."""
    parts = []
    for _, o in hist:
        parts += [o.histogram, o.min_val.reshape(1), o.max_val.reshape(1)]
    for _, o in mse:
        parts += [o.num_batches.reshape(1), o.min_val.reshape(-1), o.max_val.reshape(-1)]
    return parts


def _combine_gathered(rows, hist, mse):
    """rows [world, entries] (every rank's parts, in rank order) -> each histogram merged
    into what one observer fed every rank's values holds (histogram_merge; the state of the
    last synchronisation, which every rank started from, counted once), each MSE range the
    ranks' running means weighted by their batch counts. The same arithmetic on the same
    rows on every rank: bit-identical results."""
    offset = 0

    def take(n):
        nonlocal offset
        offset += n
        return rows[:, offset - n:offset]

    with torch.no_grad():
        for _, o in hist:
            counts = take(o.histogram.numel()).to(torch.int64)
            lo, hi = take(1).reshape(-1).float(), take(1).reshape(-1).float()
            base = [None] * 3 if o._sync_base is None else \
                [t.to(counts.device) for t in o._sync_base]
            h, mn, mx = _ops.histogram_merge(counts, lo, hi, *base)
            o.histogram.copy_(h)
            o.min_val.copy_(mn.reshape(o.min_val.shape))
            o.max_val.copy_(mx.reshape(o.max_val.shape))
            o._sync_base = (o.histogram.clone(), o.min_val.clone(), o.max_val.clone())
        for _, o in mse:
            n = take(1).reshape(-1)
            k = o.min_val.numel()
            mins, maxs = take(k), take(k)
            total = n.sum()
            if total > 0:
                w = (n / total).unsqueeze(1)
                # ranks that saw nothing (weight 0, statistics +-inf) take no part
                mins = torch.where(w > 0, mins * w, torch.zeros_like(mins)).sum(0)
                maxs = torch.where(w > 0, maxs * w, torch.zeros_like(maxs)).sum(0)
                o.min_val.copy_(mins.reshape(o.min_val.shape))
                o.max_val.copy_(maxs.reshape(o.max_val.shape))
            o.num_batches.fill_(int(n.max()))


def sync_observers(model: nn.Module, group=None) -> int:
    """Combines the statistics of ``model``'s observers (those switched on) across the
    ranks of ``group`` (default: the world) and recomputes their quantizers' scales and zero
    points. Min/max observers (per tensor, channel, group; plain and moving average) take
    the MIN / MAX over the ranks in one all-reduce; histogram and percentile observers are
    merged onto the grid one observer fed every rank's values would hold (bit for bit that
    observer's state); MSE observers take the ranks' running means, weighted by their batch
    counts (each rank searched its own shard: consistent on all ranks, not one process's
    search over the whole batch). Histograms and MSE ranges travel in one all-gather. A
    collective: every rank must call it. Returns the number of observers combined (0
    without an initialised process group of 2+ ranks)."""
    dist = _dist()
    if _world(dist, group) <= 1:
        return 0
    minmax, hist, mse, unsupported = _owners(model)
    if unsupported and not getattr(model, "_qtorchext_sync_warned", False):
        warnings.warn("sync_observers: these observers are not combined across ranks; each "
                      "rank keeps its own statistics: " + ", ".join(unsupported), stacklevel=2)
        object.__setattr__(model, "_qtorchext_sync_warned", True)
    stats = [t for _, o in minmax for t in (o.min_val, o.max_val)]
    gathered = _gathered_parts(hist, mse)
    # the observers of each kind counted too: the same sizes under other observers fail
    layout = (tuple(t.numel() for t in stats) + tuple(t.numel() for t in gathered)
              + (len(minmax), len(hist), len(mse))
              + tuple(_base_digest(o) for _, o in hist))
    # the check runs even with nothing to combine: a rank whose observers are off while
    # another's are on fails with the others instead of leaving them waiting
    anchor = stats or gathered or list(model.buffers()) or [torch.empty(0)]
    _check_layout(dist, group, layout, anchor[0].device,
                  f"{len(minmax)} min/max, {len(hist)} histogram and {len(mse)} MSE observers")
    with torch.no_grad():
        if stats:
            flat = torch.cat([(-t if i % 2 == 0 else t).reshape(-1).to(torch.float64)
                              for i, t in enumerate(stats)])
            # float64: every float32 value (and +-inf) exactly; MAX of -min is -(MIN of min)
            dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=group)
            offset = 0
            for i, t in enumerate(stats):
                part = flat[offset:offset + t.numel()].reshape(t.shape)
                t.copy_(-part if i % 2 == 0 else part)
                offset += t.numel()
        if gathered:
            mine = torch.cat([t.reshape(-1).to(torch.float64) for t in gathered])
            rows = [torch.empty_like(mine) for _ in range(_world(dist, group))]
            dist.all_gather(rows, mine, group=group)
            _combine_gathered(torch.stack(rows), hist, mse)
        for quantizer, _ in minmax + hist + mse:
            _refresh_qparams(quantizer)
    return len(minmax) + len(hist) + len(mse)


def _refresh_qparams(quantizer) -> None:
    """The scale and zero point the quantizer's forward would have chosen from its (now
    combined) statistics."""
    scale, zero_point = quantizer.calculate_qparams() if isinstance(
        quantizer, fq.FakeQuantize) else quantizer.activation_post_process.calculate_qparams()
    if isinstance(quantizer, fq.LearnableFakeQuantize):
        # through .data: the step's learnable op saved the parameters for its backward,
        # which an in-place copy on them would refuse
        quantizer.scale.data.copy_(scale.reshape(quantizer.scale.shape))
        quantizer.zero_point.data.copy_(zero_point.reshape(quantizer.zero_point.shape))
        return
    if quantizer.scale.numel() != scale.numel():
        quantizer._size_qparams(scale.reshape(-1))
    quantizer.scale.copy_(scale.reshape(quantizer.scale.shape))
    quantizer.zero_point.copy_(zero_point.reshape(quantizer.zero_point.shape))


def set_observer_sync(model: nn.Module, enabled: bool = True, group=None) -> nn.Module:
    """Turns the per-step synchronisation of ``model``'s observers across torch.distributed
    ranks on (``group``: a process group, default the world) or off. ``prepare_qat`` and
    ``prepare`` turn it on. It runs after each forward of ``model`` in training mode while a
    process group of 2+ ranks is initialised."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"set_observer_sync: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    object.__setattr__(model, _ATTR, bool(enabled))
    if group is None:
        _GROUPS.pop(model, None)
    else:
        _GROUPS[model] = group
    if not any(h is _after_forward for h in model._forward_hooks.values()):
        model.register_forward_hook(_after_forward)
    return model


def _group_of(model: nn.Module):
    return _GROUPS.get(model)


def _after_forward(module: nn.Module, args, output) -> None:
    if not getattr(module, _ATTR, False) or not module.training:
        return
    if _dist() is None:
        return
    sync_observers(module, _group_of(module))


def calibration_sync(model: nn.Module) -> None:
    """calibrate's synchronisation after each batch (eval mode)."""
    if getattr(model, _ATTR, False) and _dist() is not None:
        sync_observers(model, _group_of(model))
