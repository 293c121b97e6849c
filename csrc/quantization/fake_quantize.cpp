// C++ fake quantizers: compositions of the ops (ops.h), mirroring
// python/qtorchext/fake_quantize.py step for step.
#include "qtorchext/fake_quantize.h"

#include "qtorchext/distributed.h"

#include <cmath>

#include <ATen/ATen.h>

#include "qtorchext/ops.h"

namespace qat {
namespace detail {

template <class Derived>
void FakeQuantizeFlags<Derived>::register_flags() {
  fake_quant_enabled =
      this->register_buffer("fake_quant_enabled", at::ones({1}, at::kByte));
  observer_enabled = this->register_buffer("observer_enabled", at::ones({1}, at::kByte));
  fake_quant_on_ = true;
  observer_on_ = true;
}

template <class Derived>
void FakeQuantizeFlags<Derived>::enable_fake_quant(bool enabled) {
  fake_quant_enabled.fill_(enabled ? 1 : 0);
  fake_quant_on_ = enabled;
}

template <class Derived>
void FakeQuantizeFlags<Derived>::enable_observer(bool enabled) {
  observer_enabled.fill_(enabled ? 1 : 0);
  observer_on_ = enabled;
}

template <class Derived>
void FakeQuantizeFlags<Derived>::sync_flags() {
  fake_quant_on_ = fake_quant_enabled.cpu()[0].template item<uint8_t>() != 0;
  observer_on_ = observer_enabled.cpu()[0].template item<uint8_t>() != 0;
}

template class FakeQuantizeFlags<FakeQuantizeImpl>;
template class FakeQuantizeFlags<LearnableFakeQuantizeImpl>;
template class FakeQuantizeFlags<BinaryFakeQuantizeImpl>;
template class FakeQuantizeFlags<FloatFakeQuantizeImpl>;
template class FakeQuantizeFlags<DynamicFakeQuantizeImpl>;

}  // namespace detail

namespace {

ObserverInterface& observer_of(const std::shared_ptr<torch::nn::Module>& module) {
  auto* obs = dynamic_cast<ObserverInterface*>(module.get());
  TORCH_CHECK(obs != nullptr, "expected an observer module, got ", module->name());
  return *obs;
}

/// Observers whose statistics the fused op computes itself.
bool fusable(const std::shared_ptr<torch::nn::Module>& module) {
  return std::dynamic_pointer_cast<MinMaxObserverImpl>(module) ||
      std::dynamic_pointer_cast<MovingAverageMinMaxObserverImpl>(module) ||
      std::dynamic_pointer_cast<PerChannelMinMaxObserverImpl>(module) ||
      std::dynamic_pointer_cast<MovingAveragePerChannelMinMaxObserverImpl>(module);
}

std::optional<double> averaging_constant_of(const std::shared_ptr<torch::nn::Module>& module) {
  if (std::dynamic_pointer_cast<MovingAverageMinMaxObserverImpl>(module) ||
      std::dynamic_pointer_cast<MovingAveragePerChannelMinMaxObserverImpl>(module)) {
    return observer_of(module).observer_options().averaging_constant();
  }
  return std::nullopt;
}

/// The statistics buffers of a min/max observer.
std::pair<at::Tensor, at::Tensor> minmax_buffers(torch::nn::Module& module) {
  return {*module.named_buffers(false).find("min_val"), *module.named_buffers(false).find("max_val")};
}

}  // namespace

// ---------------------------------------------------------------------------
// FakeQuantize
// ---------------------------------------------------------------------------

FakeQuantizeImpl::FakeQuantizeImpl(
    std::shared_ptr<torch::nn::Module> observer,
    FakeQuantizeOptions options_)
    : options(options_), activation_post_process(std::move(observer)) {
  TORCH_CHECK(activation_post_process != nullptr, "FakeQuantize: observer is null");
  observer_of(activation_post_process);
  reset();
}

FakeQuantizeImpl::FakeQuantizeImpl(const FakeQuantizeImpl& other)
    : FakeQuantizeFlags(other),
      options(other.options),
      // A clone owns a copy of the observer (Cloneable::clone copies its
      // state into it after reset()).
      activation_post_process(other.activation_post_process->clone()),
      scale(other.scale),
      zero_point(other.zero_point),
      fused_(other.fused_) {}

void FakeQuantizeImpl::reset() {
  register_module("activation_post_process", activation_post_process);
  register_flags();
  scale = register_buffer("scale", at::ones({1}));
  zero_point = register_buffer("zero_point", at::zeros({1}, at::kInt));
  const auto& o = observer_of(activation_post_process).observer_options();
  if (options.scale_dtype().has_value()) {
    round_scale(at::ones({1}), options.scale_dtype());  // refuses other types
  }
  fused_ = options.fused() && fusable(activation_post_process) && !o.group_size().has_value() &&
      !options.scale_dtype().has_value();
}

ObserverInterface& FakeQuantizeImpl::observer() {
  return observer_of(activation_post_process);
}

at::Tensor round_scale(const at::Tensor& scale, std::optional<at::ScalarType> dtype) {
  if (!dtype.has_value()) {
    return scale;
  }
  TORCH_CHECK(
      *dtype == at::kHalf || *dtype == at::kBFloat16,
      "FakeQuantize: scale_dtype must be Half or BFloat16, got ", *dtype);
  const bool half = *dtype == at::kHalf;
  // smallest subnormal and largest finite value of the type
  const double tiny = half ? 0x1p-24 : 0x1p-133;
  const double max = half ? 65504.0 : 3.3895313892515355e38;
  return scale.to(*dtype).to(at::kFloat).clamp(tiny, max);
}

std::tuple<at::Tensor, at::Tensor> FakeQuantizeImpl::calculate_qparams() {
  auto [s, z] = observer().calculate_qparams();
  return {round_scale(s, options.scale_dtype()), z};
}

void FakeQuantizeImpl::size_qparams(int64_t n) {
  if (scale.numel() != n) {
    scale.resize_({n}).fill_(1.0);
    zero_point.resize_({n}).zero_();
  }
}

namespace {

/// A training forward with the observer on counts towards the model's step
/// (qat::set_observer_sync; an empty input too, so that a rank whose share is
/// empty counts as the others do): `body` between before_observe and
/// after_observe.
template <class Body>
at::Tensor counted_forward(const FakeQuantizeInterface& q, bool observes, Body&& body) {
  const bool counted = q.observer_sync && observes;
  if (counted) {
    detail::before_observe(q);
  }
  at::Tensor out = body();
  if (counted) {
    detail::after_observe(q);
  }
  return out;
}

}  // namespace

at::Tensor FakeQuantizeImpl::forward(const at::Tensor& x) {
  return counted_forward(*this, is_training() && observer_on_, [&] {
    return forward_impl(x);
  });
}

at::Tensor FakeQuantizeImpl::forward_impl(const at::Tensor& x) {
  ObserverInterface& obs = observer();
  const ObserverOptions& o = obs.observer_options();
  if (fused_) {
    auto* common = activation_post_process.get();
    // Size per-channel statistics and qparams on first use.
    if (o.ch_axis().has_value()) {
      auto [mn, mx] = minmax_buffers(*common);
      const int64_t c = x.size(*o.ch_axis());
      if (mn.numel() != c) {
        TORCH_CHECK(
            mn.numel() == 0, "FakeQuantize: input has ", c, " channels along axis ",
            *o.ch_axis(), ", the statistics ", mn.numel());
        mn.resize_({c}).fill_(INFINITY);
        mx.resize_({c}).fill_(-INFINITY);
      }
    }
    auto [mn, mx] = minmax_buffers(*common);
    size_qparams(std::max<int64_t>(mn.numel(), 1));
    return qat::fused_observe_fake_quantize(
        x, observer_enabled, fake_quant_enabled, mn, mx, scale, zero_point, o.quant_min(),
        o.quant_max(), o.symmetric(), o.eps(), o.ch_axis(),
        averaging_constant_of(activation_post_process));
  }
  if (observer_on_ && x.numel() > 0) {
    obs.forward(x.detach());
    auto [s, z] = calculate_qparams();
    size_qparams(s.numel());
    scale.copy_(s.reshape({-1}));
    zero_point.copy_(z.reshape({-1}));
  }
  if (!fake_quant_on_) {
    return x;
  }
  if (o.group_size().has_value()) {
    std::vector<int64_t> groups = x.sizes().vec();
    groups.back() /= *o.group_size();
    return qat::fake_quantize_per_group(
        x, scale.reshape(groups), zero_point.reshape(groups), *o.group_size(), o.quant_min(),
        o.quant_max());
  }
  if (o.ch_axis().has_value()) {
    return qat::fake_quantize_per_channel_affine(
        x, scale, zero_point, *o.ch_axis(), o.quant_min(), o.quant_max());
  }
  return qat::fake_quantize_per_tensor_affine(x, scale, zero_point, o.quant_min(), o.quant_max());
}

void FakeQuantizeImpl::pretty_print(std::ostream& stream) const {
  const auto& o = dynamic_cast<const ObserverInterface&>(*activation_post_process).observer_options();
  stream << "qat::FakeQuantize(fused=" << (fused_ ? "True" : "False")
         << ", quant_min=" << o.quant_min() << ", quant_max=" << o.quant_max() << ")";
}

// ---------------------------------------------------------------------------
// LearnableFakeQuantize (LSQ)
// ---------------------------------------------------------------------------

LearnableFakeQuantizeImpl::LearnableFakeQuantizeImpl(
    std::shared_ptr<torch::nn::Module> observer,
    LearnableFakeQuantizeOptions options_)
    : options(options_), activation_post_process(std::move(observer)) {
  TORCH_CHECK(activation_post_process != nullptr, "LearnableFakeQuantize: observer is null");
  TORCH_CHECK(
      !observer_of(activation_post_process).observer_options().group_size().has_value(),
      "LearnableFakeQuantize is per tensor or per channel");
  TORCH_CHECK(
      options.init_steps() >= 0,
      "LearnableFakeQuantize: init_steps must be >= 0 (0: never switch the observer off), got ",
      options.init_steps());
  reset();
}

LearnableFakeQuantizeImpl::LearnableFakeQuantizeImpl(const LearnableFakeQuantizeImpl& other)
    : FakeQuantizeFlags(other),
      options(other.options),
      activation_post_process(other.activation_post_process->clone()),
      scale(other.scale),
      zero_point(other.zero_point),
      steps_(other.steps_) {}

void LearnableFakeQuantizeImpl::reset() {
  register_module("activation_post_process", activation_post_process);
  register_flags();
  const auto& o = observer_of(activation_post_process).observer_options();
  const int64_t n =
      (options.channel_len().has_value() && o.ch_axis().has_value()) ? *options.channel_len() : 1;
  scale = register_parameter("scale", at::ones({n}));
  zero_point = register_parameter("zero_point", at::zeros({n}));
  steps_ = 0;
}

ObserverInterface& LearnableFakeQuantizeImpl::observer() {
  return observer_of(activation_post_process);
}

void LearnableFakeQuantizeImpl::resize(int64_t n) {
  if (scale.numel() != n) {
    torch::NoGradGuard guard;
    scale.set_data(at::ones({n}, scale.options()));
    zero_point.set_data(at::zeros({n}, zero_point.options()));
  }
}

std::tuple<at::Tensor, at::Tensor> LearnableFakeQuantizeImpl::calculate_qparams() const {
  const auto& o = dynamic_cast<const ObserverInterface&>(*activation_post_process).observer_options();
  return {
      scale.detach(),
      zero_point.detach().round().clamp(o.quant_min(), o.quant_max()).to(at::kInt)};
}

at::Tensor LearnableFakeQuantizeImpl::forward(const at::Tensor& x) {
  return counted_forward(*this, is_training() && observer_on_, [&] {
    return forward_impl(x);
  });
}

at::Tensor LearnableFakeQuantizeImpl::forward_impl(const at::Tensor& x) {
  ObserverInterface& obs = observer();
  const ObserverOptions& o = obs.observer_options();
  if (o.ch_axis().has_value()) {
    resize(x.size(*o.ch_axis()));
  }
  if (observer_on_ && x.numel() > 0) {
    obs.forward(x.detach());
    observed_since_sync = true;
    auto [s, z] = obs.calculate_qparams();
    {
      torch::NoGradGuard guard;
      scale.copy_(s.reshape(scale.sizes()));
      zero_point.copy_(z.reshape(zero_point.sizes()));
    }
    if (is_training()) {
      ++steps_;
      if (options.init_steps() > 0 && steps_ >= options.init_steps()) {
        disable_observer();
      }
    }
  }
  {
    torch::NoGradGuard guard;
    scale.clamp_min_(o.eps());
  }
  if (!fake_quant_on_) {
    return x;
  }
  const int64_t per_scale = x.numel() / scale.numel();
  const double grad_factor = options.use_grad_scaling()
      ? 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(per_scale, 1)) *
                        static_cast<double>(std::max<int64_t>(o.quant_max(), 1)))
      : 1.0;
  if (o.ch_axis().has_value()) {
    return qat::fake_quantize_learnable_per_channel_affine(
        x, scale, zero_point, *o.ch_axis(), o.quant_min(), o.quant_max(), grad_factor);
  }
  return qat::fake_quantize_learnable_per_tensor_affine(
      x, scale, zero_point, o.quant_min(), o.quant_max(), grad_factor);
}

