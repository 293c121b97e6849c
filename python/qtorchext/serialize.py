"""State dicts shared with C++ (``qat::save_state_dict`` / ``qat::load_state_dict``).

The file is what ``torch.save`` writes for a plain dict ``{name: tensor}``. (LibTorch's
unpickler cannot read the ``OrderedDict`` that ``module.state_dict()`` returns, so
``torch.save(module.state_dict(), path)`` files do not load in C++; this module writes the
plain dict.)
"""

from __future__ import annotations

import copy
import os
import zipfile

import torch

__all__ = ["load_quantized", "load_state_dict", "save_state_dict"]


def save_state_dict(module: torch.nn.Module, path: str) -> None:
    """Writes module's parameters and buffers to ``path`` (via a temporary file and a rename,
    so an existing file is never left half written)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save_state_dict: path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"save_state_dict: {path} is a directory; give a file path")
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = f"{path}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_state(path) -> dict:
    """The {name: tensor} dict in ``path``, or an error naming the path and what is wrong
    (instead of torch's bare EOFError / OSError or its advice to unpickle untrusted bytes)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_state_dict: no file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path
        if not zipfile.is_zipfile(path):  # not even torch's legacy format loaded
            raise ValueError(f"load_state_dict: {path} is not a complete PyTorch archive "
                             f"({os.path.getsize(path)} bytes; truncated, or not written by "
                             "torch.save / qtorchext.save_state_dict / qat::save_state_dict)"
                             ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"load_state_dict: cannot read {path} as a dict of tensors: "
                         f"{first}") from err
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"load_state_dict: {path} holds a {type(state).__name__}, not a dict "
                         "of name -> tensor")
    return state


def load_state_dict(module: torch.nn.Module, path: str, strict: bool = True):
    """Loads a state dict written by :func:`save_state_dict` or by C++'s
    ``qat::save_state_dict`` into ``module``."""
    state = _read_state(path)
    from .nn.quantized import _QuantizedLayer, check_layer_state
    mods = dict(module.named_modules())
    floats = [p for p in _converted_paths(state)
              if p in mods and not isinstance(mods[p], _QuantizedLayer)]
    if floats:
        raise ValueError(
            f"load_state_dict: {path} holds converted layers ('{floats[0] or '(the model)'}'"
            f"{f' and {len(floats) - 1} more' if len(floats) > 1 else ''}) where the module has "
            f"a float {type(mods[floats[0]]).__name__}: load a converted model with "
            "qtorchext.load_quantized(model, path), which rebuilds those layers from the file")
    # every converted layer's qparams checked before any is loaded: a bad file leaves the
    # module as it was
    for name, mod in mods.items():
        if isinstance(mod, _QuantizedLayer):
            check_layer_state(mod, state, f"{name}." if name else "")
    return _load_all_or_nothing(module, state, strict)


class _Snapshot:
    """A module's state as it is now, to put back if a load fails: a copy of its state dict
    (the entries under the prefixes in `skip` left out: modules the caller puts back
    itself) and the names of each module's buffers and parameters (a load may register new
    ones: SmoothQuant factors a layer adopts from the file)."""

    def __init__(self, module: torch.nn.Module, skip=()):
        self.module = module
        self.state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                      for k, v in module.state_dict().items()
                      if not any(k.startswith(p) for p in skip)}
        self.names = {m: (set(m._buffers), set(m._parameters)) for m in module.modules()}

    def restore(self, err: Exception) -> None:
        """Puts the state back (the caller then raises the load's own error, `err`); if that
        fails too, raises a RuntimeError that names both."""
        try:
            for m, (buffers, params) in self.names.items():
                for name in [n for n in m._buffers if n not in buffers]:
                    del m._buffers[name]
                for name in [n for n in m._parameters if n not in params]:
                    del m._parameters[name]
            self.module.load_state_dict(self.state, strict=False)
        except Exception as restore_err:  # noqa: BLE001 - reported with the load's error
            raise RuntimeError(f"{err} (and putting the module back as it was failed: "
                               f"{restore_err})") from err


def _load_all_or_nothing(module: torch.nn.Module, state: dict, strict: bool):
    """module.load_state_dict(state, strict), all or nothing. torch copies every tensor that
    fits before it raises on the others (a missing entry, another shape), which would leave
    the module half loaded: its state is copied first and loaded back, through the same
    hooks, if the load raises (one extra copy of the module's state while it loads)."""
    before = _Snapshot(module)
    try:
        return module.load_state_dict(state, strict=strict)
    except Exception as err:
        before.restore(err)
        raise


def _converted_paths(state) -> list:
    """The module paths of the converted layers a state dict holds (their quant_meta)."""
    return [k[:-len("quant_meta")].rstrip(".") for k in state
            if k == "quant_meta" or k.endswith(".quant_meta")]


