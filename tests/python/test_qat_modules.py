"""QAT modules, fuse_modules / prepare_qat / convert and the converted inference
modules: the converted model computes what the QAT model simulated."""

import copy

import pytest
import torch
from torch import nn

import qtorchext as q
from qtorchext.nn import qat, quantized

# Presets by what convert makes of them.
STATIC = ["int8", "w4a8", "w2a8", "w1a8", "lsq_w4a4"]
OTHER = ["dynamic_int8", "int4_weight_only", "int2_weight_only", "fp16", "bf16"]


def _rel(y, ref):
    return ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _state_bytes(model):
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def _calibrate_and_freeze(model, *inputs, steps=3):
    """A few training steps (observers and BatchNorm run), then eval with frozen qparams."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = model(*inputs).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    q.disable_observer(model)
    q.freeze_bn_stats(model)
    return model


LAYERS = {
    "linear": (lambda: nn.Linear(64, 48), lambda: torch.randn(20, 64)),
    "linear_relu": (lambda: q.fuse_modules(nn.Sequential(nn.Linear(64, 48), nn.ReLU()),
                                           [["0", "1"]]), lambda: torch.randn(20, 64)),
    "conv2d": (lambda: nn.Conv2d(4, 16, 3, stride=2, padding=1), lambda: torch.randn(6, 4, 9, 9)),
    "conv1d": (lambda: nn.Conv1d(4, 16, 4, padding=2, dilation=2), lambda: torch.randn(6, 4, 21)),
    "conv_bn_relu2d": (
        lambda: q.fuse_modules(nn.Sequential(nn.Conv2d(4, 16, 3), nn.BatchNorm2d(16), nn.ReLU()),
                               [["0", "1", "2"]]),
        lambda: torch.randn(6, 4, 9, 9)),
    "conv_bn1d": (
        lambda: q.fuse_modules(nn.Sequential(nn.Conv1d(4, 16, 3), nn.BatchNorm1d(16)),
                               [["0", "1"]]),
        lambda: torch.randn(6, 4, 21)),
    # grouped (2 input, 3 output channels a group) and depthwise convolutions (a channel
    # multiplier of 2; kernels of 12 taps so that groups of 4 divide them)
    "conv2d_groups": (lambda: nn.Conv2d(8, 12, 2, padding=1, groups=4),
                      lambda: torch.randn(3, 8, 7, 6)),
    "depthwise_bn_relu2d": (
        lambda: q.fuse_modules(
            nn.Sequential(nn.Conv2d(6, 12, (3, 4), stride=2, padding=1, groups=6),
                          nn.BatchNorm2d(12), nn.ReLU()), [["0", "1", "2"]]),
        lambda: torch.randn(3, 6, 11, 10)),
    "depthwise1d": (lambda: nn.Conv1d(5, 5, 4, padding=3, groups=5),
                    lambda: torch.randn(4, 5, 17)),
    # 'same' padding, uneven (1 left, 2 right) with a reflecting border; even, with zeros;
    # 'valid'; circular padding; an unbatched input
    "conv2d_same_reflect": (lambda: nn.Conv2d(4, 8, (3, 4), padding="same", padding_mode="reflect"),
                            lambda: torch.randn(3, 4, 9, 10)),
    "conv2d_same_dilated": (lambda: nn.Conv2d(4, 8, (2, 3), padding="same", dilation=2),
                            lambda: torch.randn(3, 4, 9, 10)),
    "conv2d_valid_unbatched": (lambda: nn.Conv2d(4, 8, 2, padding="valid"),
                               lambda: torch.randn(4, 7, 6)),
    "conv1d_circular": (lambda: nn.Conv1d(4, 8, 3, padding=2, padding_mode="circular"),
                        lambda: torch.randn(4, 4, 13)),
    "conv1d_replicate_same": (lambda: nn.Conv1d(4, 8, 4, padding="same", padding_mode="replicate"),
                              lambda: torch.randn(2, 4, 13)),
}


@pytest.mark.parametrize("preset", STATIC + OTHER)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_converted_layer_computes_what_qat_simulated(layer, preset):
    make, data = LAYERS[layer]
    # weight-only presets: groups of 4 divide every layer's inputs per channel
    qc = q.qconfig(preset, group_size=4) if "weight_only" in preset else preset
    model = q.prepare_qat(make(), qc)
    x = data()
    _calibrate_and_freeze(model, x)
    with torch.no_grad():
        ref = model(x)
        converted = q.convert(model)
        y = converted(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert _rel(y, ref) < 1e-5, preset
    # convert(inplace=False) left the QAT model as it was
    assert any(isinstance(m, qat._QATMixin) for m in model.modules())
    assert not any(isinstance(m, qat._QATMixin) for m in converted.modules())


@pytest.mark.parametrize("preset", ["int4_weight_only", "w4a8", "fp16", "w1a8"])
def test_embedding_weight_only(preset):
    emb = nn.Embedding(50, 64, padding_idx=0)
    model = q.prepare_qat(emb, preset)
    assert model.input_fake_quant is None
    idx = torch.randint(0, 50, (7, 5))
    model.eval()
    with torch.no_grad():
        ref = model(idx)
        y = q.convert(model)(idx)
    assert torch.equal(y, ref)


class Net(nn.Module):
    """A typical small CNN: conv + bn + relu, conv + relu, two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(64 * 3 * 3, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.relu2(self.conv2(x))
        return self.fc2(torch.relu(self.fc(x.flatten(1))))


def _train(model, steps, x, target, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("preset,limit", [("int8", 0.27), ("w4a8", 0.15), ("w2a8", 0.15),
                                          ("w1a8", 0.05), ("fp16", 0.51)])
def test_whole_model_trains_converts_agrees_and_shrinks(preset, limit):
    torch.manual_seed(1)
    x, target = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    model = q.fuse_modules(Net(), [["conv", "bn", "relu"], ["conv2", "relu2"]])
    float_bytes = _state_bytes(model)
    model = q.prepare_qat(model, preset)
    model.train()
    losses = _train(model, 300, x, target)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, preset
    # the quantizers ran
    if preset != "fp16":
        obs = model.fc.input_fake_quant.activation_post_process
        assert torch.isfinite(obs.max_val).all()
    model.eval()
    q.disable_observer(model)
    q.freeze_bn_stats(model)
    test = torch.randn(2000, 1, 8, 8)
    with torch.no_grad():
        ref = model(test)
        converted = q.convert(model)
        y = converted(test)
    assert (y.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.999
    assert _state_bytes(converted) <= limit * float_bytes, preset


def test_sequential_nested_and_per_module_qconfig():
    model = nn.Sequential(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU()),
        nn.ModuleDict({"a": nn.Linear(32, 32)}),
        nn.Linear(32, 4))

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            h = self.m[0](x)
            return self.m[2](self.m[1]["a"](h))

    w = Wrap(model)
    prepared = q.prepare_qat(w, {"": "int8", "m.2": None, "m.1": "w4a8"})
    assert isinstance(prepared.m[0][0], qat.Linear)
    assert isinstance(prepared.m[1]["a"], qat.Linear)
    assert prepared.m[1]["a"].weight_fake_quant.quant_max == 7
    assert type(prepared.m[2]) is nn.Linear
    # type keys, with a name key taking precedence
    p2 = q.prepare_qat(w, {nn.Linear: "w2a8", "m.2": "int8"})
    assert p2.m[0][0].weight_fake_quant.quant_max == 1
    assert p2.m[2].weight_fake_quant.quant_max == 127
    # the original is untouched (inplace=False)
    assert type(w.m[0][0]) is nn.Linear


class TinyConfig:
    hidden_size = 32
    num_layers = 2
    vocab_size = 40


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.k_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.v_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(c.hidden_size, 64), nn.GELU(), nn.Linear(64, 32))

    def forward(self, h):
        a = torch.softmax(self.q_proj(h) @ self.k_proj(h).transpose(1, 2) / 32 ** 0.5, -1)
        h = self.norm(h + self.o_proj(a @ self.v_proj(h)))
        return h + self.mlp(h)


class TinyLM(nn.Module):
    """Hugging Face style: config object, embeddings, ModuleList of blocks, tied head."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(h)


def test_hugging_face_style_model():
    torch.manual_seed(0)
    model = TinyLM(TinyConfig())
    ids = torch.randint(0, 40, (8, 12))
    prepared = q.prepare_qat(model, {"": "dynamic_int8", "embed_tokens": "int4_weight_only"})
    # the tie survives prepare (parameters are shared, not copied)
    assert prepared.lm_head.weight is prepared.embed_tokens.weight
    assert sum(isinstance(m, qat.Linear) for m in prepared.modules()) == 2 * 6 + 1
    opt = torch.optim.Adam(prepared.parameters(), lr=3e-3)
    target = torch.randint(0, 40, (8, 12))
    first = None
    for _ in range(100):
        loss = nn.functional.cross_entropy(prepared(ids).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first
    prepared.eval()
    q.disable_observer(prepared)
    with torch.no_grad():
        ref = prepared(ids)
        y = q.convert(prepared)(ids)
    assert _rel(y, ref) < 1e-5


def test_fake_quant_actually_runs_and_bn_folds_like_torch_ao():
    """The QAT Conv+BN module matches torch.ao's ConvBnReLU2d given the same qparams."""
    import torch.ao.nn.intrinsic.qat as tq
    from torch.ao.quantization import QConfig as TQConfig
    from torch.ao.quantization import FakeQuantize as TFQ
    from torch.ao.quantization import MovingAverageMinMaxObserver as TObs
    from torch.ao.quantization import MovingAveragePerChannelMinMaxObserver as TPCObs

    torch.manual_seed(0)
    fused = q.fuse_modules(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
                           [["0", "1", "2"]])
    ours = q.prepare_qat(fused, "int8")[0]
    tqc = TQConfig(
        activation=TFQ.with_args(observer=TObs, quant_min=0, quant_max=255),
        weight=TFQ.with_args(observer=TPCObs, quant_min=-128, quant_max=127,
                             dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    theirs = tq.ConvBnReLU2d(3, 8, 3, qconfig=tqc)
    theirs.weight.data.copy_(ours.weight.data)
    theirs.bn.load_state_dict(ours.bn.state_dict())  # torch.ao draws gamma at random
    theirs.bias = None
    ours_bias = ours.bias
    assert ours_bias is not None  # the conv had a bias; torch.ao's folds it into BN: compare w/o
    ours.bias = None
    ours.input_fake_quant = None
    x = torch.randn(4, 3, 10, 10)
    ours.train()
    theirs.train()
    y1, y2 = ours(x), theirs(x)
    assert torch.allclose(y1, y2, rtol=1e-5, atol=1e-6)
    y1.square().sum().backward()
    y2.square().sum().backward()
    for a, b in [(ours.weight, theirs.weight), (ours.bn.weight, theirs.bn.weight),
                 (ours.bn.bias, theirs.bn.bias)]:
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(ours.bn.running_mean, theirs.bn.running_mean)


def test_converted_model_saves_and_loads_and_refuses_other_bit_width(tmp_path):
    torch.manual_seed(4)
    model = q.fuse_modules(Net(), [["conv", "bn", "relu"]])
    model = _calibrate_and_freeze(q.prepare_qat(model, "w4a8"), torch.randn(32, 1, 8, 8))
    converted = q.convert(model)
    path = str(tmp_path / "m.pt")
    q.save_state_dict(converted, path)

    def skeleton(preset):
        return q.convert(q.prepare_qat(q.fuse_modules(Net(), [["conv", "bn", "relu"]]), preset),
                         allow_unobserved=True)  # loaded next

    fresh = skeleton("w4a8")
    q.load_state_dict(fresh, path)
    x = torch.randn(10, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), converted(x))
    with pytest.raises(RuntimeError, match="another architecture, bit width or fused activation"):
        q.load_state_dict(skeleton("w2a8"), path)
    # a file from a newer format version is refused clearly
    state = torch.load(path, weights_only=True)
    state["fc.quant_meta"][0] = 99
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="format version 99, newer"):
        q.load_state_dict(skeleton("w4a8"), path)
    # a float model's state dict does not load into a converted one
    torch.save({k: v for k, v in Net().state_dict().items()}, path)
    with pytest.raises(RuntimeError):
        q.load_state_dict(skeleton("w4a8"), path)


def test_bad_input_errors():
    with pytest.raises(RuntimeError, match="no QAT layers; call qtorchext.prepare_qat"):
        q.convert(Net())
    with pytest.raises(ValueError, match="names the layer type LSTM"):
        q.prepare_qat(Net(), {nn.LSTM: "int8"})
    with pytest.raises(ValueError, match="names 'fc9', which is not a module"):
        q.prepare_qat(Net(), {"fc9": "int8"})
    with pytest.raises(ValueError, match="holds no layer qtorchext can quantize"):
        q.prepare_qat(Net(), {"relu": "int8"})
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        q.prepare_qat(nn.Linear(64, 8), q.qconfig("int4_weight_only", group_size=48))
    with pytest.raises(TypeError, match="qconfig must be a QConfig"):
        q.prepare_qat(Net(), 3)
    with pytest.raises(ValueError, match="fuse"):
        q.fuse_modules(Net(), [["fc", "conv"]])


def test_fused_module_state_dict_keys_match_cpp_names():
    model = q.prepare_qat(q.fuse_modules(Net(), [["conv", "bn", "relu"]]), "int8")
    keys = set(model.state_dict())
    assert {"conv.weight", "conv.bn.weight", "conv.bn.running_var",
            "conv.input_fake_quant.scale", "conv.weight_fake_quant.scale"} <= keys
    converted = q.convert(_calibrate_and_freeze(model, torch.randn(8, 1, 8, 8)))
    keys = set(converted.state_dict())
    assert {"conv.weight_packed", "conv.weight_scale", "conv.weight_zero_point",
            "conv.bias", "conv.input_scale", "conv.quant_meta"} <= keys


def test_deepcopy_and_pickle_of_converted_model(tmp_path):
    model = q.convert(_calibrate_and_freeze(q.prepare_qat(Net(), "w4a8"),
                                            torch.randn(8, 1, 8, 8)))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(model)(x), model(x))
    assert "w4a8" in repr(model) or "4-bit" in repr(model) or "bits=4" in repr(model)


def test_prepare_qat_with_nothing_to_quantize_is_an_error_as_in_cpp():
    with pytest.raises(ValueError, match="prepare_qat: found no layer to quantize"):
        q.prepare_qat(nn.Sequential(nn.ReLU(), nn.Dropout()), "int8")
    with pytest.raises(ValueError, match="found no layer to quantize"):
        q.prepare_qat(nn.Linear(4, 4), {"": None})
    with pytest.raises(ValueError, match="found no layer to quantize"):
        q.quantize_dynamic(nn.Sequential(nn.Conv2d(1, 2, 3)), "int8")  # Linear layers only
