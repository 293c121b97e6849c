/**
 * @file nn/modules.h
 * Drop-in layers for LibTorch models: qat::nn::Linear, Conv1d, Conv2d,
 * Embedding, BatchNorm1d, BatchNorm2d.
 *
 * Each takes the same options and constructor arguments as its torch::nn
 * namesake and initialises its parameters identically, so switching a model
 * is a one-word change per layer:
 * @code
 *   struct Net : torch::nn::Module {
 *     qat::nn::Conv2d conv{nullptr};     // was torch::nn::Conv2d
 *     qat::nn::Linear fc{nullptr};       // was torch::nn::Linear
 *     ...
 *   };
 *   qat::prepare(*net, qat::QConfig::preset("int8"));  // in place: fake quant on
 *   ... train ...
 *   qat::convert(*net);                                // in place: int8 kernels
 * @endcode
 * A layer is floating point until prepared (identical to torch::nn), then a
 * QAT layer (children input_fake_quant / weight_fake_quant, the same state
 * dict keys as Python's qtorchext.nn.qat modules), then, after convert, a
 * quantized layer (the keys of qtorchext.nn.quantized). The object stays the
 * same, so members the model's forward calls directly keep working: the
 * pitfall of swapping registered children does not arise.
 */
#pragma once

#include <memory>

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/serialize/input-archive.h>

#include "qtorchext/nn/quantized.h"
#include "qtorchext/qconfig.h"

namespace qat::nn {

enum class Stage { kFloat, kQat, kQuantized };

namespace detail {
/// Constructor tags: take over an existing torch::nn module's tensors, or
/// build the quantized stage of a layer (used by from_torch / convert).
struct Adopt {};
struct QuantizedTag {};
}  // namespace detail

/// What every drop-in layer offers to prepare / convert / fuse_modules.
class QuantizableLayer;

namespace detail {
/// Receives the outputs of the drop-in layers' forward calls on this thread
/// while installed (qat::report); layers look it up with one thread-local read.
using OutputRecorder = std::function<void(const QuantizableLayer*, const at::Tensor&)>;
/// Installs recorder for this thread (nullptr removes it); returns the previous one.
const OutputRecorder* set_output_recorder(const OutputRecorder* recorder);
const OutputRecorder* output_recorder();
/// Receives the inputs of the drop-in layers' forward calls on this thread
/// while installed (qat::gptq collects Hessians with it).
using InputRecorder = OutputRecorder;
const InputRecorder* set_input_recorder(const InputRecorder* recorder);
const InputRecorder* input_recorder();
/// Installs an input recorder for the lifetime of the object.
class InputRecorderScope {
 public:
  explicit InputRecorderScope(const InputRecorder* r) : previous_(set_input_recorder(r)) {}
  ~InputRecorderScope() {
    set_input_recorder(previous_);
  }
  InputRecorderScope(const InputRecorderScope&) = delete;
  InputRecorderScope& operator=(const InputRecorderScope&) = delete;

 private:
  const InputRecorder* previous_;
};
}  // namespace detail

class QuantizableLayer {
 public:
  virtual ~QuantizableLayer() = default;
  Stage stage() const {
    return stage_;
  }
  /// Float -> QAT: creates the quantizers of `qconfig` (weight required).
  virtual void prepare(const QConfig& qconfig) = 0;
  /// QAT -> quantized, with the quantizers' current qparams.
  virtual void convert() = 0;
  /// Float -> quantized as `meta` says, with zero-filled buffers for a load to
  /// fill (qat::load_quantized).
  virtual void make_quantized(const QuantMeta& meta, bool has_bias) = 0;
  /// Applies ReLU to the output (fuse_modules).
  void fuse_relu() {
    activation_ = kRelu;
  }
  bool relu_fused() const {
    return activation_ == kRelu;
  }
  /// Applies GELU to the output (fuse_modules; linear layers): approximate
  /// "none" (erf) or "tanh", as torch::nn::GELU. The converted layer applies
  /// it to each block of its output while in cache.
  void fuse_gelu(const std::string& approximate = "none");
  /// The fused activation: qat::kNoActivation, kRelu, kGelu or kGeluTanh.
  int64_t activation() const {
    return activation_;
  }
  /// The input / weight quantizers (null in the float and quantized stages).
  torch::nn::Module* input_quantizer() const {
    return input_fake_quant.get();
  }
  torch::nn::Module* weight_quantizer() const {
    return weight_fake_quant.get();
  }
  /// The quantized state (quantized stage).
  const QuantizedState& quantized_state() const {
    return q_;
  }
  /// A weight quantizer that never ran observes `weight` once (convert, qat::gptq).
  void ensure_weight_qparams(const at::Tensor& weight) const;

