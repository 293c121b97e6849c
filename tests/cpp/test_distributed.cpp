// qat::sync_observers across the ranks of a c10d::ProcessGroup. The pip
// wheel ships no gloo headers, so the group here is two threads of this
// process joined by an in-process backend (allreduce through shared memory);
// the Python tests run the same synchronisation over gloo between processes.
#include <gtest/gtest.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <sstream>
#include <mutex>
#include <thread>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include "test_utils.h"

namespace {

/// The state the ranks' allreduce calls meet in.
struct Meeting {
  std::mutex m;
  std::condition_variable cv;
  int size = 0;
  int arrived = 0;
  int64_t generation = 0;
  at::Tensor acc, result;
  std::vector<at::Tensor> parts, gathered;  // allgather, by rank
};

class DoneWork : public c10d::Work {
 public:
  bool isCompleted() override {
    return true;
  }
  bool wait(std::chrono::milliseconds /*timeout*/) override {
    return true;
  }
};

/// allreduce (SUM / MIN / MAX) and allgather among `size` threads, each its
/// rank.
class ThreadBackend : public c10d::Backend {
 public:
  ThreadBackend(int rank, std::shared_ptr<Meeting> meeting)
      : Backend(rank, meeting->size), meeting_(std::move(meeting)) {}

  const std::string getBackendName() const override {
    return "threads";
  }

  c10::intrusive_ptr<c10d::Work> allreduce(
      std::vector<at::Tensor>& tensors,
      const c10d::AllreduceOptions& opts) override {
    at::Tensor& t = tensors.at(0);
    Meeting& mt = *meeting_;
    std::unique_lock<std::mutex> lock(mt.m);
    const int64_t generation = mt.generation;
    if (mt.arrived == 0) {
      mt.acc = t.clone();
    } else if (opts.reduceOp == c10d::ReduceOp::MAX) {
      mt.acc = at::maximum(mt.acc, t);
    } else if (opts.reduceOp == c10d::ReduceOp::MIN) {
      mt.acc = at::minimum(mt.acc, t);
    } else {
      mt.acc = mt.acc + t;
    }
    if (++mt.arrived == mt.size) {
      mt.result = mt.acc;
      mt.arrived = 0;
      ++mt.generation;
      mt.cv.notify_all();
    } else {
      mt.cv.wait(lock, [&] { return mt.generation != generation; });
    }
    t.copy_(mt.result);
    return c10::make_intrusive<DoneWork>();
  }

  c10::intrusive_ptr<c10d::Work> allgather(
      std::vector<std::vector<at::Tensor>>& outputs,
      std::vector<at::Tensor>& inputs,
      const c10d::AllgatherOptions& /*opts*/) override {
    Meeting& mt = *meeting_;
    std::unique_lock<std::mutex> lock(mt.m);
    const int64_t generation = mt.generation;
    if (mt.arrived == 0) {
      mt.parts.assign(mt.size, at::Tensor());
    }
    mt.parts[getRank()] = inputs.at(0).clone();
    if (++mt.arrived == mt.size) {
      mt.gathered = mt.parts;
      mt.arrived = 0;
      ++mt.generation;
      mt.cv.notify_all();
    } else {
      mt.cv.wait(lock, [&] { return mt.generation != generation; });
    }
    for (int r = 0; r < mt.size; ++r) {
      outputs.at(0).at(r).copy_(mt.gathered[r]);
    }
    return c10::make_intrusive<DoneWork>();
  }

 private:
  std::shared_ptr<Meeting> meeting_;
};

c10::intrusive_ptr<c10d::ProcessGroup> thread_group(int rank, std::shared_ptr<Meeting> m) {
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(rank, m->size);
  auto backend = c10::make_intrusive<ThreadBackend>(rank, m);
  pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::CUSTOM, backend);
  pg->setDefaultBackend(c10d::ProcessGroup::BackendType::CUSTOM);
  return pg;
}

torch::nn::Sequential prepared(const std::string& preset) {
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(16, 16), torch::nn::Linear(16, 16));
  qat::prepare(*net, qat::QConfig::preset(preset));
  return net;
}

/// Step `step`'s whole batch or rank `rank`'s half: rank 0's reaches the
/// largest values, rank 1's the smallest, so each alone sees half the range.
at::Tensor batch(int step, int rank = -1) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(100 + step);
  const at::Tensor a = at::rand({4, 16}, g) * 5;
  const at::Tensor b = at::rand({4, 16}, g) * -10 + 1;
  return rank < 0 ? at::cat({a, b}) : (rank == 0 ? a : b);
}

