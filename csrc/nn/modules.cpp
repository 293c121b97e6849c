// Drop-in layers: float (as torch::nn), QAT (as python/qtorchext/nn/qat.py)
// and quantized (as python/qtorchext/nn/quantized.py), one object each.
#include "qtorchext/nn/modules.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/ops.h"
#include "qtorchext/smooth_quant.h"

namespace qat::nn {
namespace {

const char* stage_name(Stage s) {
  return s == Stage::kFloat ? "float" : (s == Stage::kQat ? "qat" : "quantized");
}

FakeQuantizeInterface& fq_of(const std::shared_ptr<torch::nn::Module>& m) {
  auto* f = as_fake_quantize(*m);
  TORCH_CHECK(f != nullptr, "expected a fake quantizer, got ", m->name());
  return *f;
}

std::optional<int64_t> group_size_of(torch::nn::Module* wq) {
  if (auto* f = dynamic_cast<FakeQuantizeImpl*>(wq)) {
    return f->observer().observer_options().group_size();
  }
  return std::nullopt;
}

std::shared_ptr<torch::nn::Module> clone_or_null(const std::shared_ptr<torch::nn::Module>& m) {
  return m ? m->clone() : nullptr;
}

}  // namespace

// ---------------------------------------------------------------------------
// QuantizableLayer
// ---------------------------------------------------------------------------

void QuantizableLayer::fuse_gelu(const std::string& approximate) {
  TORCH_CHECK_VALUE(
      approximate == "none" || approximate == "tanh", "fuse_gelu: approximate must be \"none\" or "
      "\"tanh\" (as torch::nn::GELU), got \"", approximate, "\"");
  TORCH_CHECK(
      stage_ == Stage::kFloat, "fuse_gelu: fuse before qat::prepare; the layer is ", stage_name(stage_));
  TORCH_CHECK_VALUE(
      dynamic_cast<const LinearImpl*>(this) != nullptr, "fuse_gelu: a GELU fuses into a Linear, "
      "not a ", dynamic_cast<const torch::nn::Module*>(this) ? dynamic_cast<const torch::nn::Module*>(this)->name() : "layer");
  activation_ = approximate == "tanh" ? kGeluTanh : kGelu;
}

at::Tensor QuantizableLayer::apply_activation(const at::Tensor& y) const {
  switch (activation_) {
    case kRelu:
      return at::relu(y);
    case kGelu:
      return at::gelu(y, "none");
    case kGeluTanh:
      return at::gelu(y, "tanh");
    default:
      return y;
  }
}

void QuantizableLayer::make_quantizers(
    torch::nn::Module& owner,
    const QConfig& qconfig,
    const at::Tensor& weight,
    bool use_activation) {
  TORCH_CHECK(stage_ == Stage::kFloat, owner.name(), " is already ", stage_name(stage_));
  TORCH_CHECK(
      static_cast<bool>(qconfig.weight), owner.name(), ": the qconfig must have a weight quantizer");
  auto wq = qconfig.weight();
  TORCH_CHECK(as_fake_quantize(*wq) != nullptr, "QConfig.weight must make a fake quantizer");
  if (auto* l = dynamic_cast<LearnableFakeQuantizeImpl*>(wq.get())) {
    const auto axis = l->observer().observer_options().ch_axis();
    if (axis.has_value()) {
      l->resize(weight.size(*axis));
    }
  }
  const auto group = group_size_of(wq.get());
  const int64_t k = weight.numel() / std::max<int64_t>(weight.size(0), 1);
  TORCH_CHECK(
      !group.has_value() || k % *group == 0, owner.name(), ": weight group_size ", group.value_or(0),
      " does not divide the ", k, " inputs per output channel");
  // The quantizers live where the layer does (a model prepared on the GPU trains there).
  wq->to(weight.device());
  if (use_activation && qconfig.activation) {
    auto aq = qconfig.activation();
    aq->to(weight.device());
    input_fake_quant = owner.register_module("input_fake_quant", aq);
  }
  weight_fake_quant = owner.register_module("weight_fake_quant", wq);
  stage_ = Stage::kQat;
}

void QuantizableLayer::reregister_quantizers(torch::nn::Module& owner) {
  if (input_fake_quant) {
    input_fake_quant = owner.register_module("input_fake_quant", clone_or_null(input_fake_quant));
  }
  if (weight_fake_quant) {
    weight_fake_quant = owner.register_module("weight_fake_quant", clone_or_null(weight_fake_quant));
  }
}

at::Tensor QuantizableLayer::fake_quant_weight(const at::Tensor& w) const {
  if (group_size_of(weight_fake_quant.get()).has_value() && w.dim() > 2) {
    return fq_of(weight_fake_quant).forward(w.reshape({w.size(0), -1})).reshape(w.sizes());
  }
  return fq_of(weight_fake_quant).forward(w);
}

at::Tensor QuantizableLayer::quantize_input(const at::Tensor& x) const {
  return input_fake_quant ? fq_of(input_fake_quant).forward(x) : x;
}

void QuantizableLayer::ensure_weight_qparams(const at::Tensor& weight) const {
  auto* f = dynamic_cast<FakeQuantizeImpl*>(weight_fake_quant.get());
  if (f == nullptr) {
    return;
  }
  const at::Tensor seen = find_buffer(*f->activation_post_process, "min_val");
  if (seen.defined() && seen.numel() > 0 && !seen.isinf().all().item<bool>()) {
    return;
  }
  torch::NoGradGuard guard;
  const bool on = f->is_observer_enabled();
  f->enable_observer(true);
  f->forward(group_size_of(f).has_value() ? weight.reshape({weight.size(0), -1}) : weight);
  f->enable_observer(on);
}

void QuantizableLayer::load_stage(torch::nn::Module& owner, torch::serialize::InputArchive& archive) {
  if (stage_ == Stage::kQuantized) {
    q_.load(owner, archive);
  } else {
    owner.torch::nn::Module::load(archive);
  }
}

QuantizableLayer* as_quantizable(torch::nn::Module& module) {
  return dynamic_cast<QuantizableLayer*>(&module);
}

static void to_floating_only(
    torch::nn::Module& module,
    std::optional<torch::Device> device,
    torch::Dtype dtype,
    bool non_blocking) {
  for (const auto& child : module.children()) {
    if (device.has_value()) {
      child->to(*device, dtype, non_blocking);
    } else {
      child->to(dtype, non_blocking);
    }
  }
  // A converted layer's buffers keep their dtypes (scales rounded to half would
  // compute something else); it follows the input's dtype instead.
  auto* q = as_quantizable(module);
  const bool keep = q != nullptr && q->stage() == Stage::kQuantized;
  const auto move = [&](at::Tensor t) {
    const at::ScalarType target = t.is_floating_point() && !keep ? dtype : t.scalar_type();
    t.set_data(t.to(device.value_or(t.device()), target, non_blocking));
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) {
    move(p.value());
  }
  for (auto& b : module.named_buffers(/*recurse=*/false)) {
    move(b.value());
  }
}

namespace {
template <class... Ts>
bool try_forward(torch::nn::Module& module, const at::Tensor& input, at::Tensor& out) {
  return ([&] {
    if (auto* m = dynamic_cast<Ts*>(&module)) {
      out = m->forward(input);
      return true;
    }
    return false;
  }() || ...);
}
}  // namespace

at::Tensor forward(torch::nn::Module& module, const at::Tensor& input) {
  at::Tensor out;
  if (try_forward<
          LinearImpl, Conv1dImpl, Conv2dImpl, EmbeddingImpl, BatchNorm1dImpl, BatchNorm2dImpl,
          torch::nn::LinearImpl, torch::nn::Conv1dImpl, torch::nn::Conv2dImpl, torch::nn::EmbeddingImpl,
          torch::nn::BatchNorm1dImpl, torch::nn::BatchNorm2dImpl, torch::nn::ReLUImpl,
          torch::nn::IdentityImpl, torch::nn::DropoutImpl, torch::nn::FlattenImpl>(module, input, out)) {
    return out;
  }
  if (auto* seq = dynamic_cast<torch::nn::SequentialImpl*>(&module)) {
    return seq->forward(input);
  }
  TORCH_CHECK(
      false, "qat::nn::forward: module of type ", module.name(),
      " is not one qtorchext knows how to call; call it through its own type");
}

// ---------------------------------------------------------------------------
// BatchNorm
// ---------------------------------------------------------------------------

template <size_t D, class Derived>
BatchNormImpl<D, Derived>::BatchNormImpl(const Options& options_) : options(options_) {
  reset();
}

template <size_t D, class Derived>
void BatchNormImpl<D, Derived>::adopt(std::shared_ptr<TorchBatchNorm> impl) {
  impl_ = std::move(impl);
  options = impl_->options;
  if (options.affine()) {
    weight = this->register_parameter("weight", impl_->weight);
    bias = this->register_parameter("bias", impl_->bias);
  }
  if (options.track_running_stats()) {
    running_mean = this->register_buffer("running_mean", impl_->running_mean);
    running_var = this->register_buffer("running_var", impl_->running_var);
    num_batches_tracked = this->register_buffer("num_batches_tracked", impl_->num_batches_tracked);
  }
  impl_->train(this->is_training());
}

template <size_t D, class Derived>
void BatchNormImpl<D, Derived>::reset() {
  adopt(std::make_shared<TorchBatchNorm>(options));
}

template <size_t D, class Derived>
BatchNormImpl<D, Derived>::BatchNormImpl(detail::Adopt, std::shared_ptr<TorchBatchNorm> bn)
    : options(bn->options) {
  adopt(std::move(bn));
}

template <size_t D, class Derived>
at::Tensor BatchNormImpl<D, Derived>::forward(const at::Tensor& x) {
  return fused_ ? x : normalize(x);
}

template <size_t D, class Derived>
at::Tensor BatchNormImpl<D, Derived>::normalize(const at::Tensor& x) {
  return impl_->forward(x);
}

template <size_t D, class Derived>
void BatchNormImpl<D, Derived>::train(bool on) {
  torch::nn::Module::train(on);
  impl_->train(on);
}

template <size_t D, class Derived>
void BatchNormImpl<D, Derived>::pretty_print(std::ostream& stream) const {
  stream << "qat::nn::BatchNorm" << D << "d(" << options.num_features()
         << (fused_ ? ", fused into its convolution)" : ")");
}

template class BatchNormImpl<1, BatchNorm1dImpl>;
template class BatchNormImpl<2, BatchNorm2dImpl>;

// ---------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------

LinearImpl::LinearImpl(const torch::nn::LinearOptions& options_) : options(options_) {
  reset();
}

LinearImpl::LinearImpl(detail::Adopt, const torch::nn::LinearImpl& linear)
    : options(linear.options) {
  weight = register_parameter("weight", linear.weight);
  if (linear.bias.defined()) {
    bias = register_parameter("bias", linear.bias);
  }
}

LinearImpl::LinearImpl(
    detail::QuantizedTag,
    const torch::nn::LinearOptions& options_,
    const QuantMeta& meta)
    : options(options_) {
  stage_ = Stage::kQuantized;
  activation_ = meta.activation;
  q_.meta = meta;
  reset();
}

void LinearImpl::reset() {
  if (input_smooth.defined()) {  // a clone (Cloneable::clone copies the values after reset)
    register_input_smooth(input_smooth.clone());
  }
  if (stage_ == Stage::kQuantized) {
    q_.setup(*this, q_.meta, options.out_features(), options.in_features(), options.bias(), {});
    return;
  }
  // Initialised exactly as torch::nn::Linear (same draws from the generator).
  torch::nn::Linear init(options);
  weight = register_parameter("weight", init->weight);
  if (options.bias()) {
    bias = register_parameter("bias", init->bias);
  }
  if (stage_ == Stage::kQat) {
    reregister_quantizers(*this);
  }
}

void LinearImpl::reset_parameters() {
  torch::nn::Linear init(options);
  torch::NoGradGuard guard;
  weight.copy_(init->weight);
  if (bias.defined()) {
    bias.copy_(init->bias);
  }
}

at::Tensor LinearImpl::forward_unrecorded(const at::Tensor& input) {
  // SmoothQuant: the input divided by the factors, in its dtype (Python's smooth_input); a
  // converted layer divides float64 inputs in float32, where its op computes
  // converted layer divides other dtypes in float32, where its op computes (a float64 or half
  // model gets the float32 model's codes); half / bfloat16 inputs are always divided in float32
  at::Tensor x = input;
  if (input_smooth.defined()) {
    const at::ScalarType t = input.scalar_type();
    const bool half = t == at::kHalf || t == at::kBFloat16;
    x = (stage_ == Stage::kQuantized && t != at::kFloat) || half
        ? (input.to(at::kFloat) / input_smooth.to(at::kFloat)).to(t)
        : input / input_smooth.to(t);
  }
  at::Tensor y;
  switch (stage_) {
    case Stage::kQuantized: {
      const QuantizedState::Args a = q_.args(*this);
      return qat::quantized_linear(
          x, a.weight, a.weight_scale, a.weight_zero_point, a.bias, a.input_scale,
          a.input_zero_point, q_.meta.to_list(), options.in_features());
    }
    case Stage::kQat:
      y = at::linear(quantize_input(x), fake_quant_weight(weight), bias);
      break;
    default:
      y = at::linear(x, weight, bias);
  }
  return apply_activation(y);
}

void LinearImpl::prepare(const QConfig& qconfig) {
  make_quantizers(*this, qconfig, weight, /*use_activation=*/true);
}

void LinearImpl::convert() {
  TORCH_CHECK(
      stage_ == Stage::kQat, "qat::nn::Linear::convert: the layer is ", stage_name(stage_),
      "; call qat::prepare first");
  ensure_weight_qparams(weight);
  const QuantMeta meta =
      meta_for(kLinear, weight_fake_quant.get(), input_fake_quant.get(), activation_);
  LinearImpl next(detail::QuantizedTag{}, options, meta);
  next.q_.fill(next, weight, bias, weight_fake_quant.get(), input_fake_quant.get());
  next.train(false);
  const at::Tensor smooth = input_smooth.defined() ? input_smooth.detach().to(at::kFloat).clone() : at::Tensor();
  *this = std::move(next);
  if (smooth.defined()) {
    register_input_smooth(smooth);
  }
}

void LinearImpl::register_input_smooth(const at::Tensor& factors) {
  input_smooth = register_buffer("input_smooth", factors);
}

void LinearImpl::smooth(const at::Tensor& factors) {
  TORCH_CHECK(
      stage_ == Stage::kFloat, "qat::nn::Linear::smooth: the layer is ", stage_name(stage_),
      "; smooth the float model, then prepare it");
  check_smooth_factors(factors, options.in_features(), "qat::nn::Linear::smooth: factors");
  torch::NoGradGuard guard;
  const at::Tensor f = factors.detach().to(weight.device(), at::kFloat);
  // a new parameter: a weight shared with another module stays as it was there
  at::Tensor w = weight.detach() * f.to(weight.scalar_type());
  w.set_requires_grad(weight.requires_grad());
  parameters_["weight"] = w;
  weight = w;
  register_input_smooth(input_smooth.defined() ? input_smooth.to(at::kFloat) * f : f.clone());
}

void LinearImpl::load_input_smooth(const at::Tensor* saved, const std::string& where) {
  if (saved == nullptr) {
    return;
  }
  check_smooth_factors(*saved, options.in_features(), where + "input_smooth");
  if (!input_smooth.defined()) {
    // where the layer lives (a converted layer has no float weight: its buffers)
    at::Device dev = saved->device();
    for (const auto& t : buffers(/*recurse=*/false)) {
      dev = t.device();
    }
    if (weight.defined()) {
      dev = weight.device();
    }
    register_input_smooth(at::ones({options.in_features()}, at::TensorOptions().dtype(at::kFloat).device(dev)));
  }
}

void LinearImpl::make_quantized(const QuantMeta& meta, bool has_bias) {
  TORCH_CHECK(meta.layer == kLinear, "qat::nn::Linear: quant_meta describes layer kind ", meta.layer);
  LinearImpl next(detail::QuantizedTag{}, torch::nn::LinearOptions(options).bias(has_bias), meta);
  next.train(false);
  *this = std::move(next);
}

void LinearImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  to_floating_only(*this, device, dtype, non_blocking);
}

