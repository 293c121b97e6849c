"""Mixed precision under a size budget: the knapsack against brute force, the plan against
the model it is applied to, bad input."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import qtorchext
from qtorchext import _C
from qtorchext.nn import quantized


def brute_force(error, sizes, budget):
    best = None
    for choice in itertools.product(*[range(len(r)) for r in error]):
        b = sum(sizes[l][c] for l, c in enumerate(choice))
        e = sum(error[l][c] for l, c in enumerate(choice))
        if b <= budget and (best is None or e < best[0]):
            best = (e, b, choice)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_choose_precisions_finds_the_brute_force_optimum(seed):
    rng = random.Random(seed)
    n, c = 5, 3
    error = [[rng.uniform(0, 1) for _ in range(c)] for _ in range(n)]
    sizes = [[rng.randint(1, 900) for _ in range(c)] for _ in range(n)]
    lo = sum(min(r) for r in sizes)
    hi = sum(max(r) for r in sizes)
    for budget in (lo, (lo + hi) // 2, lo + (hi - lo) // 5, hi):
        option, nbytes, e = _C.choose_precisions(error, sizes, budget)
        ref = brute_force(error, sizes, budget)
        assert nbytes <= budget
        assert nbytes == sum(sizes[l][o] for l, o in enumerate(option))
        assert e == pytest.approx(ref[0], rel=1e-12)


def test_choose_precisions_with_coarse_buckets_stays_within_the_budget():
    rng = random.Random(7)
    error = [[rng.uniform(0, 1) for _ in range(4)] for _ in range(8)]
    sizes = [[rng.randint(10_000, 2_000_000) for _ in range(4)] for _ in range(8)]
    lo = sum(min(r) for r in sizes)
    for frac in (0.0, 0.1, 0.5, 1.0):
        budget = int(lo + frac * (sum(max(r) for r in sizes) - lo))
        option, nbytes, e = _C.choose_precisions(error, sizes, budget)
        ref = brute_force(error, sizes, budget)
        assert nbytes <= budget
        assert e <= ref[0] * 1.02 + 1e-12  # byte buckets: at most a little worse


def test_choose_precisions_below_the_smallest_total_is_an_error():
    with pytest.raises(RuntimeError, match="budget of 5 bytes is below the smallest possible "
                                           "total, 9 bytes"):
        _C.choose_precisions([[1.0, 2.0], [1.0, 3.0]], [[10, 5], [10, 4]], 5)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 128), nn.Linear(128, 16)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


def data(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 64, generator=g) for _ in range(n)]


def out_error(q, model, xs):
    with torch.no_grad():
        return sum(float((q(x) - model(x)).square().sum()) for x in xs) / \
            sum(float(model(x).square().sum()) for x in xs)


def test_plan_meets_the_budget_beats_uniform_int4_and_leaves_the_model_alone(tmp_path):
    torch.manual_seed(0)
    model = MLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal, held_out = data(0), data(1)
    png = tmp_path / "frontier.png"
    plan = qtorchext.mixed_precision(model, cal, budget=0.2, group_size=32, plot=str(png),
                                     progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert set(plan.presets) == {"fc1", "fc2", "fc3"} and plan[""] is None
    assert plan.bytes <= 0.2 * plan.float_bytes
    assert png.stat().st_size > 1000 and not list(tmp_path.glob("*.tmp*"))
    for row in plan.layers:  # more bits, less error, more bytes
        e, b = row["error"], row["candidate_bytes"]
        assert e["int8"] < e["int4_weight_only"] < e["int2_weight_only"]
        assert b["int8"] > b["int4_weight_only"] > b["int2_weight_only"] > b["w1a8"]
    # the plan applied: its layers' bytes are what it said
    q = qtorchext.quantize_static(model, cal, plan, progress=False)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, quantized._QuantizedLayer)}
    assert sum(sum(t.numel() * t.element_size() for t in m.state_dict().values())
               for m in layers.values()) == plan.bytes
    # against uniform int4 weight-only (0.17 of float here, within the budget too)
    uniform = qtorchext.quantize_dynamic(model, "int4_weight_only", group_size=32)
    assert out_error(q, model, held_out) < out_error(uniform, model, held_out)


def test_a_large_budget_takes_the_most_accurate_candidate_everywhere():
    model = MLP().eval()
    plan = qtorchext.mixed_precision(model, data(0), budget=1.0, progress=False)
    assert set(plan.presets.values()) == {"int8"}


def test_a_weight_only_plan_goes_through_quantize_dynamic():
    model = MLP().eval()
    plan = qtorchext.mixed_precision(model, data(0), budget=0.12,
                                     candidates=("int4_weight_only", "int2_weight_only"),
                                     group_size=64, progress=False)
    assert "int2_weight_only" in plan.presets.values()
    q = qtorchext.quantize_dynamic(model, plan)
    for name, preset in plan.presets.items():
        layer = getattr(q, name)
        assert isinstance(layer, quantized.Linear)
        bits = 4 if preset.startswith("int4") else 2
        assert layer.meta.describe().startswith(f"{bits}-bit weights in groups of 64")
    static = qtorchext.mixed_precision(model, data(0), budget=1.0, candidates=("int8",),
                                       progress=False)
    with pytest.raises(ValueError, match="calibrates its activations"):
        qtorchext.quantize_dynamic(model, static)


@pytest.mark.parametrize("kw, match", [
    (dict(budget=0.0), "budget .* must be a positive number, got 0.0"),
    (dict(budget=float("nan")), "budget"),
    (dict(candidates=()), "candidates must be a non-empty sequence"),
    (dict(candidates="int8"), "candidates must be a non-empty sequence"),
    (dict(candidates=("int8", "int3")), "candidate 'int3'"),
    (dict(budget=0.01), r"budget 0.01 \(\d+ of \d+ float bytes\) cannot be met: .*smallest "
                        "possible total"),
])
def test_bad_requests_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        qtorchext.mixed_precision(MLP().eval(), data(0), progress=False, **kw)


def test_empty_batches_are_an_error():
    with pytest.raises(ValueError, match="batches is empty"):
        qtorchext.mixed_precision(MLP().eval(), [], progress=False)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x, use_b=False):
        return self.b(x) if use_b else self.a(x)


def test_a_layer_the_batches_never_reach_is_an_error_not_a_free_choice():
    with pytest.raises(ValueError, match="never reach layer 'b'"):
        qtorchext.mixed_precision(Branchy().eval(), [torch.randn(4, 16)], progress=False)