def load_quantized(model: torch.nn.Module, path) -> torch.nn.Module:
    """Loads a converted model's file (``save_state_dict`` of a converted model, or
    ``torch.save(dict(model.state_dict()))``; C++'s ``qat::save_state_dict`` too) into the
    float model it was converted from, with no need to repeat the recipe (qconfig,
    ``prepare_qat``, ``convert``): every layer the file holds as converted is rebuilt from
    its stored ``quant_meta`` (bits, group size, input mode, fused ReLU / GELU), in place, then the
    whole file is loaded strictly (scales and zero points validated). A BatchNorm folded into
    its convolution (``fuse_modules``) has no entries in the file and becomes
    ``nn.Identity``. A layer saved with a fused GELU loads only into a model whose Linear and
    GELU were fused the same way (else the model's GELU module would apply it twice).
    Returns the model in eval mode (the rebuilt layer itself when the model
    is one layer). C++: ``qat::load_quantized``."""
    from .nn import meta as M
    from .nn import quantized as Q
    state = _read_state(path) if not isinstance(path, dict) else path
    where = f"load_quantized: {path if not isinstance(path, dict) else 'state dict'}"
    converted = _converted_paths(state)
    if not converted:
        raise ValueError(f"{where} holds no converted layer (no quant_meta entries): load a "
                         "float or QAT state dict with load_state_dict")
    mods = dict(model.named_modules())
    root = None
    swaps = []  # (path, converted layer), made once every layer is checked
    for layer_path in converted:
        prefix = f"{layer_path}." if layer_path else ""
        if layer_path not in mods:
            raise ValueError(f"{where}: the file holds the converted layer '{layer_path}', but "
                             "the model has no module by that name (pass the float model the "
                             "file was converted from)")
        float_mod = mods[layer_path]
        meta = M.QuantMeta.from_tensor(state[prefix + "quant_meta"], f"{where}: '{layer_path}': ")
        has_bias = prefix + "bias" in state
        kinds = {M.LAYER_LINEAR: (torch.nn.Linear, Q.Linear),
                 M.LAYER_CONV1D: (torch.nn.Conv1d, Q.Conv1d),
                 M.LAYER_CONV2D: (torch.nn.Conv2d, Q.Conv2d),
                 M.LAYER_EMBEDDING: (torch.nn.Embedding, Q.Embedding)}
        float_type, cls = kinds[meta.layer]
        if not isinstance(float_mod, Q._QuantizedLayer):
            # a GELU is not idempotent: the file's must be fused in the model too (its GELU
            # module Identity), and a layer fused in the model must find its own
            own = M.activation_of(float_mod)
            if meta.activation in (M.ACT_GELU, M.ACT_GELU_TANH) and own != meta.activation:
                raise ValueError(
                    f"{where}: '{layer_path}': the file's layer ends with a fused GELU "
                    f"({meta.describe()}); fuse the model's Linear with its GELU first "
                    "(qtorchext.fuse_modules), else that GELU would run a second time")
            if own not in (M.ACT_NONE, meta.activation):
                raise ValueError(f"{where}: '{layer_path}': the model's layer is a "
                                 f"{type(float_mod).__name__}, but the file's layer is "
                                 f"{meta.describe()}")
        if isinstance(float_mod, Q._QuantizedLayer):
            new = float_mod  # converted already: load_state_dict checks it matches
        elif not isinstance(float_mod, float_type):
            raise ValueError(f"{where}: '{layer_path or '(the model)'}' is a "
                             f"{type(float_mod).__name__} in the model, but the file holds it "
                             f"as a converted {float_type.__name__} ({meta.describe()})")
        elif cls is Q.Linear:
            new = Q.Linear(float_mod.in_features, float_mod.out_features, meta, has_bias)
        elif cls is Q.Embedding:
            new = Q.Embedding(float_mod.num_embeddings, float_mod.embedding_dim, meta)
        else:
            new = cls(float_mod.in_channels, float_mod.out_channels, float_mod.kernel_size, meta,
                      float_mod.stride, float_mod.padding, float_mod.dilation, float_mod.groups,
                      has_bias, float_mod.padding_mode)
        new.train(False)
        if not layer_path:
            root = new
            continue
        swaps.append((layer_path, new))
    # Every layer checked: the model changes now, and goes back as it was if the load fails
    # (a model left half converted would compute garbage): the layers swapped back, and the
    # state of the rest (which torch's load copies into before it raises) loaded back.
    undo = []
    replaced = [f"{p}." for p, new in swaps if new is not mods[p]]  # never loaded into
    kept = _Snapshot(model, skip=replaced) if root is None else None

    def swap(path, new):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        undo.append((parent, name, getattr(parent, name)))
        setattr(parent, name, new)

    try:
        for layer_path, new in swaps:
            swap(layer_path, new)
        if root is not None:
            model = root
        # BatchNorms folded into their convolutions: no entries in the file
        for name, mod in list(model.named_modules()):
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and name and \
                    f"{name}.running_mean" not in state and f"{name}.weight" not in state:
                swap(name, torch.nn.Identity())
        model.load_state_dict(state, strict=True)
    except Exception as err:
        for parent, name, old in reversed(undo):
            setattr(parent, name, old)
        if kept is not None:
            kept.restore(err)
        raise
    return model.eval()
