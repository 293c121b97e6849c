/**
 * @file serialize.h
 * State dicts shared with Python.
 *
 * Format: a plain dict {name: tensor} in the file format of Python's
 * torch.save (PyTorch's zip-based pickle, read here with
 * torch::jit::pickle_load), so a file saved by either language loads into
 * the other. Python writes it with qtorchext.save_state_dict(module, path) or
 * torch.save(dict(module.state_dict()), path); the OrderedDict that
 * module.state_dict() returns is not readable by LibTorch. Names are the modules' parameter and buffer
 * names ("activation_post_process.min_val", ...), identical in both
 * frontends.
 */
#pragma once

#include <string>

#include <torch/nn/module.h>

namespace qat {

/// Writes the parameters and buffers of `module` to `path` (through a
/// temporary file and a rename: an existing file is never left half written).
void save_state_dict(const torch::nn::Module& module, const std::string& path);

/**
 * Loads a state dict into `module`: the key sets must match (the error lists
 * missing and unexpected keys), dtypes must match, shapes must match except
 * for 1-D statistics and qparams, which take the saved size (per-channel
 * state is sized by the first batch). Fake quantizers re-read their flags.
 */
void load_state_dict(torch::nn::Module& module, const std::string& path);

}  // namespace qat