  std::shared_ptr<torch::nn::Module> input_fake_quant;
  std::shared_ptr<torch::nn::Module> weight_fake_quant;

 protected:
  /// y, after handing it to this thread's output recorder if one is installed.
  at::Tensor recorded(at::Tensor y) const {
    if (const detail::OutputRecorder* r = detail::output_recorder()) {
      (*r)(this, y);
    }
    return y;
  }
  /// x, after handing it to this thread's input recorder if one is installed.
  const at::Tensor& seen(const at::Tensor& x) const {
    if (const detail::InputRecorder* r = detail::input_recorder()) {
      (*r)(this, x);
    }
    return x;
  }
  /// Creates and registers the quantizers on `owner`.
  void make_quantizers(torch::nn::Module& owner, const QConfig& qconfig, const at::Tensor& weight, bool use_activation);
  /// Re-registers clones of the quantizers (Cloneable::reset of a copy).
  void reregister_quantizers(torch::nn::Module& owner);
  /// The weight quantizer's output (per-group quantizers see [out, inputs]).
  at::Tensor fake_quant_weight(const at::Tensor& w) const;
  at::Tensor quantize_input(const at::Tensor& x) const;
  /// torch::load of `owner`: a converted layer checks the file's quant_meta and
  /// qparams before its buffers change (QuantizedState::load); other stages load
  /// as torch::nn::Module does.
  void load_stage(torch::nn::Module& owner, torch::serialize::InputArchive& archive);

  /// y after the fused activation (float and QAT stages).
  at::Tensor apply_activation(const at::Tensor& y) const;

  Stage stage_ = Stage::kFloat;
  int64_t activation_ = kNoActivation;
  QuantizedState q_;
};

/// Drop-in torch::nn::BatchNorm{1,2}d; after fuse_modules it is part of its
/// convolution and passes its input through unchanged.
template <size_t D, class Derived>
class BatchNormImpl : public torch::nn::Cloneable<Derived> {
 public:
  using Options = torch::nn::BatchNormOptions;
  using TorchBatchNorm =
      std::conditional_t<D == 1, torch::nn::BatchNorm1dImpl, torch::nn::BatchNorm2dImpl>;
  explicit BatchNormImpl(int64_t num_features) : BatchNormImpl(Options(num_features)) {}
  explicit BatchNormImpl(const Options& options);
  BatchNormImpl(detail::Adopt, std::shared_ptr<TorchBatchNorm> bn);
  /// A drop-in around an existing torch::nn BatchNorm (same tensors).
  static std::shared_ptr<Derived> from_torch(std::shared_ptr<TorchBatchNorm> bn) {
    return std::make_shared<Derived>(detail::Adopt{}, std::move(bn));
  }
  void reset() override;
  at::Tensor forward(const at::Tensor& x);
  void train(bool on = true) override;
  /// The BatchNorm computation itself (what a fused convolution calls).
  at::Tensor normalize(const at::Tensor& x);
  void mark_fused() {
    fused_ = true;
  }
  bool fused() const {
    return fused_;
  }
  void pretty_print(std::ostream& stream) const override;