void LinearImpl::to(torch::Dtype dtype, bool non_blocking) {
  to_floating_only(*this, std::nullopt, dtype, non_blocking);
}

void LinearImpl::load(torch::serialize::InputArchive& archive) {
  at::Tensor smooth;
  if (archive.try_read("input_smooth", smooth, /*is_buffer=*/true)) {
    load_input_smooth(&smooth, name() + ": torch::load: ");
  }
  load_stage(*this, archive);
}

void LinearImpl::pretty_print(std::ostream& stream) const {
  stream << fmt::format(
      "qat::nn::Linear(in_features={}, out_features={}, bias={}, {}", options.in_features(),
      options.out_features(), options.bias() ? "true" : "false", stage_name(stage_));
  if (stage_ == Stage::kQuantized) {
    stream << ": " << q_.meta.describe();
  } else if (activation_ != kNoActivation) {
    stream << ", " << activation_name(activation_);
  }
  stream << ")";
}

// ---------------------------------------------------------------------------
// Conv1d / Conv2d
// ---------------------------------------------------------------------------

namespace {

/// (left, right) padding per spatial dimension: numeric, 'valid' (none) or
/// 'same' (the dilated kernel's extent split as PyTorch does, the odd one on
/// the right).
template <size_t D>
std::vector<std::pair<int64_t, int64_t>> conv_pads(const torch::nn::ConvOptions<D>& o) {
  std::vector<std::pair<int64_t, int64_t>> pads(D, {0, 0});
  if (const auto* p = std::get_if<torch::ExpandingArray<D>>(&o.padding())) {
    for (size_t d = 0; d < D; ++d) {
      pads[d] = {(**p)[d], (**p)[d]};
    }
  } else if (std::holds_alternative<torch::enumtype::kSame>(o.padding())) {
    for (size_t d = 0; d < D; ++d) {
      const int64_t total = (*o.dilation())[d] * ((*o.kernel_size())[d] - 1);
      pads[d] = {total / 2, total - total / 2};
    }
  }
  return pads;
}

/// F.pad's list (last dimension first) of conv_pads.
template <size_t D>
std::vector<int64_t> pad_list(const std::vector<std::pair<int64_t, int64_t>>& pads) {
  std::vector<int64_t> out;
  for (size_t d = D; d-- > 0;) {
    out.push_back(pads[d].first);
    out.push_back(pads[d].second);
  }
  return out;
}

/// at::pad's mode for a padding_mode.
template <size_t D>
std::string_view padding_mode_name(const torch::nn::ConvOptions<D>& o) {
  if (std::holds_alternative<torch::enumtype::kReflect>(o.padding_mode())) {
    return "reflect";
  }
  if (std::holds_alternative<torch::enumtype::kReplicate>(o.padding_mode())) {
    return "replicate";
  }
  if (std::holds_alternative<torch::enumtype::kCircular>(o.padding_mode())) {
    return "circular";
  }
  return "constant";
}

template <size_t D>
int64_t kernel_volume(const torch::nn::ConvOptions<D>& o) {
  int64_t k = o.in_channels() / o.groups();
  for (auto v : *o.kernel_size()) {
    k *= v;
  }
  return k;
}

}  // namespace

