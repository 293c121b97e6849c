/**
 * @file quantize.h
 * Model-level workflows for LibTorch models: fuse_modules, prepare (QAT),
 * convert, and the switches applied to whole models. The twins of
 * qtorchext.fuse_modules / prepare_qat / convert in Python.
 *
 * The prepare pitfall: a LibTorch model usually calls typed members
 * (`fc1->forward(x)`), so replacing a registered child would silently leave
 * the model in floating point. Therefore:
 *  - qtorchext's drop-in layers (nn/modules.h) are prepared and converted in
 *    place, whatever holds them;
 *  - torch::nn::Sequential, ModuleList and ModuleDict are rebuilt in place,
 *    their plain torch::nn layers replaced by drop-ins (sharing parameters);
 *  - a plain torch::nn::Linear / Conv1d / Conv2d / Embedding held by any other
 *    module is an error naming its path and the drop-in type to use (or give
 *    it a nullopt qconfig to leave it in floating point).
 */
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "qtorchext/qconfig.h"

namespace qat {

/// Per-module qconfigs: by module path (a path covers its submodules), by
/// layer kind ("type:Linear", "type:Conv1d", "type:Conv2d", "type:Embedding";
/// Python's dict takes the types themselves), or "" (the default). The
/// longest matching path wins, then the kind, then "". nullopt leaves the
/// layers in floating point.
using QConfigMap = std::map<std::string, std::optional<QConfig>>;

/// Makes every quantizable layer a QAT layer (in place). Returns how many.
/// Throws if none could be prepared.
/// group_fallback: for a layer whose width a per-group weight quantizer's group
/// size does not divide: "" (an error naming the layer), "per_channel" (that
/// layer's weights per output channel) or "float" (that layer left in float);
/// a warning lists the layers that fell back.
int64_t prepare(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const QConfigMap& per_module = {},
    const std::string& group_fallback = "");

/// The same as prepare(), by the name Python uses (qtorchext.prepare_qat; in
/// Python, qtorchext.prepare is the post-training one, C++'s prepare_ptq).
inline int64_t prepare_qat(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const QConfigMap& per_module = {},
    const std::string& group_fallback = "") {
  return prepare(model, qconfig, per_module, group_fallback);
}

/// Makes every QAT layer a quantized inference layer (in place), with the
/// quantizers' current qparams. Returns how many; throws if there are none.
/// A static input quantizer whose observer never saw data (no calibration or
/// training ran, or only empty batches) has no qparams but its initial scale
/// 1.0: an error naming the first such layer, before anything changes, unless
/// allow_unobserved (then those layers quantize their inputs with scale 1.0).
int64_t convert(torch::nn::Module& model, bool allow_unobserved = false);

/**
 * Fuses groups of modules given by path, e.g. {{"conv", "bn", "relu"}}:
 * Linear+ReLU, Linear+GELU, Conv1d/2d+ReLU, Conv1d/2d+BatchNorm1d/2d(+ReLU).
 * The first layer absorbs the others; their registered entries become
 * Identity (a drop-in BatchNorm passes through afterwards, a ReLU applied
 * twice is harmless; a GELU must be held by a container such as Sequential,
 * else it is refused: it would run twice). Before prepare.
 */
void fuse_modules(torch::nn::Module& model, const std::vector<std::vector<std::string>>& groups);

namespace detail {
/// Which layers a prepare may touch (the others stay as they are).
using LayerFilter = std::function<bool(const torch::nn::Module&)>;
/// Whether m (a qtorchext drop-in or the torch::nn layer) is of the kind
/// named Linear, Conv1d, Conv2d or Embedding; throws for other names.
bool is_layer_kind(const torch::nn::Module& m, const std::string& kind, const char* what);
/// prepare() restricted to the layers `accept` admits.
int64_t prepare_layers(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const QConfigMap& per_module,
    const LayerFilter& accept,
    const std::string& group_fallback = "");
/// Replaces every plain torch::nn::Linear a container (Sequential,
/// ModuleList, ModuleDict) holds by a qat::nn::Linear sharing its parameters,
/// as prepare does; returns the paths of plain Linears held directly by a
/// module (their forward cannot be replaced: declare them as qat::nn::Linear).
std::vector<std::string> drop_in_linears(torch::nn::Module& model);
}  // namespace detail

/// Switches of every fake quantizer in the model.
void enable_observer(torch::nn::Module& model, bool on = true);
void disable_observer(torch::nn::Module& model);
void enable_fake_quant(torch::nn::Module& model, bool on = true);
void disable_fake_quant(torch::nn::Module& model);
/// QAT Conv+BatchNorm layers keep (or resume updating) running statistics.
void freeze_bn_stats(torch::nn::Module& model);
void update_bn_stats(torch::nn::Module& model);

}  // namespace qat
