"""Converted layers run as one op each (quantized_linear / quantized_conv /
quantized_embedding): captured by torch.export and torch.compile on their first call, one
node per layer; never stale after a load, a copy_ or a dtype move; safe when many threads
make the first call; files of format version 1 load with the same outputs."""

import os
import subprocess
import threading

import pytest
import torch

import qtorchext as q
from layer_cases import PRESETS, converted_block, indices
from qtorchext.nn import quantized as qnn
from test_state_dict_interop import TOOL, _prepared

LAYER_OPS = {"quantized_linear", "quantized_conv", "quantized_embedding"}
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                        "quant_v1")
V1_PRESETS = ["int8", "w4a8", "w2a8", "w1a8", "fp16", "bf16", "lsq_w4a4", "dynamic_int8"]


def _layers(model):
    return [m for m in model.modules() if isinstance(m, qnn._QuantizedLayer)]


def _graph_targets(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("preset", PRESETS)
def test_export_of_a_fresh_model_holds_one_op_per_layer(preset, tmp_path):
    model = converted_block(preset)  # never called before
    idx = indices()
    exported = torch.export.export(model, (idx,))
    targets = _graph_targets(exported.graph_module)
    ours = [t for t in targets if t.startswith("qtorchext.")]
    assert len(ours) == len(_layers(model))
    assert {t.split(".")[1] for t in ours} <= LAYER_OPS
    forbidden = ("mm", "addmm", "matmul", "bmm", "linear", "_local_scalar_dense", "item")
    assert not [t for t in targets if t.split(".")[1] in forbidden], targets
    # the only convolutions left are the layers kept float (weight-only presets: the
    # depthwise conv, whose 9 weights per channel make no group of 32)
    float_convs = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    assert len([t for t in targets if t.startswith("aten.") and "conv" in t]) == len(float_convs), \
        targets
    with torch.no_grad():
        expected = model(idx)
    assert torch.equal(exported.module()(idx), expected)
    path = tmp_path / "block.pt2"
    torch.export.save(exported, path)
    assert torch.equal(torch.export.load(path).module()(idx), expected)


@pytest.mark.parametrize("preset", ["int8", "dynamic_int8", "w1a8", "int4_weight_only", "bf16"])
def test_compile_fullgraph_first_call(preset):
    model = converted_block(preset)
    eager = converted_block(preset)
    idx = indices()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(idx), eager(idx))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("how", ["copy_", "load_state_dict", "state_dict_file"])
def test_new_weights_are_used_after_a_load(preset, how, tmp_path):
    model, other = converted_block(preset, seed=0), converted_block(preset, seed=1)
    idx = indices()
    with torch.no_grad():
        before = model(idx)  # derived layouts built for the old weights
        expected = other(idx)
    assert not torch.equal(before, expected)
    if how == "copy_":
        with torch.no_grad():
            for name, t in model.state_dict().items():
                t.copy_(other.state_dict()[name])
    elif how == "load_state_dict":
        model.load_state_dict(other.state_dict())
    else:
        q.save_state_dict(other, str(tmp_path / "other.pt"))
        q.load_state_dict(model, str(tmp_path / "other.pt"))
    with torch.no_grad():
        assert torch.equal(model(idx), expected)


def test_an_in_place_edit_of_one_weight_row_is_seen():
    model = converted_block("int8")
    fc = model.fc
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = fc(x)
        fc.weight_packed[0] = fc.weight_packed[1]
        fresh = converted_block("int8").fc
        fresh.load_state_dict(fc.state_dict())
        after = fc(x)
        assert not torch.equal(after[:, 0], before[:, 0])  # the edited row's output moved
        assert torch.equal(after, fresh(x))


@pytest.mark.parametrize("preset", ["int8", "w4a8", "dynamic_int8", "int4_weight_only"])
def test_models_made_in_inference_mode_see_their_loads(preset):
    # inference tensors have no version counter: their layouts are compared by content
    with torch.inference_mode():
        model, other = converted_block(preset, seed=0), converted_block(preset, seed=1)
        idx = indices()
        before, expected = model(idx), other(idx)
        assert not torch.equal(before, expected)
        model.load_state_dict(other.state_dict())
        assert torch.equal(model(idx), expected)


def test_plan_errors_are_value_errors():
    model = q.prepare_qat(torch.nn.Sequential(torch.nn.Linear(8, 4)), "int8")
    model[0].weight_fake_quant = q.FakeQuantize(observer=q.PerChannelMinMaxObserver, ch_axis=1)
    model[0].weight_fake_quant(model[0].weight)
    with pytest.raises(ValueError, match="only the output channels .axis 0. can be converted"):
        q.convert(model.eval(), allow_unobserved=True)


def test_whole_module_pickles_of_earlier_releases_run():
    saved = torch.load(os.path.join(FIXTURES, "whole_module_int8.pkl"), weights_only=False)
    model = saved["model"]
    with torch.no_grad():
        assert torch.equal(model(saved["x"]), saved["y"])
    assert all(not hasattr(m, "_packed") for m in model.modules())