template <size_t D, class Derived>
ConvImpl<D, Derived>::ConvImpl(Options options_) : options(std::move(options_)) {
  reset();
}

template <size_t D>
torch::nn::ConvOptions<D> conv_options(const torch::nn::detail::ConvNdOptions<D>& o) {
  return torch::nn::ConvOptions<D>(o.in_channels(), o.out_channels(), o.kernel_size())
      .stride(o.stride())
      .padding(o.padding())
      .dilation(o.dilation())
      .groups(o.groups())
      .bias(o.bias())
      .padding_mode(o.padding_mode());
}

template <size_t D, class Derived>
ConvImpl<D, Derived>::ConvImpl(detail::Adopt, const TorchConv& conv)
    : options(conv_options<D>(conv.options)) {
  weight = this->register_parameter("weight", conv.weight);
  if (conv.bias.defined()) {
    bias = this->register_parameter("bias", conv.bias);
  }
}

template <size_t D, class Derived>
ConvImpl<D, Derived>::ConvImpl(
    detail::QuantizedTag,
    const Options& options_,
    const QuantMeta& meta,
    bool has_bias)
    : options(options_) {
  stage_ = Stage::kQuantized;
  activation_ = meta.activation;
  q_.meta = meta;
  options.bias(has_bias);
  reset();
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::reset() {
  if (stage_ == Stage::kQuantized) {
    std::vector<int64_t> shape{options.out_channels(), options.in_channels() / options.groups()};
    for (auto v : *options.kernel_size()) {
      shape.push_back(v);
    }
    q_.setup(
        *this, q_.meta, options.out_channels(), kernel_volume(options), options.bias(), shape);
    return;
  }
  // Initialised exactly as the torch::nn convolution.
  TorchConv init(options);
  weight = this->register_parameter("weight", init.weight);
  if (options.bias()) {
    bias = this->register_parameter("bias", init.bias);
  }
  if (bn) {
    bn = this->register_module("bn", std::dynamic_pointer_cast<BatchNorm>(bn->clone()));
  }
  if (stage_ == Stage::kQat) {
    reregister_quantizers(*this);
  }
}

template <size_t D, class Derived>
at::Tensor ConvImpl<D, Derived>::conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
  const auto stride = options.stride();
  const auto dilation = options.dilation();
  if (!std::holds_alternative<torch::enumtype::kZeros>(options.padding_mode())) {
    // as torch::nn::Conv: pad in the padding mode, then no padding
    const at::Tensor padded = at::pad(x, pad_list<D>(conv_pads(options)), padding_mode_name(options));
    const std::vector<int64_t> none(D, 0);
    if constexpr (D == 1) {
      return at::conv1d(padded, w, b, *stride, none, *dilation, options.groups());
    } else {
      return at::conv2d(padded, w, b, *stride, none, *dilation, options.groups());
    }
  }
  if (const auto* p = std::get_if<torch::ExpandingArray<D>>(&options.padding())) {
    if constexpr (D == 1) {
      return at::conv1d(x, w, b, *stride, **p, *dilation, options.groups());
    } else {
      return at::conv2d(x, w, b, *stride, **p, *dilation, options.groups());
    }
  }
  const std::string_view mode =
      std::holds_alternative<torch::enumtype::kValid>(options.padding()) ? "valid" : "same";
  if constexpr (D == 1) {
    return at::conv1d(x, w, b, *stride, mode, *dilation, options.groups());
  } else {
    return at::conv2d(x, w, b, *stride, mode, *dilation, options.groups());
  }
}

