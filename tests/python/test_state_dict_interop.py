"""A state dict saved from a Python module loads into the C++ module (and back) with the
same qparams. The C++ side is build/tests/cpp/qtorchext_interop_tool (built by `make build`;
QTORCHEXT_BUILD_DIR points elsewhere)."""

import os
import subprocess

import pytest
import torch

import qtorchext as q

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(os.environ.get("QTORCHEXT_BUILD_DIR", os.path.join(ROOT, "build")),
                    "tests", "cpp", "qtorchext_interop_tool")

# The same module in each language (see tests/cpp/interop_tool.cpp).
KINDS = {
    "minmax": lambda: q.MinMaxObserver(quant_min=-128, quant_max=127),
    "moving_average": lambda: q.MovingAverageMinMaxObserver(),
    "per_channel": lambda: q.PerChannelMinMaxObserver(symmetric=True),
    "histogram": lambda: q.HistogramObserver(quant_min=-8, quant_max=7),
    "percentile": lambda: q.PercentileObserver(symmetric=True),
    "mse": lambda: q.MSEObserver(quant_min=-8, quant_max=7, ch_axis=0),
    "fake_quantize": lambda: q.FakeQuantize(observer=q.MovingAverageMinMaxObserver),
    "fake_quantize_per_channel": lambda: q.FakeQuantize(
        observer=q.MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7,
        symmetric=True),
    "learnable": lambda: q.LearnableFakeQuantize(
        observer=q.MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7,
        symmetric=True),
}


