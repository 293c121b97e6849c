"""Observers combined across torch.distributed ranks (gloo, two processes on 127.0.0.1):
ranks fed different halves with different ranges end with bit-identical observer state,
scales and zero points; where the statistics do not depend on the step's own fake
quantization (the input's and the weights' quantizers, a one-layer model) they equal those
of one process fed the whole batches; with the synchronisation off they differ (the test
can fail); a DDP QAT run keeps every quantizer identical, and rank 0's checkpoint loads on
both ranks with identical outputs."""

import copy
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import qtorchext as q

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch has no torch.distributed with gloo")

WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(step, rank=None):
    """Step `step`'s whole batch, or rank `rank`'s half of it (different ranges)."""
    g = torch.Generator().manual_seed(100 + step)
    # rank 0's half reaches the largest values, rank 1's (10x wider) the smallest: each
    # rank alone sees half of the whole range
    whole = torch.cat([torch.rand(4, 16, generator=g) * 5,
                       -10 * torch.rand(4, 16, generator=g) + 1])
    return whole if rank is None else whole[4 * rank:4 * (rank + 1)]


class Net(nn.Module):
    def __init__(self, layers=2):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(16, 16) for _ in range(layers)])

    def forward(self, x):
        return self.layers(x)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _prepared(layers, qconfig="int8"):
    torch.manual_seed(0)
    return q.prepare_qat(Net(layers).train(), qconfig)


def _observe(model, rank, steps=3):
    with torch.no_grad():
        for s in range(steps):
            model(_batches(s, rank))


def _train(model, rank, steps=3):
    """`steps` SGD steps of model (wrapped by DDP / FSDP or not) on rank `rank`'s halves
    (None: the whole batches)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for s in range(steps):
        loss = model(_batches(s, rank)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank, port, folder, case):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)
        out = {}
        if case == "observe":
            for layers, qconfig in ((1, "int8"), (2, "int8"), (2, "w4a8"), (2, "lsq_w4a4")):
                model = _prepared(layers, qconfig)
                _observe(model, rank)
                out[f"{layers}-{qconfig}"] = _state(model)
            off = q.set_observer_sync(_prepared(1), False)
            _observe(off, rank)
            out["off"] = _state(off)
            # a named process group (here: both ranks again)
            grouped = q.set_observer_sync(_prepared(1), True, group=dist.new_group([0, 1]))
            _observe(grouped, rank)
            out["group"] = _state(grouped)
            # ranks whose models differ: a clear error on both, no mixed numbers
            try:
                _observe(_prepared(1 + rank), rank, steps=1)
                out["mismatch"] = ""
            except RuntimeError as e:
                out["mismatch"] = str(e)
        elif case == "ddp":
            model = _prepared(2, "int8")
            _train(nn.parallel.DistributedDataParallel(model), rank, steps=4)
            out["trained"] = _state(model)
            path = os.path.join(folder, "ckpt.pt")
            if rank == 0:
                torch.save(model.state_dict(), path)
            dist.barrier()
            fresh = _prepared(2, "int8")
            fresh.load_state_dict(torch.load(path))
            q.disable_observer(fresh.eval())
            q.disable_observer(model.eval())
            with torch.no_grad():
                out["loaded_output"] = fresh(_batches(9))
                out["own_output"] = model(_batches(9))
            # learnable quantizers: the sync after the forward that initialises them must
            # leave that forward's backward working
            lsq = _prepared(2, "lsq_w4a4")
            _train(nn.parallel.DistributedDataParallel(lsq), rank)
            out["lsq"] = _state(lsq)
        elif case == "digits":
            out.update(_digits_qat(folder, rank))
        elif case == "calibrate":
            torch.manual_seed(0)
            model = q.prepare(Net(1).eval(), q.QConfig(
                activation=q.FakeQuantize.with_args(observer=q.MovingAverageMinMaxObserver),
                weight=q.qconfig("int8").weight))
            q.calibrate(model, [_batches(s, rank) for s in range(3)], progress=False)
            out["calibrated"] = _state(model)
        elif case == "fsdp":
            out.update(_fsdp_qat(rank))
        elif case == "calibrate_hist":
            out.update(_calibrate_hist(rank))
        torch.save(out, os.path.join(folder, f"{case}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _fsdp_qat(rank):
    """Three QAT steps of the two-layer int8 model under FSDP2 (fully_shard per layer and at
    the root, a CPU device mesh over gloo): the parameters are sharded across the ranks,
    the observers' buffers are not, and the synchronisation keeps them identical."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (WORLD,))
    model = _prepared(2, "int8")
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    _train(model, rank)
    sharded = {k for k, v in model.state_dict().items() if hasattr(v, "full_tensor")}
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
             for k, v in model.state_dict().items()}
    return {"state": state, "sharded": sorted(sharded)}