template <size_t D, class Derived>
at::Tensor ConvImpl<D, Derived>::forward_unrecorded(const at::Tensor& x_in) {
  at::Tensor y;
  if (stage_ == Stage::kQuantized) {
    std::vector<int64_t> padding;
    for (const auto& [left, right] : conv_pads(options)) {
      padding.push_back(left), padding.push_back(right);
    }
    const QuantizedState::Args a = q_.args(*this);
    return qat::quantized_conv(
        x_in, a.weight, a.weight_scale, a.weight_zero_point, a.bias, a.input_scale,
        a.input_zero_point, q_.meta.to_list(), options.in_channels(), *options.kernel_size(),
        *options.stride(), padding, *options.dilation(), options.groups(),
        std::holds_alternative<torch::enumtype::kZeros>(options.padding_mode())
            ? "zeros"
            : padding_mode_name(options));
  }
  if (stage_ == Stage::kFloat) {
    y = conv(x_in, weight, bias);
    if (bn) {
      y = bn->normalize(y);
    }
    return activation_ == kRelu ? at::relu(y) : y;
  }
  const at::Tensor x = quantize_input(x_in);
  if (!bn) {
    y = conv(x, fake_quant_weight(weight), bias);
    return activation_ == kRelu ? at::relu(y) : y;
  }
  // BatchNorm folded as in torch.ao's conv_fused (_forward_approximate).
  const at::Tensor running_std = at::sqrt(bn->running_var + bn->options.eps());
  const at::Tensor scale_factor = bn->weight / running_std;
  std::vector<int64_t> weight_shape(weight.dim(), 1), bias_shape(weight.dim(), 1);
  weight_shape[0] = -1;
  bias_shape[1] = -1;
  const at::Tensor scaled_weight = fake_quant_weight(weight * scale_factor.reshape(weight_shape));
  const at::Tensor zero_bias = at::zeros({options.out_channels()}, x.options());
  at::Tensor conv_orig = conv(x, scaled_weight, zero_bias) / scale_factor.reshape(bias_shape);
  if (bias.defined()) {
    conv_orig = conv_orig + bias.reshape(bias_shape);
  }
  y = bn->normalize(conv_orig);
  return activation_ == kRelu ? at::relu(y) : y;
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::prepare(const QConfig& qconfig) {
  make_quantizers(*this, qconfig, weight, /*use_activation=*/true);
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::convert() {
  TORCH_CHECK(
      stage_ == Stage::kQat, "qat::nn::Conv", D, "d::convert: the layer is ", stage_name(stage_),
      "; call qat::prepare first");
  torch::NoGradGuard guard;
  at::Tensor w = weight.detach();
  at::Tensor b = bias.defined() ? bias.detach() : at::Tensor();
  if (bn) {  // fold BatchNorm (eval-mode statistics)
    auto opt = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t.detach()) : std::nullopt;
    };
    std::tie(w, b) = qat::fold_batch_norm(
        w, opt(b), bn->running_mean, bn->running_var, opt(bn->weight), opt(bn->bias),
        bn->options.eps());
  }
  ensure_weight_qparams(w);
  const int64_t layer = D == 1 ? kConv1d : kConv2d;
  const QuantMeta meta =
      meta_for(layer, weight_fake_quant.get(), input_fake_quant.get(), activation_);
  Derived next(detail::QuantizedTag{}, options, meta, b.defined());
  next.q_.fill(next, w, b, weight_fake_quant.get(), input_fake_quant.get());
  next.train(false);
  static_cast<Derived&>(*this) = std::move(next);
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::train(bool on) {
  torch::nn::Module::train(on);
  if (bn && freeze_bn_) {
    bn->train(false);  // frozen statistics stay frozen
  }
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::fuse_bn(std::shared_ptr<BatchNorm> norm) {
  TORCH_CHECK(stage_ == Stage::kFloat, "fuse_modules: fuse before qat::prepare");
  TORCH_CHECK(!bn, "fuse_modules: the convolution already holds a BatchNorm");
  TORCH_CHECK(
      norm->options.num_features() == options.out_channels(),
      "fuse_modules: BatchNorm has ", norm->options.num_features(), " features, the convolution ",
      options.out_channels(), " output channels");
  norm->mark_fused();
  bn = this->register_module("bn", std::move(norm));
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::freeze_bn_stats() {
  freeze_bn_ = true;
  if (bn) {
    bn->train(false);
  }
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::update_bn_stats() {
  freeze_bn_ = false;
  if (bn) {
    bn->train(this->is_training());
  }
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  to_floating_only(*this, device, dtype, non_blocking);
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::to(torch::Dtype dtype, bool non_blocking) {
  to_floating_only(*this, std::nullopt, dtype, non_blocking);
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::make_quantized(const QuantMeta& meta, bool has_bias) {
  TORCH_CHECK(
      meta.layer == (D == 1 ? kConv1d : kConv2d), "qat::nn::Conv", D, "d: quant_meta describes layer kind ",
      meta.layer);
  Derived next(detail::QuantizedTag{}, options, meta, has_bias);
  next.train(false);
  static_cast<Derived&>(*this) = std::move(next);
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::load(torch::serialize::InputArchive& archive) {
  load_stage(*this, archive);
}

template <size_t D, class Derived>
void ConvImpl<D, Derived>::pretty_print(std::ostream& stream) const {
  // as torch::nn::Conv2d prints, then the stage (and the precision once converted)
  const auto list = [](const auto& a) {
    std::string s;
    for (auto v : *a) {
      s += (s.empty() ? "[" : ", ") + std::to_string(v);
    }
    return s + "]";
  };
  stream << fmt::format(
      "qat::nn::Conv{}d({}, {}, kernel_size={}, stride={}", D, options.in_channels(),
      options.out_channels(), list(options.kernel_size()), list(options.stride()));
  if (const auto* p = std::get_if<torch::ExpandingArray<D>>(&options.padding())) {
    bool zero = true;
    for (auto v : **p) {
      zero = zero && v == 0;
    }
    if (!zero) {
      stream << ", padding=" << list(*p);
    }
  } else {
    stream << (std::holds_alternative<torch::enumtype::kSame>(options.padding()) ? ", padding=same"
                                                                                 : ", padding=valid");
  }
  bool unit_dilation = true;
  for (auto v : *options.dilation()) {
    unit_dilation = unit_dilation && v == 1;
  }
  if (!unit_dilation) {
    stream << ", dilation=" << list(options.dilation());
  }
  if (options.groups() != 1) {
    stream << ", groups=" << options.groups();
  }
  if (!options.bias()) {
    stream << ", bias=false";
  }
  if (padding_mode_name(options) != "constant") {
    stream << ", padding_mode=" << padding_mode_name(options);
  }
  stream << ", " << stage_name(stage_);
  if (stage_ == Stage::kQuantized) {
    stream << ": " << q_.meta.describe();
  } else {
    stream << (bn ? ", bn" : "") << (activation_ == kRelu ? ", relu" : "");
  }
  stream << ")";
}

template class ConvImpl<1, Conv1dImpl>;
template class ConvImpl<2, Conv2dImpl>;

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

EmbeddingImpl::EmbeddingImpl(const torch::nn::EmbeddingOptions& options_) : options(options_) {
  reset();
}

EmbeddingImpl::EmbeddingImpl(detail::Adopt, const torch::nn::EmbeddingImpl& embedding)
    : options(embedding.options) {
  weight = register_parameter("weight", embedding.weight);
}

EmbeddingImpl::EmbeddingImpl(
    detail::QuantizedTag,
    const torch::nn::EmbeddingOptions& options_,
    const QuantMeta& meta)
    : options(options_) {
  stage_ = Stage::kQuantized;
  q_.meta = meta;
  reset();
}

void EmbeddingImpl::reset() {
  if (stage_ == Stage::kQuantized) {
    q_.setup(*this, q_.meta, options.num_embeddings(), options.embedding_dim(), false, {});
    return;
  }
  torch::nn::Embedding init(options);
  weight = register_parameter("weight", init->weight);
  if (stage_ == Stage::kQat) {
    reregister_quantizers(*this);
  }
}

at::Tensor EmbeddingImpl::forward_unrecorded(const at::Tensor& indices) {
  const int64_t padding_idx = options.padding_idx().value_or(-1);
  if (stage_ == Stage::kFloat) {
    return at::embedding(weight, indices, padding_idx, options.scale_grad_by_freq(), options.sparse());
  }
  if (stage_ == Stage::kQat) {
    return at::embedding(
        fake_quant_weight(weight), indices, padding_idx, options.scale_grad_by_freq(),
        options.sparse());
  }
  const QuantizedState::Args a = q_.args(*this);
  const at::Tensor rows = qat::quantized_embedding(
      indices, a.weight, a.weight_scale, a.weight_zero_point, q_.meta.to_list(),
      options.embedding_dim());
  return output_dtype_.has_value() ? rows.to(*output_dtype_) : rows;
}

void EmbeddingImpl::prepare(const QConfig& qconfig) {
  TORCH_CHECK(
      !options.max_norm().has_value(),
      "qat::prepare: an Embedding with max_norm cannot be quantized (it rewrites weights)");
  make_quantizers(*this, qconfig, weight, /*use_activation=*/false);
}

void EmbeddingImpl::convert() {
  TORCH_CHECK(
      stage_ == Stage::kQat, "qat::nn::Embedding::convert: the layer is ", stage_name(stage_),
      "; call qat::prepare first");
  ensure_weight_qparams(weight);
  const QuantMeta meta = meta_for(kEmbedding, weight_fake_quant.get(), nullptr, false);
  EmbeddingImpl next(detail::QuantizedTag{}, options, meta);
  next.q_.fill(next, weight, at::Tensor(), weight_fake_quant.get(), nullptr);
  next.train(false);
  *this = std::move(next);
}

void EmbeddingImpl::make_quantized(const QuantMeta& meta, bool /*has_bias*/) {
  TORCH_CHECK(meta.layer == kEmbedding, "qat::nn::Embedding: quant_meta describes layer kind ", meta.layer);
  EmbeddingImpl next(detail::QuantizedTag{}, options, meta);
  next.train(false);
  *this = std::move(next);
}

void EmbeddingImpl::note_output_dtype(torch::Dtype dtype) {
  if (stage_ == Stage::kQuantized && at::isFloatingType(dtype)) {
    // the rows dequantize in float32, then come out in the model's dtype
    output_dtype_ = dtype == at::kFloat ? std::nullopt : std::optional<at::ScalarType>(dtype);
  }
}

void EmbeddingImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  note_output_dtype(dtype);
  to_floating_only(*this, device, dtype, non_blocking);
}

void EmbeddingImpl::to(torch::Dtype dtype, bool non_blocking) {
  note_output_dtype(dtype);
  to_floating_only(*this, std::nullopt, dtype, non_blocking);
}

void EmbeddingImpl::load(torch::serialize::InputArchive& archive) {
  load_stage(*this, archive);
}

void EmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << fmt::format(
      "qat::nn::Embedding({}, {}, {}", options.num_embeddings(), options.embedding_dim(),
      stage_name(stage_));
  if (stage_ == Stage::kQuantized) {
    stream << ": " << q_.meta.describe();
  }
  stream << ")";
}

namespace detail {
namespace {
thread_local const OutputRecorder* tls_recorder = nullptr;
thread_local const InputRecorder* tls_input_recorder = nullptr;
}  // namespace

const InputRecorder* set_input_recorder(const InputRecorder* recorder) {
  const InputRecorder* previous = tls_input_recorder;
  tls_input_recorder = recorder;
  return previous;
}

const InputRecorder* input_recorder() {
  return tls_input_recorder;
}

const OutputRecorder* set_output_recorder(const OutputRecorder* recorder) {
  const OutputRecorder* previous = tls_recorder;
  tls_recorder = recorder;
  return previous;
}

const OutputRecorder* output_recorder() {
  return tls_recorder;
}
}  // namespace detail

}  // namespace qat::nn