@pytest.mark.parametrize("preset", ["int8", "dynamic_int8", "w4a8", "w1a8", "fp16", "bf16"])
def test_dtype_moves_keep_the_stored_tensors(preset):
    # model.double() / .half(): converted layers keep their buffers' dtypes and follow their
    # input's dtype (the embedding's rows come out in the model's dtype)
    model = converted_block(preset)
    idx = indices()
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(idx)
        model.double()
        assert {k: v.dtype for k, v in model.state_dict().items()} == dtypes
        y = model(idx)
        assert y.dtype == torch.float64
        # the model's own float ops (mean, BatchNorm-free glue) now run in float64: an input
        # code of a dynamic layer may move by one step
        assert (y.float() - expected).abs().max() <= 0.02 * expected.abs().max()
        model.half()
        assert {k: v.dtype for k, v in model.state_dict().items()} == dtypes
        y = model(idx)
        assert y.dtype == torch.float16
        # half activations between the layers: a few input codes move by one step
        assert (y.float() - expected).abs().max() <= 0.1 * expected.abs().max()
        model.float()
        assert torch.equal(model(idx), expected)


@pytest.mark.parametrize("preset,buffer", [("int8", "weight_scale"), ("w1a8", "weight_alpha"),
                                           ("bf16", "weight")])
def test_narrowed_buffers_are_refused(preset, buffer):
    model = converted_block(preset)
    # cast by hand: rounds float32 scales / alphas; bfloat16 weights do not fit float16
    setattr(model.fc, buffer, getattr(model.fc, buffer).half())
    with pytest.raises(RuntimeError, match=f"{buffer} is Half, but this layer .* stores it as "
                                           f".*rounded"):
        model(indices())
    setattr(model.fc, buffer, getattr(model.fc, buffer).double())  # wider: the same values
    model(indices())


def test_many_threads_make_the_first_call_at_once():
    for preset in ("int8", "w4a8", "dynamic_int8"):
        reference = converted_block(preset)
        idx = indices(8, 16)
        with torch.no_grad():
            expected = reference(idx)
        for _ in range(3):
            model = converted_block(preset)  # fresh: nothing derived yet
            barrier = threading.Barrier(4)
            results, errors = [None] * 4, []

            def run(i):
                try:
                    barrier.wait()
                    with torch.no_grad():
                        results[i] = model(idx)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            assert all(torch.equal(r, expected) for r in results)


def test_layouts_of_freed_models_are_released():
    import gc

    def count(alive):
        return sum(1 for e in q._C._derived_weights() if e[3] == alive)

    gc.collect()
    converted_block("w2a8")(indices())  # an insert: drops what earlier tests left dead
    live = count(True)
    model = converted_block("int8")
    model(indices())
    added = count(True) - live
    assert added >= 4  # the int8 layers' panels / depthwise weights
    del model
    gc.collect()
    assert count(True) == live and count(False) >= added
    keep = converted_block("w4a8")
    keep(indices())  # the next insert drops them
    assert count(False) == 0


def _fixture(preset):
    io = torch.load(os.path.join(FIXTURES, "io.pt"))
    return torch.load(os.path.join(FIXTURES, preset + ".pt")), io["x"], io["y:" + preset]


def _close_to_fixture(y, expected, preset):
    """The outputs recorded with the fixture (on an AVX2 machine). Integer layers
    sum exactly on every CPU; float16 layers multiply in float32 with ATen's GEMM,
    whose summation order depends on the CPU's kernels (2e-5 of the largest output
    on an AVX-512 machine)."""
    rtol = 1e-4 if preset == "fp16" else 1e-6
    return torch.allclose(y, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


@pytest.mark.parametrize("preset", V1_PRESETS)
def test_format_v1_files_load_with_their_outputs_in_python(preset):
    state, x, expected = _fixture(preset)
    assert int(state["fc.quant_meta"][0]) == 1
    model = q.convert(_prepared(preset).eval(), allow_unobserved=True)  # loaded next
    model.load_state_dict(state)
    with torch.no_grad():
        y = model(x)
    assert _close_to_fixture(y, expected, preset)


@pytest.mark.parametrize("preset", V1_PRESETS)
def test_format_v1_files_load_with_their_outputs_in_cpp(preset, tmp_path):
    _, _, expected = _fixture(preset)
    assert os.path.exists(TOOL), f"{TOOL} is missing: run `make build`"
    out = subprocess.run([TOOL, f"model:{preset}", "load", os.path.join(FIXTURES, preset + ".pt"),
                          str(tmp_path / "y.pt"), os.path.join(FIXTURES, "io.pt")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    y = torch.load(tmp_path / "y.pt")["y"]
    assert _close_to_fixture(y, expected, preset)
