// Schemas and typed C++ entry points of the converted-layer ops: one op per
// converted layer's forward (quantized_linear, quantized_conv,
// quantized_embedding), the packing of a float weight into a layer's stored
// tensors (pack_quantized_weight), and BatchNorm folding (fold_batch_norm).
// Kernels: csrc/ops/layer/.
#include <torch/library.h>

#include "ops/dispatch.h"
#include "qtorchext/ops.h"
#include "qtorchext/quant_meta.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "quantized_linear(Tensor input, Tensor weight, Tensor? weight_scale, "
      "Tensor? weight_zero_point, Tensor? bias, Tensor? input_scale, Tensor? input_zero_point, "
      "int[] quant_meta, int in_features) -> Tensor",
      tags);
  m.def(
      "quantized_conv(Tensor input, Tensor weight, Tensor? weight_scale, "
      "Tensor? weight_zero_point, Tensor? bias, Tensor? input_scale, Tensor? input_zero_point, "
      "int[] quant_meta, int in_channels, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, int groups, str padding_mode) -> Tensor",
      tags);
  m.def(
      "quantized_embedding(Tensor indices, Tensor weight, Tensor? weight_scale, "
      "Tensor? weight_zero_point, int[] quant_meta, int embedding_dim) -> Tensor",
      tags);
  m.def(
      "pack_quantized_weight(Tensor weight, Tensor? scale, Tensor? zero_point, int[] quant_meta) "
      "-> Tensor[]",
      tags);
  m.def(
      "fold_batch_norm(Tensor weight, Tensor? bias, Tensor running_mean, Tensor running_var, "
      "Tensor? bn_weight, Tensor? bn_bias, float eps) -> (Tensor, Tensor)",
      tags);
  // A load-time check of a converted layer's stored qparams (qat::check_layer_qparams),
  // for Python's load paths; not part of any forward.
  m.def(
      "check_layer_qparams(int[] quant_meta, str[] names, Tensor[] tensors, str where) -> ()",
      [](c10::IntArrayRef quant_meta, const std::vector<std::string>& names,
         const std::vector<at::Tensor>& tensors, const std::string& where) {
        TORCH_CHECK(
            names.size() == tensors.size(), "check_layer_qparams: ", names.size(), " names for ",
            tensors.size(), " tensors");
        std::vector<std::pair<std::string, at::Tensor>> state;
        for (size_t i = 0; i < names.size(); ++i) {
          state.emplace_back(names[i], tensors[i]);
        }
        qat::check_layer_qparams(qat::QuantMeta::from_list(quant_meta, where), state, where);
      });
}

namespace qat {

using OptTensor = std::optional<at::Tensor>;

at::Tensor quantized_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const OptTensor& weight_scale,
    const OptTensor& weight_zero_point,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    at::IntArrayRef quant_meta,
    int64_t in_features) {
  return QTORCHEXT_CALL_OP(
      "quantized_linear",
      at::Tensor(
          const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
          const OptTensor&, const OptTensor&, const OptTensor&, at::IntArrayRef, int64_t),
      input, weight, weight_scale, weight_zero_point, bias, input_scale, input_zero_point,
      quant_meta, in_features);
}

at::Tensor quantized_conv(
    const at::Tensor& input,
    const at::Tensor& weight,
    const OptTensor& weight_scale,
    const OptTensor& weight_zero_point,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    at::IntArrayRef quant_meta,
    int64_t in_channels,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    c10::string_view padding_mode) {
  return QTORCHEXT_CALL_OP(
      "quantized_conv",
      at::Tensor(
          const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
          const OptTensor&, const OptTensor&, const OptTensor&, at::IntArrayRef, int64_t,
          at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
          c10::string_view),
      input, weight, weight_scale, weight_zero_point, bias, input_scale, input_zero_point,
      quant_meta, in_channels, kernel_size, stride, padding, dilation, groups, padding_mode);
}

at::Tensor quantized_embedding(
    const at::Tensor& indices,
    const at::Tensor& weight,
    const OptTensor& weight_scale,
    const OptTensor& weight_zero_point,
    at::IntArrayRef quant_meta,
    int64_t embedding_dim) {
  return QTORCHEXT_CALL_OP(
      "quantized_embedding",
      at::Tensor(
          const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
          at::IntArrayRef, int64_t),
      indices, weight, weight_scale, weight_zero_point, quant_meta, embedding_dim);
}

std::vector<at::Tensor> pack_quantized_weight(
    const at::Tensor& weight,
    const OptTensor& scale,
    const OptTensor& zero_point,
    at::IntArrayRef quant_meta) {
  return QTORCHEXT_CALL_OP(
      "pack_quantized_weight",
      std::vector<at::Tensor>(const at::Tensor&, const OptTensor&, const OptTensor&, at::IntArrayRef),
      weight, scale, zero_point, quant_meta);
}

std::tuple<at::Tensor, at::Tensor> fold_batch_norm(
    const at::Tensor& weight,
    const OptTensor& bias,
    const at::Tensor& running_mean,
    const at::Tensor& running_var,
    const OptTensor& bn_weight,
    const OptTensor& bn_bias,
    double eps) {
  using Sig = std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
      const OptTensor&, const OptTensor&, double);
  return QTORCHEXT_CALL_OP(
      "fold_batch_norm",
      Sig,
      weight, bias, running_mean, running_var, bn_weight, bn_bias, eps);
}

}  // namespace qat