/// The quantizers' buffers and (LSQ) parameters.
std::map<std::string, at::Tensor> quantizer_state(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (auto& item : m.named_buffers()) {
    if (item.key().find("fake_quant") != std::string::npos) {
      out[item.key()] = item.value().clone();
    }
  }
  for (auto& item : m.named_parameters()) {
    if (item.key().find("fake_quant") != std::string::npos) {
      out[item.key()] = item.value().detach().clone();
    }
  }
  return out;
}

/// Both ranks observe three steps of their halves (in training mode, no
/// optimizer step), synchronising after each forward when `sync`.
std::vector<torch::nn::Sequential> observe_on_two_ranks(const std::string& preset, bool sync) {
  auto meeting = std::make_shared<Meeting>();
  meeting->size = 2;
  std::vector<torch::nn::Sequential> nets{prepared(preset), prepared(preset)};
  std::vector<std::thread> ranks;
  std::vector<int64_t> synced(2, -1);
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      auto pg = thread_group(r, meeting);
      torch::NoGradGuard no_grad;
      for (int s = 0; s < 3; ++s) {
        nets[r]->forward(batch(s, r));
        if (sync) {
          synced[r] = qat::sync_observers(*nets[r], pg);
        }
      }
    });
  }
  for (auto& t : ranks) {
    t.join();
  }
  if (sync && preset != "lsq_w4a4") {
    EXPECT_EQ(synced[0], 4);  // an input and a weight quantizer per layer
    EXPECT_EQ(synced[1], 4);
  }
  return nets;
}

/// Runs `body(rank, group)` on two ranks (threads) and joins them.
void on_two_ranks(const std::function<void(int, const c10::intrusive_ptr<c10d::ProcessGroup>&)>& body) {
  auto meeting = std::make_shared<Meeting>();
  meeting->size = 2;
  std::vector<std::thread> ranks;
  std::vector<std::string> errors(2);
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        body(r, thread_group(r, meeting));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) {
    t.join();
  }
  for (const auto& e : errors) {
    ASSERT_EQ(e, "");
  }
}

/// A two-layer model prepared for calibration: the int8 PTQ preset
/// (histogram activations), or MSE activation observers when `mse`.
torch::nn::Sequential calibration_model(bool mse = false) {
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(16, 16), torch::nn::Linear(16, 16));
  qat::QConfig qconfig = qat::static_qconfig("int8");
  if (mse) {
    qconfig.activation = [] {
      return qat::FakeQuantize(qat::MSEObserver(qat::ObserverOptions().quant_min(0).quant_max(255)))
          .ptr();
    };
  }
  qat::prepare_ptq(*net, qconfig);
  return net;
}

void expect_same(
    const std::map<std::string, at::Tensor>& a,
    const std::map<std::string, at::Tensor>& b,
    const std::function<bool(const std::string&)>& which = {}) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) {
    if (!which || which(k)) {
      EXPECT_TRUE(at::equal(v, b.at(k))) << k;
    }
  }
}

}  // namespace

TEST(Distributed, HistogramObserversEqualOneProcessAcrossRanks) {
  // qat::calibrate with set_observer_sync: the histograms (the default PTQ
  // preset's activations) after three batches, each synchronised, are bit for
  // bit one process's where the inputs are the ranks' halves (the first layer's
  // input and the weights); the previous synchronisations count once
  std::vector<torch::nn::Sequential> nets{calibration_model(), calibration_model()};
  on_two_ranks([&](int r, const auto& pg) {
    qat::set_observer_sync(*nets[r], pg);
    std::vector<at::Tensor> halves;
    for (int s = 0; s < 3; ++s) {
      halves.push_back(batch(s, r));
    }
    qat::calibrate(nets[r], halves, /*progress=*/false);
  });
  const auto r0 = quantizer_state(*nets[0]), r1 = quantizer_state(*nets[1]);
  expect_same(r0, r1);
  auto single = calibration_model();
  qat::calibrate(single, {batch(0), batch(1), batch(2)}, /*progress=*/false);
  expect_same(r0, quantizer_state(*single), [](const std::string& k) {
    return k.rfind("0.", 0) == 0 || k.rfind("1.weight_fake_quant", 0) == 0;
  });
  EXPECT_EQ(r0.at("0.input_fake_quant.activation_post_process.histogram").sum().item<int64_t>(),
            3 * 8 * 16);
}

TEST(Distributed, MseObserversAgreeAcrossRanks) {
  std::vector<torch::nn::Sequential> nets{calibration_model(true), calibration_model(true)};
  on_two_ranks([&](int r, const auto& pg) {
    qat::set_observer_sync(*nets[r], pg);
    qat::calibrate(nets[r], {batch(0, r), batch(1, r)}, /*progress=*/false);
  });
  const auto r0 = quantizer_state(*nets[0]);
  expect_same(r0, quantizer_state(*nets[1]));
  const std::string key = "0.input_fake_quant.activation_post_process.";
  EXPECT_EQ(r0.at(key + "num_batches").item<int64_t>(), 2);
  EXPECT_LT(r0.at(key + "min_val").item<float>(), 0.f);
  EXPECT_GT(r0.at(key + "max_val").item<float>(), 0.f);
}

