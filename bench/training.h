// The trainer's step for the bench programs: ZeroGrads, ForwardBackward over
// [batch, seq] tokens and Optimizer::Step (clipping + AdamW), as fwp-train
// runs it (batch invariance off: BLAS / cuBLAS matmuls), on random weights
// and tokens.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/timing.h"
#include "kernels/random.h"
#include "model/config.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace fwp::bench {

struct TrainingFigures {
  double tokens_per_s = 0;
  // Matmul FLOPs per trained token: 6 × the matmul weights (forward 2, backward
  // 4), the output head included; the fast-weight memory's work is not counted,
  // so a fraction of the GEMM ceiling computed from it is a lower bound.
  double matmul_flops_per_token = 0;
};

inline double MatmulWeights(const Config& c) {
  const FastWeightSpec a = c.Attention();
  const double per_layer = static_cast<double>(c.d_model) * a.RowWidth() +
                           static_cast<double>(c.n_heads) * c.d_head * c.d_model +
                           2.0 * c.d_model * c.d_ff;
  return c.n_layers * per_layer + static_cast<double>(c.vocab_size) * c.d_model;
}

inline TrainingFigures MeasureTraining(Backend& backend, const Config& config, int64_t batch,
                                       int64_t seq, double seconds) {
  auto model = Model::Create(backend, config, RandomWeights(config, 1));
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    std::exit(1);
  }
  auto optimizer = Optimizer::Create(**model, OptimizerConfig{});
  if (!optimizer.ok()) {
    std::fprintf(stderr, "%s\n", optimizer.status().ToString().c_str());
    std::exit(1);
  }
  const bool invariant = backend.batch_invariant();
  backend.SetBatchInvariant(false);
  Rng rng(7);
  std::vector<int32_t> tokens(batch * seq), targets(batch * seq);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.Next() % config.vocab_size);
  for (size_t i = 0; i < tokens.size(); ++i) {
    targets[i] = i + 1 < tokens.size() ? tokens[i + 1] : tokens[0];
  }
  const double t = TimePerCall(
      seconds,
      [&] {
        (*optimizer)->ZeroGrads();
        auto loss = (*model)->ForwardBackward(tokens, targets, batch, &(*optimizer)->grads());
        if (!loss.ok()) {
          std::fprintf(stderr, "%s\n", loss.status().ToString().c_str());
          std::exit(1);
        }
        (*optimizer)->Step();
      },
      &backend);
  backend.SetBatchInvariant(invariant);
  return {batch * seq / t, 6.0 * MatmulWeights(config)};
}

}  // namespace fwp::bench
