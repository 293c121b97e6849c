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

#include <map>
#include <string>
#include <vector>

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

/**
 * Loads a converted model's file (qat::save_state_dict of a converted model, or
 * Python's qtorchext.save_state_dict) into the float model it was converted
 * from, without repeating the recipe (qconfig, prepare, convert): every layer
 * the file holds as converted is rebuilt from its stored quant_meta (bits,
 * group size, input mode, fused ReLU), then the whole file is loaded as by
 * load_state_dict (qparams validated). Plain torch::nn layers in Sequential /
 * ModuleList / ModuleDict become drop-ins, as qat::prepare makes them. A
 * BatchNorm folded into its convolution (fuse_modules) has no entries in the
 * file: a drop-in one passes its input through afterwards, a plain one in a
 * container becomes Identity. The model is left in eval mode. Returns how many
 * layers were rebuilt. Python: qtorchext.load_quantized.
 */
int64_t load_quantized(torch::nn::Module& model, const std::string& path);

namespace detail {
/// The {name: tensor} dict of a state dict file (errors name the path).
std::map<std::string, at::Tensor> read_state_file(const std::string& path);
/// load_state_dict of an already read file (`path` for messages).
void load_state(torch::nn::Module& module, const std::map<std::string, at::Tensor>& saved, const std::string& path);
/// The module paths of the converted layers in a state dict (their quant_meta).
std::vector<std::string> converted_paths(const std::map<std::string, at::Tensor>& state);
}  // namespace detail

}  // namespace qat