TEST(Distributed, HistogramBasesThatDifferAreRefused) {
  // rank 0 loads a calibrated state, rank 1 does not: both refuse to mix
  auto donor = calibration_model();
  qat::calibrate(donor, {batch(5)}, /*progress=*/false);
  const std::string path = ::testing::TempDir() + "qtorchext_hist_base.pt";
  qat::save_state_dict(*donor, path);
  std::vector<torch::nn::Sequential> nets{calibration_model(), calibration_model()};
  qat::load_state_dict(*nets[0], path);
  std::vector<std::string> errors(2);
  on_two_ranks([&](int r, const auto& pg) {
    qat::set_observer_sync(*nets[r], pg);
    try {
      qat::calibrate(nets[r], {batch(0, r)}, /*progress=*/false);
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  });
  for (const auto& e : errors) {
    EXPECT_NE(e.find("hold different observer statistics"), std::string::npos) << e;
  }
  // both load it: the loaded counts are taken once
  std::vector<torch::nn::Sequential> both{calibration_model(), calibration_model()};
  for (auto& n : both) {
    qat::load_state_dict(*n, path);
  }
  on_two_ranks([&](int r, const auto& pg) {
    qat::set_observer_sync(*both[r], pg);
    qat::calibrate(both[r], {batch(0, r)}, /*progress=*/false);
  });
  auto single = calibration_model();
  qat::load_state_dict(*single, path);
  qat::calibrate(single, {batch(0)}, /*progress=*/false);
  const std::string key = "0.input_fake_quant.activation_post_process.histogram";
  EXPECT_TRUE(at::equal(quantizer_state(*both[0]).at(key), quantizer_state(*single).at(key)));
}

TEST(Distributed, SetObserverSyncSynchronisesEachTrainingStep) {
  // no explicit sync_observers: the same states as synchronising after each
  // forward by hand
  auto by_hand = observe_on_two_ranks("int8", true);
  std::vector<torch::nn::Sequential> nets{prepared("int8"), prepared("int8")};
  on_two_ranks([&](int r, const auto& pg) {
    qat::set_observer_sync(*nets[r], pg);
    torch::NoGradGuard no_grad;
    for (int s = 0; s < 3; ++s) {
      nets[r]->forward(batch(s, r));
    }
  });
  expect_same(quantizer_state(*nets[0]), quantizer_state(*by_hand[0]));
  expect_same(quantizer_state(*nets[1]), quantizer_state(*by_hand[0]));

  // a step that leaves the second layer out: synchronised as the next starts
  std::vector<torch::nn::Sequential> partial{prepared("int8"), prepared("int8")};
  std::vector<torch::nn::Sequential> manual{prepared("int8"), prepared("int8")};
  on_two_ranks([&](int r, const auto& pg) {
    qat::set_observer_sync(*partial[r], pg);
    torch::NoGradGuard no_grad;
    partial[r]->forward(batch(0, r));
    partial[r]->ptr(0)->as<qat::nn::LinearImpl>()->forward(batch(1, r));
    partial[r]->forward(batch(2, r));
    // the same schedule, synchronised by hand where the automatic one does
    manual[r]->forward(batch(0, r));
    qat::sync_observers(*manual[r], pg);
    manual[r]->ptr(0)->as<qat::nn::LinearImpl>()->forward(batch(1, r));
    qat::sync_observers(*manual[r], pg);
    manual[r]->forward(batch(2, r));
    qat::sync_observers(*manual[r], pg);
  });
  expect_same(quantizer_state(*partial[0]), quantizer_state(*partial[1]));
  expect_same(quantizer_state(*partial[0]), quantizer_state(*manual[0]));

  // eval forwards do not synchronise (a sanity check on one rank does not block)
  nets[0]->eval();
  {
    torch::NoGradGuard no_grad;
    nets[0]->forward(batch(7, 0));
  }
  // off again, and a model not owned by a shared_ptr is refused
  qat::set_observer_sync(*nets[0], nullptr);
  nets[0]->train();
  {
    torch::NoGradGuard no_grad;
    nets[0]->forward(batch(8, 0));  // would block without the other rank
  }
  torch::nn::SequentialImpl stack_model;
  auto meeting = std::make_shared<Meeting>();
  meeting->size = 1;
  EXPECT_THROW_WITH(qat::set_observer_sync(stack_model, thread_group(0, meeting)),
                    "must be owned by a std::shared_ptr");
}

TEST(Distributed, SetObserverSyncKeepsBackwardWorkingAndClonesOutOfIt) {
  // learnable quantizers: the sync after the forward that initialises them
  // (a refresh of their parameters) must leave that forward's backward working
  std::vector<torch::nn::Sequential> nets{prepared("lsq_w4a4"), prepared("lsq_w4a4")};
  on_two_ranks([&](int r, const auto& pg) {
    qat::set_observer_sync(*nets[r], pg);
    nets[r]->forward(batch(0, r)).square().mean().backward();
  });
  const auto r0 = quantizer_state(*nets[0]), r1 = quantizer_state(*nets[1]);
  EXPECT_TRUE(at::equal(r0.at("0.input_fake_quant.scale"), r1.at("0.input_fake_quant.scale")));
  // a clone does not take the original's synchronisation
  auto twin = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(nets[0]->clone());
  for (const auto& m : twin->modules()) {
    if (auto* q = qat::as_fake_quantize(*m)) {
      EXPECT_EQ(q->observer_sync, nullptr);
    }
  }
}

TEST(Distributed, TorchLoadMakesTheLoadedHistogramTheBase) {
  qat::HistogramObserver donor;
  donor->forward(batch(5));
  std::stringstream stream;
  torch::save(donor, stream);
  qat::HistogramObserver fresh;
  EXPECT_TRUE(fresh->sync_base.empty());
  torch::load(fresh, stream);
  ASSERT_EQ(fresh->sync_base.size(), 3u);
  EXPECT_TRUE(at::equal(fresh->sync_base[0], donor->histogram));
  EXPECT_TRUE(at::equal(fresh->sync_base[2], donor->max_val));
}

TEST(Distributed, RanksHoldIdenticalQuantizersAndMatchOneProcessWhereExact) {
  // lsq_w4a4: learnable quantizers whose first forward initialises them from the
  // observer and switches it off (that observation is combined too)
  for (const std::string preset : {"int8", "w4a8", "lsq_w4a4"}) {
    SCOPED_TRACE(preset);
    auto nets = observe_on_two_ranks(preset, true);
    const auto r0 = quantizer_state(*nets[0]), r1 = quantizer_state(*nets[1]);
    ASSERT_EQ(r0.size(), r1.size());
    for (const auto& [k, v] : r0) {
      EXPECT_TRUE(at::equal(v, r1.at(k))) << k;
    }
    // one process fed the whole batches
    auto single = prepared(preset);
    {
      torch::NoGradGuard no_grad;
      for (int s = 0; s < 3; ++s) {
        single->forward(batch(s));
      }
    }
    const auto want = quantizer_state(*single);
    for (const auto& [k, v] : r0) {
      const bool exact = k.rfind("0.", 0) == 0 || k.rfind("1.weight_fake_quant", 0) == 0;
      if (exact) {  // the model input's and the weights' quantizers: bit for bit
        EXPECT_TRUE(at::equal(v, want.at(k))) << k;
      }
    }
    // the second layer's input came from each rank's own qparams of that step
    // (measured 0.2% with 8-bit inputs, 1.06% with lsq_w4a4's 4-bit ones)
    const at::Tensor s = r0.at("1.input_fake_quant.scale"), w = want.at("1.input_fake_quant.scale");
    EXPECT_LT(((s - w).abs() / w).max().item<double>(), preset == "lsq_w4a4" ? 3e-2 : 1e-2);
  }
}

TEST(Distributed, WithoutSynchronisationTheRanksDiffer) {
  auto nets = observe_on_two_ranks("int8", false);
  const auto r0 = quantizer_state(*nets[0]), r1 = quantizer_state(*nets[1]);
  EXPECT_FALSE(at::equal(r0.at("0.input_fake_quant.scale"), r1.at("0.input_fake_quant.scale")));
}

TEST(Distributed, OneRankIsANoOpAndDifferentModelsAreRefused) {
  auto single = std::make_shared<Meeting>();
  single->size = 1;
  auto net = prepared("int8");
  EXPECT_EQ(qat::sync_observers(*net, thread_group(0, single)), 0);
  EXPECT_THROW_WITH(qat::sync_observers(*net, nullptr), "group is null");

  auto meeting = std::make_shared<Meeting>();
  meeting->size = 2;
  torch::manual_seed(0);
  torch::nn::Sequential other(torch::nn::Linear(16, 16));
  qat::prepare(*other, qat::QConfig::preset("int8"));
  std::vector<std::string> errors(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      auto pg = thread_group(r, meeting);
      torch::NoGradGuard no_grad;
      torch::nn::Module& m = r == 0 ? static_cast<torch::nn::Module&>(*net) : *other;
      (r == 0 ? net->forward(batch(0, r)) : other->forward(batch(0, r)));
      try {
        qat::sync_observers(m, pg);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) {
    t.join();
  }
  for (const auto& e : errors) {
    EXPECT_NE(e.find("hold different observer statistics"), std::string::npos) << e;
  }
}
