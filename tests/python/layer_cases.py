"""Converted layers of every kind and mode, for the layer-op tests (opcheck, export,
compile, reload, threads): (id, converted module, input) each."""

import torch
from torch import nn

import qtorchext as q
from qtorchext.nn import quantized as qnn


class Block(nn.Module):
    """One layer of each kind the presets convert (a fused ReLU, a fused GELU, a BatchNorm
    folded)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.fc = nn.Linear(32, 32)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(32, 32, 1)
        self.bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.grouped = nn.Conv2d(32, 32, 2, padding="same", groups=2, padding_mode="reflect")
        self.conv1d = nn.Conv1d(32, 32, 1)
        self.ffn = nn.Linear(32, 32)
        self.gelu = nn.GELU()
        self.head = nn.Linear(32, 8)

    def forward(self, idx):
        h = self.relu(self.fc(self.emb(idx)))                  # [B, T, 32]
        img = h.transpose(1, 2).unsqueeze(-1).expand(-1, -1, -1, 4)  # [B, 32, T, 4]
        img = self.grouped(self.dw(self.bn(self.conv(img))))
        seq = self.conv1d(img.mean(-1))                        # [B, 32, T]
        return self.head(self.gelu(self.ffn(seq.transpose(1, 2))))


PRESETS = ["int8", "dynamic_int8", "w4a8", "w2a8", "w1a8", "lsq_w4a4", "int4_weight_only",
           "int2_weight_only", "fp16", "bf16"]


def indices(batch=2, steps=6):
    return torch.randint(0, 50, (batch, steps))


def converted_block(preset, seed=0):
    return q.convert(qat_block(preset, seed))


def qat_block(preset, seed=0):
    """Block prepared for QAT with `preset`, trained 2 steps, observers off, in eval mode."""
    torch.manual_seed(seed)
    model = q.fuse_modules(Block(), [["fc", "relu"], ["conv", "bn"], ["ffn", "gelu"]])
    # groups of 32 weights: the depthwise conv (9 per channel) stays float there
    spec = {"": preset, nn.Embedding: preset}  # embeddings only when named
    if preset.endswith("weight_only"):
        spec["dw"] = None
    model = q.prepare_qat(model, spec)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(indices(4, 8))
    q.disable_observer(model)
    return model.eval()


def layer_inputs(model, idx):
    """The input each converted layer of `model` sees for `idx`: {module: tensor}."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.setdefault(mod, args[0]))
             for m in model.modules() if isinstance(m, qnn._QuantizedLayer)]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    return seen


def op_call(layer, x):
    """(op, args) of the layer op call a converted layer makes for input x."""
    weight, scale, zero_point = layer._stored()
    if isinstance(layer, qnn.Embedding):
        return torch.ops.qtorchext.quantized_embedding, (
            x, weight, scale, zero_point, layer._meta_list, layer.in_features)
    input_scale, input_zero_point = layer._input_qparams()
    if isinstance(layer, qnn.Linear):
        return torch.ops.qtorchext.quantized_linear, (
            x, weight, scale, zero_point, layer.bias, input_scale, input_zero_point,
            layer._meta_list, layer.in_features)
    return torch.ops.qtorchext.quantized_conv, (
        x, weight, scale, zero_point, layer.bias, input_scale, input_zero_point,
        layer._meta_list, layer.in_channels, list(layer.kernel_size), list(layer.stride),
        layer._pads, list(layer.dilation), layer.groups, layer.padding_mode)


def layer_cases(presets=PRESETS):
    """(id, layer, x) for every converted layer of the block under each preset."""
    out = []
    for preset in presets:
        model = converted_block(preset)
        names = {m: n for n, m in model.named_modules()}
        for layer, x in layer_inputs(model, indices()).items():
            out.append((f"{preset}-{names[layer]}", layer, x))
    return out