  Options options;
  at::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  void adopt(std::shared_ptr<TorchBatchNorm> impl);
  std::shared_ptr<TorchBatchNorm> impl_;  // the torch::nn BatchNorm doing the math
  bool fused_ = false;
};

class BatchNorm1dImpl : public BatchNormImpl<1, BatchNorm1dImpl> {
 public:
  using BatchNormImpl::BatchNormImpl;
};
TORCH_MODULE(BatchNorm1d);

class BatchNorm2dImpl : public BatchNormImpl<2, BatchNorm2dImpl> {
 public:
  using BatchNormImpl::BatchNormImpl;
};
TORCH_MODULE(BatchNorm2d);

/// Drop-in torch::nn::Linear.
class LinearImpl : public torch::nn::Cloneable<LinearImpl>, public QuantizableLayer {
 public:
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const torch::nn::LinearOptions& options);
  LinearImpl(detail::Adopt, const torch::nn::LinearImpl& linear);
  LinearImpl(detail::QuantizedTag, const torch::nn::LinearOptions& options, const QuantMeta& meta);
  /// A drop-in holding the parameters of a torch::nn::Linear (shared).
  static std::shared_ptr<LinearImpl> from_torch(const torch::nn::LinearImpl& linear) {
    return std::make_shared<LinearImpl>(detail::Adopt{}, linear);
  }
  void reset() override;
  void reset_parameters();
  at::Tensor forward(const at::Tensor& x) {
    return recorded(forward_unrecorded(seen(x)));
  }
  /// forward without the output recorder.
  at::Tensor forward_unrecorded(const at::Tensor& x);
  void prepare(const QConfig& qconfig) override;
  void convert() override;
  void make_quantized(const QuantMeta& meta, bool has_bias) override;
  void pretty_print(std::ostream& stream) const override;
  /// As torch.nn.Module.to in Python, a dtype converts only the floating
  /// point parameters and buffers (a converted layer's integer codes, zero
  /// points and quant_meta keep their dtypes; LibTorch's Module::to would
  /// cast them too).
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  /// torch::load: a converted layer checks the file's quant_meta and qparams
  /// before it changes anything (QuantizedState::load); SmoothQuant factors
  /// in the file are checked and taken (load_input_smooth).
  void load(torch::serialize::InputArchive& archive) override;
  /// SmoothQuant (qat::smooth_quant): multiplies the weight's input columns
  /// by `factors` [in_features] (finite, > 0) and from now on divides the
  /// input by them, in every stage (float, QAT, converted), so the float
  /// output is unchanged up to rounding; a smoothed layer composes the
  /// factors. Float stage only. State dict key `input_smooth` (Python:
  /// qtorchext.nn.intrinsic.SmoothLinear and the QAT / converted Linears).
  void smooth(const at::Tensor& factors);
  /// A state's `input_smooth` entry for this layer (nullptr: none): checked,
  /// and registered when the layer has no factors yet, so a smoothed
  /// checkpoint never loads its weights without them.
  void load_input_smooth(const at::Tensor* saved, const std::string& where);

  torch::nn::LinearOptions options;
  at::Tensor weight, bias;
  /// SmoothQuant factors (undefined: none); see smooth().
  at::Tensor input_smooth;

 private:
  void register_input_smooth(const at::Tensor& factors);
};
TORCH_MODULE(Linear);

/// Drop-in torch::nn::Conv{1,2}d: any groups (grouped and depthwise), padding (numbers,
/// "valid", "same") and padding_mode convert.
template <size_t D, class Derived>
class ConvImpl : public torch::nn::Cloneable<Derived>, public QuantizableLayer {
 public:
  using Options = torch::nn::ConvOptions<D>;
  using TorchConv = std::conditional_t<D == 1, torch::nn::Conv1dImpl, torch::nn::Conv2dImpl>;
  using BatchNorm = std::conditional_t<D == 1, BatchNorm1dImpl, BatchNorm2dImpl>;

  ConvImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<D> kernel_size)
      : ConvImpl(Options(in_channels, out_channels, kernel_size)) {}
  explicit ConvImpl(Options options);
  ConvImpl(detail::Adopt, const TorchConv& conv);
  ConvImpl(detail::QuantizedTag, const Options& options, const QuantMeta& meta, bool has_bias);
  /// A drop-in holding the parameters of a torch::nn convolution (shared).
  static std::shared_ptr<Derived> from_torch(const TorchConv& conv) {
    return std::make_shared<Derived>(detail::Adopt{}, conv);
  }
  void reset() override;
  at::Tensor forward(const at::Tensor& x) {
    return recorded(forward_unrecorded(seen(x)));
  }
  /// forward without the output recorder.
  at::Tensor forward_unrecorded(const at::Tensor& x);
  void prepare(const QConfig& qconfig) override;
  void convert() override;
  void make_quantized(const QuantMeta& meta, bool has_bias) override;
  void train(bool on = true) override;
  /// Absorbs a BatchNorm (registered as child "bn"; it passes through after).
  void fuse_bn(std::shared_ptr<BatchNorm> bn);
  /// BatchNorm keeps its running statistics (QAT Conv+BN).
  void freeze_bn_stats();
  void update_bn_stats();
  void pretty_print(std::ostream& stream) const override;
  /// As torch.nn.Module.to in Python, a dtype converts only the floating
  /// point parameters and buffers (a converted layer's integer codes, zero
  /// points and quant_meta keep their dtypes; LibTorch's Module::to would
  /// cast them too).
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  /// torch::load: a converted layer checks the file's quant_meta and qparams
  /// before it changes anything (QuantizedState::load).
  void load(torch::serialize::InputArchive& archive) override;

  Options options;
  at::Tensor weight, bias;
  std::shared_ptr<BatchNorm> bn;

 private:
  at::Tensor conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const;
  bool freeze_bn_ = false;
};

class Conv1dImpl : public ConvImpl<1, Conv1dImpl> {
 public:
  using ConvImpl::ConvImpl;
};
TORCH_MODULE(Conv1d);

class Conv2dImpl : public ConvImpl<2, Conv2dImpl> {
 public:
  using ConvImpl::ConvImpl;
};
TORCH_MODULE(Conv2d);

/// Drop-in torch::nn::Embedding (weight-only quantization).
class EmbeddingImpl : public torch::nn::Cloneable<EmbeddingImpl>, public QuantizableLayer {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
      : EmbeddingImpl(torch::nn::EmbeddingOptions(num_embeddings, embedding_dim)) {}
  explicit EmbeddingImpl(const torch::nn::EmbeddingOptions& options);
  EmbeddingImpl(detail::Adopt, const torch::nn::EmbeddingImpl& embedding);
  EmbeddingImpl(detail::QuantizedTag, const torch::nn::EmbeddingOptions& options, const QuantMeta& meta);
  static std::shared_ptr<EmbeddingImpl> from_torch(const torch::nn::EmbeddingImpl& embedding) {
    return std::make_shared<EmbeddingImpl>(detail::Adopt{}, embedding);
  }
  void reset() override;
  at::Tensor forward(const at::Tensor& indices) {
    return recorded(forward_unrecorded(seen(indices)));
  }
  /// forward without the output recorder.
  at::Tensor forward_unrecorded(const at::Tensor& indices);
  void prepare(const QConfig& qconfig) override;
  void convert() override;
  void make_quantized(const QuantMeta& meta, bool has_bias) override;
  void pretty_print(std::ostream& stream) const override;
  /// As torch.nn.Module.to in Python, a dtype converts only the floating
  /// point parameters and buffers (a converted layer's integer codes, zero
  /// points and quant_meta keep their dtypes; LibTorch's Module::to would
  /// cast them too).
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  /// torch::load: a converted layer checks the file's quant_meta and qparams
  /// before it changes anything (QuantizedState::load).
  void load(torch::serialize::InputArchive& archive) override;

  torch::nn::EmbeddingOptions options;
  at::Tensor weight;

 private:
  void note_output_dtype(torch::Dtype dtype);
  std::optional<at::ScalarType> output_dtype_;  // a converted layer after to(dtype)
};
TORCH_MODULE(Embedding);

/// The quantizable-layer interface of a module (nullptr if it is not one).
QuantizableLayer* as_quantizable(torch::nn::Module& module);

/**
 * Calls the forward of a module held untyped, as in a ModuleList or
 * ModuleDict: qtorchext's layers and the torch::nn layers prepare/convert can
 * put or leave there (Linear, Conv1d, Conv2d, Embedding, BatchNorm1d/2d,
 * ReLU, Identity, Dropout, Flatten, Sequential). prepare() replaces a plain
 * torch::nn::Linear in a ModuleList by a qat::nn::Linear, so
 * `list[i]->as<torch::nn::Linear>()` is nullptr afterwards; call
 * `qat::nn::forward(*list[i], x)` instead. Any other type is an error that
 * names it.
 */
at::Tensor forward(torch::nn::Module& module, const at::Tensor& input);

}  // namespace qat::nn
