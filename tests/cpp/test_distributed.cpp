// qat::sync_observers across the ranks of a c10d::ProcessGroup. The pip
// wheel ships no gloo headers, so the group here is two threads of this
// process joined by an in-process backend (allreduce through shared memory);
// the Python tests run the same synchronisation over gloo between processes.
#include <gtest/gtest.h>

#include <condition_variable>
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

/// allreduce (SUM / MIN / MAX) among `size` threads, each its rank.
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

}  // namespace

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