_HIST_OBSERVERS = {"histogram": q.HistogramObserver, "percentile": q.PercentileObserver,
                   "mse": q.MSEObserver}


def _calibrated(observer, rank, steps=(0, 1, 2), layers=1, start=None):
    """A PTQ model (activations by `observer`) calibrated on `steps` (rank `rank`'s halves,
    or, for rank None, whole batches without synchronisation), from the state `start`
    when given."""
    torch.manual_seed(0)
    qconfig = "int8" if observer is None else q.QConfig(
        activation=q.FakeQuantize.with_args(observer=observer, quant_min=0, quant_max=255),
        weight=q.qconfig("int8").weight)
    model = q.prepare(Net(layers).eval(), qconfig)
    if start is not None:
        model.load_state_dict(start)
    if rank is None:
        q.set_observer_sync(model, False)
    q.calibrate(model, [_batches(s, rank) for s in steps], progress=False)
    return model


def _calibrate_hist(rank):
    out = {name: _state(_calibrated(obs, rank)) for name, obs in _HIST_OBSERVERS.items()}
    out["preset-2"] = _state(_calibrated(None, rank, layers=2))
    # both ranks load the same checkpoint, then calibrate on: it counts once
    start = _state(_calibrated(q.HistogramObserver, None, steps=(5,)))
    out["resumed"] = _state(_calibrated(q.HistogramObserver, rank, start=start))
    # a checkpoint loaded on rank 0 only: both ranks refuse to mix
    try:
        _calibrated(q.HistogramObserver, rank, start=start if rank == 0 else None)
        out["base_mismatch"] = ""
    except RuntimeError as e:
        out["base_mismatch"] = str(e)
    return out


def _digits():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python",
                        "qat_digits.py")
    spec = importlib.util.spec_from_file_location("qat_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _digits_qat(folder, rank=None, epochs=2):
    """QAT int8 fine-tuning of the digits CNN from the float weights in `folder`: under
    DDP (rank r takes half of every batch of 32) or, rank None, in one process. Returns the
    converted model's test accuracy and its state."""
    d = _digits()
    data = torch.load(os.path.join(folder, "digits.pt"))
    torch.manual_seed(1)
    net = d.Net()
    net.load_state_dict(data["float"])
    net = q.fuse_modules(net, [["conv1", "bn1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"]])
    net = q.prepare_qat(net.train(), "int8")
    # BatchNorm statistics frozen (each rank's would follow its half batches: torch's own
    # DDP behaviour, SyncBatchNorm's business, not the observers')
    q.freeze_bn_stats(net)
    model = net if rank is None else nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = data["x"], data["y"]
    g = torch.Generator().manual_seed(2)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - 31, 32):
            idx = order[i:i + 32]
            if rank is not None:
                idx = idx[rank::WORLD]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    converted = q.convert(q.disable_observer(net).eval())
    return {"accuracy": d.accuracy(converted, data["xt"], data["yt"]),
            "converted": _state(converted)}


def _run(case, folder=None):
    if folder is not None:
        return _spawn(case, folder)
    with tempfile.TemporaryDirectory() as folder:
        return _spawn(case, folder)


def _spawn(case, folder):
    mp.start_processes(_worker, args=(_free_port(), folder, case), nprocs=WORLD, join=True,
                       start_method="spawn")
    return [torch.load(os.path.join(folder, f"{case}-{r}.pt")) for r in range(WORLD)]