// ---------------------------------------------------------------------------
// Binary and float
// ---------------------------------------------------------------------------

BinaryFakeQuantizeImpl::BinaryFakeQuantizeImpl(BinaryFakeQuantizeOptions options_)
    : options(options_) {
  reset();
}

void BinaryFakeQuantizeImpl::reset() {
  register_flags();
}

at::Tensor BinaryFakeQuantizeImpl::forward(const at::Tensor& x) {
  if (!fake_quant_on_) {
    return x;
  }
  const at::Tensor alpha = qat::binary_scale(x, options.ch_axis());
  return qat::binarize(x, alpha, options.ch_axis().value_or(0), options.clip());
}

FloatFakeQuantizeImpl::FloatFakeQuantizeImpl(at::ScalarType dtype_) : dtype(dtype_) {
  TORCH_CHECK(
      dtype == at::kHalf || dtype == at::kBFloat16,
      "FloatFakeQuantize: dtype must be torch.float16 or torch.bfloat16, got ", dtype);
  reset();
}

void FloatFakeQuantizeImpl::reset() {
  register_flags();
}

at::Tensor FloatFakeQuantizeImpl::forward(const at::Tensor& x) {
  return fake_quant_on_ ? qat::fake_cast(x, dtype) : x;
}

DynamicFakeQuantizeImpl::DynamicFakeQuantizeImpl(DynamicFakeQuantizeOptions options_)
    : options(options_) {
  qat::choose_qparams(
      at::zeros({1}), at::zeros({1}), options.quant_min(), options.quant_max(), options.symmetric(),
      options.eps());
  reset();
}

void DynamicFakeQuantizeImpl::reset() {
  register_flags();
}

at::Tensor DynamicFakeQuantizeImpl::forward(const at::Tensor& x) {
  if (!fake_quant_on_ || x.numel() == 0) {
    return x;
  }
  auto [scale, zero_point] = qat::choose_qparams_per_token(
      x.detach(), options.quant_min(), options.quant_max(), options.symmetric(), options.eps());
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  return qat::fake_quantize_per_channel_affine(
             rows, scale.reshape({-1}), zero_point.reshape({-1}), 0, options.quant_min(),
             options.quant_max())
      .reshape(x.sizes());
}

FakeQuantizeInterface* as_fake_quantize(torch::nn::Module& module) {
  return dynamic_cast<FakeQuantizeInterface*>(&module);
}

}  // namespace qat