def _tool(*args):
    assert os.path.exists(TOOL), f"{TOOL} is missing: run `make build`"
    out = subprocess.run([TOOL, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _qparams(m):
    return m.calculate_qparams()


def _inputs():
    torch.manual_seed(0)
    return [torch.randn(6, 40) * (i + 1) + 0.5 * i for i in range(3)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_python_state_loads_into_cpp(kind, tmp_path):
    m = KINDS[kind]()
    for x in _inputs():
        m(x)
    q.save_state_dict(m, str(tmp_path / "py.pt"))
    _tool(kind, "load", str(tmp_path / "py.pt"), str(tmp_path / "cpp.pt"))
    cpp = torch.load(tmp_path / "cpp.pt")
    scale, zp = _qparams(m)
    assert torch.equal(cpp.pop("__scale"), scale)
    assert torch.equal(cpp.pop("__zero_point"), zp)
    ours = m.state_dict()
    assert set(cpp) == set(ours)
    for k, v in ours.items():
        assert torch.equal(cpp[k], v.detach()), k


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cpp_state_loads_into_python(kind, tmp_path):
    x = _inputs()[1]
    torch.save({"x": x}, tmp_path / "x.pt")
    _tool(kind, "observe", str(tmp_path / "x.pt"), str(tmp_path / "cpp.pt"))
    cpp = torch.load(tmp_path / "cpp.pt")
    cpp_scale, cpp_zp = cpp.pop("__scale"), cpp.pop("__zero_point")
    loaded = KINDS[kind]()
    loaded.load_state_dict(cpp)
    reloaded = KINDS[kind]()
    q.load_state_dict(reloaded, str(tmp_path / "cpp.pt"), strict=False)
    py = KINDS[kind]()
    py(x)  # the same observation in Python gives the same state and qparams
    for a, b in zip(_qparams(loaded), _qparams(py)):
        assert torch.equal(a, b)
    assert torch.equal(_qparams(loaded)[0], cpp_scale)
    assert torch.equal(_qparams(loaded)[1], cpp_zp)


def test_ordered_dict_file_gets_a_clear_error(tmp_path):
    m = q.MinMaxObserver()
    m(torch.randn(10))
    torch.save(m.state_dict(), tmp_path / "od.pt")  # an OrderedDict
    out = subprocess.run([TOOL, "minmax", "load", str(tmp_path / "od.pt"), str(tmp_path / "o.pt")],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "qtorchext.save_state_dict(module, path)" in out.stderr


def test_save_is_atomic_and_roundtrips(tmp_path):
    m = q.HistogramObserver()
    m(torch.randn(1000))
    path = str(tmp_path / "h.pt")
    q.save_state_dict(m, path)
    assert not os.path.exists(path + ".tmp")
    fresh = q.HistogramObserver()
    q.load_state_dict(fresh, path)
    assert torch.equal(fresh.histogram, m.histogram)


class Net(torch.nn.Module):
    """The model of interop_tool.cpp (NetImpl), in Python."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, groups=16)  # depthwise, multiplier 2
        self.fc = torch.nn.Linear(32 * 3 * 3, 10)

    def forward(self, x):
        h = torch.relu(self.conv2(self.relu(self.bn(self.conv(x)))))
        return self.fc(h.flatten(1))


def _prepared(preset):
    return q.prepare_qat(q.fuse_modules(Net(), [["conv", "bn", "relu"]]), preset)


MODEL_PRESETS = ["int8", "w4a8", "w2a8", "w1a8", "fp16", "lsq_w4a4"]


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_python_converted_model_runs_in_cpp(preset, tmp_path):
    torch.manual_seed(1)
    model = _prepared(preset)
    x = torch.randn(16, 1, 8, 8)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    q.disable_observer(model)
    converted = q.convert(model)
    q.save_state_dict(converted, str(tmp_path / "py.pt"))
    torch.save({"x": x}, tmp_path / "x.pt")
    _tool(f"model:{preset}", "load", str(tmp_path / "py.pt"), str(tmp_path / "y.pt"),
          str(tmp_path / "x.pt"))
    y_cpp = torch.load(tmp_path / "y.pt")["y"]
    with torch.no_grad():
        y = converted(x)
    assert torch.allclose(y_cpp, y, rtol=1e-6, atol=1e-6 * y.abs().max().item())
    # into a fresh float model, no recipe: qat::load_quantized rebuilds the layers
    _tool(f"model:{preset}", "load_quantized", str(tmp_path / "py.pt"), str(tmp_path / "y2.pt"),
          str(tmp_path / "x.pt"))
    assert torch.equal(torch.load(tmp_path / "y2.pt")["y"], y_cpp)


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_cpp_converted_model_runs_in_python(preset, tmp_path):
    torch.manual_seed(2)
    x = torch.randn(16, 1, 8, 8)
    torch.save({"x": x}, tmp_path / "x.pt")
    _tool(f"model:{preset}", "export", str(tmp_path / "x.pt"), str(tmp_path / "cpp.pt"))
    state = torch.load(tmp_path / "cpp.pt")
    y_cpp = state.pop("__y")
    # into a fresh float model, no recipe: qtorchext.load_quantized rebuilds the layers
    reloaded = q.load_quantized(Net(), state)
    with torch.no_grad():
        y_reloaded = reloaded(x)
    assert torch.allclose(y_reloaded, y_cpp, rtol=1e-6, atol=1e-6 * y_cpp.abs().max().item())
    converted = q.convert(_prepared(preset), allow_unobserved=True)  # loaded next
    assert set(state) == set(converted.state_dict())  # the same keys in both languages
    converted.load_state_dict(state)
    with torch.no_grad():
        y = converted(x)
    assert torch.allclose(y, y_cpp, rtol=1e-6, atol=1e-6 * y.abs().max().item())


def test_per_tensor_state_keeps_its_shape_on_load():
    # as in C++: only per-channel state takes the saved size
    pc = q.FakeQuantize(observer=q.MovingAveragePerChannelMinMaxObserver, quant_min=-8,
                        quant_max=7, symmetric=True)
    pc(torch.randn(4, 6))
    with pytest.raises(RuntimeError, match="size mismatch"):
        q.FakeQuantize(observer=q.MovingAverageMinMaxObserver).load_state_dict(pc.state_dict())
    fresh = q.FakeQuantize(observer=q.MovingAveragePerChannelMinMaxObserver, quant_min=-8,
                           quant_max=7, symmetric=True)
    fresh.load_state_dict(pc.state_dict())
    assert torch.equal(fresh.scale, pc.scale)


PREPARED_PRESETS = ["int8", "w4a8", "w2a8", "w1a8", "fp16", "bf16", "lsq_w4a4", "dynamic_int8"]


def _observed(preset, x):
    model = _prepared(preset)
    model.train()
    with torch.no_grad():
        model(x)  # observers and BatchNorm statistics
    return model.eval()


@pytest.mark.parametrize("preset", PREPARED_PRESETS)
def test_python_prepared_model_resumes_in_cpp(preset, tmp_path):
    # a QAT checkpoint (weights, BatchNorm, every quantizer's state) saved in Python
    torch.manual_seed(3)
    x = torch.randn(16, 1, 8, 8)
    model = _observed(preset, x)
    q.save_state_dict(model, str(tmp_path / "py.pt"))
    torch.save({"x": x}, tmp_path / "x.pt")
    _tool(f"prepared:{preset}", "load", str(tmp_path / "py.pt"), str(tmp_path / "y.pt"),
          str(tmp_path / "x.pt"))
    y_cpp = torch.load(tmp_path / "y.pt")["y"]
    with torch.no_grad():
        y = model(x)
    assert torch.allclose(y_cpp, y, rtol=1e-5, atol=1e-5 * y.abs().max().item())


@pytest.mark.parametrize("preset", PREPARED_PRESETS)
def test_cpp_prepared_model_resumes_in_python(preset, tmp_path):
    torch.manual_seed(4)
    x = torch.randn(16, 1, 8, 8)
    torch.save({"x": x}, tmp_path / "x.pt")
    _tool(f"prepared:{preset}", "export", str(tmp_path / "x.pt"), str(tmp_path / "cpp.pt"))
    state = torch.load(tmp_path / "cpp.pt")
    y_cpp = state.pop("__y")
    model = _prepared(preset)
    model(x)  # per-channel quantizers take their sizes
    assert set(state) == set(model.state_dict())  # the same keys in both languages
    model.load_state_dict(state)  # observers frozen in C++ before __y: the same qparams
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert torch.equal(y, y_cpp)  # the same ops on the same state, bit for bit
    # and it goes on training from there: the QAT step works on the loaded state
    model.train()
    model(x).square().mean().backward()


def _truncations(path, count=31):
    data = open(path, "rb").read()
    step = max(1, len(data) // count)
    return data, list(range(0, len(data), step))[:count]


def test_truncated_and_random_files_are_refused_by_name_in_both_languages(tmp_path):
    m = q.MinMaxObserver()
    m(torch.randn(10))
    good = str(tmp_path / "good.pt")
    q.save_state_dict(m, good)
    data, lengths = _truncations(good)
    bad = str(tmp_path / "bad.pt")
    for n in lengths + [len(data) - 1]:
        with open(bad, "wb") as f:
            f.write(data[:n])
        with pytest.raises(ValueError, match=f"load_state_dict: {bad} (is not a complete "
                                             "PyTorch archive|cannot read)"):
            q.load_state_dict(q.MinMaxObserver(), bad)
        out = subprocess.run([TOOL, "minmax", "load", bad, str(tmp_path / "o.pt")],
                             capture_output=True, text=True)
        assert out.returncode == 1, (n, out.returncode, out.stderr[-500:])  # an error, no crash
        assert f"load_state_dict: {bad}" in out.stderr, (n, out.stderr[-500:])
        # a truncated archive is not the OrderedDict case: no advice to re-save it
        assert "qtorchext.save_state_dict(module, path)" not in out.stderr, n
    with open(bad, "wb") as f:
        f.write(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    with pytest.raises(ValueError, match="is not a complete PyTorch archive"):
        q.load_state_dict(q.MinMaxObserver(), bad)
    torch.save([1, 2], bad)
    with pytest.raises(ValueError, match="holds a list, not a dict of name -> tensor"):
        q.load_state_dict(q.MinMaxObserver(), bad)
    with pytest.raises(FileNotFoundError, match="no file"):
        q.load_state_dict(q.MinMaxObserver(), str(tmp_path / "missing.pt"))