def _quantizer_entries(state):
    return {k: v for k, v in state.items()
            if "fake_quant" in k and not k.endswith(("_enabled",))}


def _assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def observed():
    return _run("observe")


@pytest.mark.parametrize("key", ["1-int8", "2-int8", "2-w4a8", "2-lsq_w4a4", "group"])
def test_ranks_hold_identical_observer_state(observed, key):
    r0, r1 = observed[0][key], observed[1][key]
    _assert_equal_states(r0, r1)
    # the range of both halves: max from rank 0's, min from rank 1's
    stats = "layers.0.input_fake_quant.activation_post_process."
    assert float(r0[stats + "max_val"]) > 2 and float(r0[stats + "min_val"]) < -4


def test_learnable_quantizers_take_the_combined_initialisation(observed):
    # LSQ: the first forward initialises scale / zero point from its observer and switches
    # the observer off; that observation is combined too
    single = _prepared(2, "lsq_w4a4")
    _observe(single, None)
    want = _state(single)["layers.0.input_fake_quant.scale"]
    assert torch.equal(observed[0]["2-lsq_w4a4"]["layers.0.input_fake_quant.scale"], want)


def test_ranks_with_different_models_fail_clearly(observed):
    for r in observed:
        assert "hold different observer statistics" in r["mismatch"], r["mismatch"]


def test_one_layer_equals_one_process_fed_the_whole_batches(observed):
    single = _prepared(1)
    _observe(single, None)  # no process group: each whole batch in one process
    _assert_equal_states(observed[0]["1-int8"], _state(single))


def test_first_quantizers_equal_one_process_in_a_deeper_model(observed):
    single = _prepared(2)
    _observe(single, None)
    want = _state(single)
    for k, v in observed[0]["2-int8"].items():
        if k.startswith(("layers.0.", "layers.1.weight_fake_quant")):
            assert torch.equal(v, want[k]), k
    # the second layer's input was computed with each rank's own input qparams of that
    # step: its range differs from one process's, slightly (measured 0.2%)
    scale = "layers.1.input_fake_quant.scale"
    got = observed[0]["2-int8"][scale]
    assert not torch.equal(got, want[scale])
    assert float((got - want[scale]).abs() / want[scale]) < 1e-2


def test_without_the_synchronisation_the_ranks_differ(observed):
    a, b = _quantizer_entries(observed[0]["off"]), _quantizer_entries(observed[1]["off"])
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_ddp_qat_keeps_quantizers_identical_and_rank0_checkpoint_loads_everywhere():
    r0, r1 = _run("ddp")
    _assert_equal_states(r0["trained"], r1["trained"])
    _assert_equal_states(r0["lsq"], r1["lsq"])  # LSQ trained under DDP, backward included
    # rank 0's file reproduces what each rank trained
    for r in (r0, r1):
        assert torch.equal(r["loaded_output"], r["own_output"])


def test_calibration_combines_the_ranks():
    r0, r1 = _run("calibrate")
    _assert_equal_states(r0["calibrated"], r1["calibrated"])
    torch.manual_seed(0)
    single = q.prepare(Net(1).eval(), q.QConfig(
        activation=q.FakeQuantize.with_args(observer=q.MovingAverageMinMaxObserver),
        weight=q.qconfig("int8").weight))
    q.calibrate(single, [_batches(s) for s in range(3)], progress=False)
    _assert_equal_states(r0["calibrated"], _state(single))


def test_without_a_process_group_nothing_happens():
    model = _prepared(1)
    _observe(model, None, steps=1)
    before = _state(model)
    assert q.sync_observers(model) == 0
    _assert_equal_states(before, _state(model))
    # a copy keeps the setting and the hook
    from qtorchext import distributed
    twin = copy.deepcopy(model)
    assert twin._qtorchext_observer_sync
    assert any(h is distributed._after_forward for h in twin._forward_hooks.values())


