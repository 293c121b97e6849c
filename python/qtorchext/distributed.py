"""Observers kept consistent across torch.distributed ranks.

Under DistributedDataParallel each rank observes only its shard, so without help the ranks
end with different ranges, scales and zero points. ``sync_observers`` combines the
statistics of every min/max observer of a model (per tensor, per channel, per group; plain
and moving average) with one all-reduce: MAX over the packed [-min_val, max_val] of all of
them. Min and max (and a moving average's update ``old + c * (batch - old)``, which is
monotone in the batch value) commute with that reduction, so after it every rank holds, bit
for bit, the statistics one process would hold had it observed every rank's batch, and the
scales and zero points chosen from them.

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

import torch
import torch.nn as nn

from . import fake_quantize as fq
from . import observer as ob

__all__ = ["set_observer_sync", "sync_observers"]

_GROUPS: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()
_ATTR = "_qtorchext_observer_sync"


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def _world(dist, group) -> int:
    return dist.get_world_size(group) if dist is not None else 1


def _owners(model: nn.Module):
    """(quantizer, observer) of every quantizer whose observer is on; and the observers that
    cannot be combined yet (histogram, MSE), by path."""
    pairs, unsupported = [], []
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
            pairs.append((mod, obs))
        else:
            unsupported.append(f"{path} ({type(obs).__name__})")
    return pairs, unsupported


def _check_layout(dist, group, layout, device):
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
            "sync_observers: the ranks' models hold different observer statistics (number or "
            f"sizes: this rank has {len(layout) // 2} observers, {sum(layout)} entries); every "
            "rank must prepare the same model with the same qconfig and run the same layers")


def sync_observers(model: nn.Module, group=None) -> int:
    """Combines the statistics of ``model``'s min/max observers (those switched on) across
    the ranks of ``group`` (default: the world) with one all-reduce, and recomputes their
    quantizers' scales and zero points. A collective: every rank must call it. Returns the
    number of observers combined (0 without an initialised process group of 2+ ranks).
    Histogram and MSE observers are not combined yet (a warning names them)."""
    dist = _dist()
    if _world(dist, group) <= 1:
        return 0
    pairs, unsupported = _owners(model)
    if unsupported and not getattr(model, "_qtorchext_sync_warned", False):
        warnings.warn("sync_observers: these observers are not combined across ranks (only "
                      "min/max observers are, so far); each rank keeps its own statistics: "
                      + ", ".join(unsupported), stacklevel=2)
        object.__setattr__(model, "_qtorchext_sync_warned", True)
    if not pairs:
        return 0
    stats = [t for _, o in pairs for t in (o.min_val, o.max_val)]
    layout = tuple(t.numel() for t in stats)
    device = stats[0].device
    _check_layout(dist, group, layout, device)
    flat = torch.cat([(-t if i % 2 == 0 else t).reshape(-1).to(torch.float64)
                      for i, t in enumerate(stats)])
    # float64: every float32 value (and +-inf) exactly; MAX of -min is -(MIN of min)
    dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=group)
    offset = 0
    with torch.no_grad():
        for i, t in enumerate(stats):
            part = flat[offset:offset + t.numel()].reshape(t.shape)
            t.copy_(-part if i % 2 == 0 else part)
            offset += t.numel()
        for quantizer, _ in pairs:
            _refresh_qparams(quantizer)
    return len(pairs)


def _refresh_qparams(quantizer) -> None:
    """The scale and zero point the quantizer's forward would have chosen from its (now
    combined) statistics."""
    scale, zero_point = quantizer.calculate_qparams() if isinstance(
        quantizer, fq.FakeQuantize) else quantizer.activation_post_process.calculate_qparams()
    if isinstance(quantizer, fq.LearnableFakeQuantize):
        quantizer.scale.copy_(scale.reshape(quantizer.scale.shape))
        quantizer.zero_point.copy_(zero_point.reshape(quantizer.zero_point.shape))
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