def test_ddp_qat_of_the_digits_cnn_matches_one_process(tmp_path):
    d = _digits()
    torch.manual_seed(0)
    x, y, xt, yt = d.load()
    net = d.Net()
    d.train(net, x, y, epochs=4, lr=0.05)
    torch.save({"float": net.state_dict(), "x": x, "y": y, "xt": xt, "yt": yt},
               tmp_path / "digits.pt")
    float_accuracy = d.accuracy(net, xt, yt)
    r0, r1 = _run("digits", str(tmp_path))
    _assert_equal_states(r0["converted"], r1["converted"])
    single = _digits_qat(str(tmp_path))
    assert float_accuracy > 90
    print(f"digits: float {float_accuracy:.2f}%, QAT int8 converted: DDP 2 ranks "
          f"{r0['accuracy']:.2f}%, one process {single['accuracy']:.2f}%")
    # the same steps on the same batches, split over two ranks (each rank's fake
    # quantization uses its own qparams within a step)
    assert abs(r0["accuracy"] - single["accuracy"]) <= 2.0, (r0["accuracy"], single["accuracy"])


@pytest.fixture(scope="module")
def calibrated_hist():
    return _run("calibrate_hist")


@pytest.mark.parametrize("key", ["histogram", "percentile", "mse", "preset-2", "resumed"])
def test_histogram_and_mse_observers_agree_across_ranks(calibrated_hist, key):
    _assert_equal_states(calibrated_hist[0][key], calibrated_hist[1][key])


@pytest.mark.parametrize("name", ["histogram", "percentile"])
def test_histograms_equal_one_process_fed_the_whole_batches(calibrated_hist, name):
    # three calibration batches, each synchronised: bit for bit one process's histogram,
    # range, scale and zero point (the previous synchronisations' counts taken once)
    single = _state(_calibrated(_HIST_OBSERVERS[name], None))
    _assert_equal_states(calibrated_hist[0][name], single)
    hist = single["layers.0.input_fake_quant.activation_post_process.histogram"]
    assert int(hist.sum()) == 3 * 8 * 16


def test_histogram_from_a_checkpoint_loaded_on_every_rank_counts_once(calibrated_hist):
    start = _state(_calibrated(q.HistogramObserver, None, steps=(5,)))
    single = _state(_calibrated(q.HistogramObserver, None, start=start))
    _assert_equal_states(calibrated_hist[0]["resumed"], single)


def test_default_preset_first_quantizers_equal_one_process(calibrated_hist):
    want = _state(_calibrated(None, None, layers=2))
    got = calibrated_hist[0]["preset-2"]
    for k, v in got.items():
        if k.startswith(("layers.0.", "layers.1.weight_fake_quant")):
            assert torch.equal(v, want[k]), k


def test_mse_ranges_are_the_ranks_mean(calibrated_hist):
    # each rank searched its own halves: the combined range lies between the ranks' own
    # (unsynchronised) ranges, so within the whole batches' extent
    got = calibrated_hist[0]["mse"]
    key = "layers.0.input_fake_quant.activation_post_process."
    assert int(got[key + "num_batches"]) == 3
    single = _state(_calibrated(q.MSEObserver, None))
    assert float(got[key + "min_val"]) < 0 < float(got[key + "max_val"])
    assert abs(float(got[key + "max_val"]) - float(single[key + "max_val"])) < \
        0.5 * float(single[key + "max_val"])


def test_histogram_bases_that_differ_fail_clearly(calibrated_hist):
    for r in calibrated_hist:
        assert "hold different observer statistics" in r["base_mismatch"], r["base_mismatch"]


def _has_fsdp2():
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _has_fsdp2(), reason="this torch has no FSDP2 (fully_shard)")
def test_fsdp2_qat_keeps_observers_identical_across_ranks():
    r0, r1 = _run("fsdp")
    assert "layers.0.weight" in r0["sharded"]  # the parameters really are sharded
    _assert_equal_states(r0["state"], r1["state"])
    # the model input's quantizer saw both halves: one process's statistics, bit for bit
    single = _prepared(2, "int8")
    _train(single, None)
    want = _state(single)
    for k in ("min_val", "max_val"):
        key = f"layers.0.input_fake_quant.activation_post_process.{k}"
        assert torch.equal(r0["state"][key], want[key]), key
