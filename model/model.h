// Model: the FWP language model on one backend, in its three agreeing forms.
//
//   x = embed(tokens) (+ sinusoidal positions)
//   per block:  h = x + W_o · FastWeightMemory(W_qkvβ · LN(x))
//               x = h + W_down · act(W_up · LN(h) + b_up) + b_down
//   logits = LN(x) · W_headᵀ            (W_head = embed when tied)
//
// Forms (the tests hold them to float precision):
//   parallel   Prefill of a whole sequence from an empty state, all logits —
//              the training form (chunkwise-parallel memory, chunk_size()).
//   chunked    Prefill called repeatedly with pieces of any length; the state
//              carries everything between the calls.
//   recurrent  Step: one token for each of many sessions (slots of a pool),
//              the decode form (fast-weight step op).
//
// A Model is used by one thread at a time (the engine thread); it keeps its
// activation workspace between calls so a steady decode loop allocates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/state.h"
#include "model/weights.h"

namespace fwp {

// Batch rows that take their penalties from a table in backend memory
// (kernels/sampling.h's PenaltyRow; table_rows rows of vocab entries).
struct PenaltyTableRows {
  const int32_t* table = nullptr;
  int64_t table_rows = 0;
  absl::Span<const PenaltyRow> rows;
};

class Model {
 public:
  // Uploads `weights` (checked against ExpectedTensors) to the backend.
  static absl::StatusOr<std::unique_ptr<Model>> Create(Backend& backend,
                                                       const Config& config,
                                                       const HostWeights& weights);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model();

  const Config& config() const { return config_; }
  Backend& backend() const { return backend_; }
  StateLayout state_layout() const { return StateLayout::For(config_); }

  // A pool of `capacity` empty states for this model.
  absl::StatusOr<std::unique_ptr<StatePool>> NewStatePool(int32_t capacity) const;

  // Feeds `time` tokens to each session in `slots`. tokens: [slots, time],
  // row-major (host). logits (host): [slots, time, vocab] with all_logits,
  // else [slots, vocab] for each session's last token.
  absl::Status Prefill(StatePool& pool, absl::Span<const int32_t> slots,
                       absl::Span<const int32_t> tokens, bool all_logits,
                       float* logits);

  // One token per session. tokens: [slots]; logits (host): [slots, vocab].
  absl::Status Step(StatePool& pool, absl::Span<const int32_t> slots,
                    absl::Span<const int32_t> tokens, float* logits);

  // Step, with each session's next token drawn on the backend (Backend::
  // SampleRows): sampling [slots] (host) in, next [slots] (host) out, so
  // only tokens cross to the host. The rows listed in logits_rows (indices
  // into slots) also copy their logits to logits (host) [logits_rows, vocab],
  // for samplers that need the whole row (as the step gave them). The
  // penalties (rows are indices into slots, each (row, token) once) change
  // the logits the draws are taken from. Once the states have advanced it
  // cannot fail: without device memory for the sampler it draws on the host.
  // Rows may instead take their penalties from a table in backend memory
  // (PenaltyTableRows).
  absl::Status StepAndSample(StatePool& pool, absl::Span<const int32_t> slots,
                             absl::Span<const int32_t> tokens,
                             absl::Span<const RowSampling> sampling, int32_t* next,
                             absl::Span<const int32_t> logits_rows, float* logits,
                             absl::Span<const LogitPenalty> penalties = {},
                             const PenaltyTableRows& table = PenaltyTableRows());

  // A trainable tensor: its name (model/README.md), device data, element count.
  struct Parameter {
    std::string name;
    float* data;
    int64_t size;
  };
  // Every parameter, in ExpectedTensors order (a tied output matrix is the
  // embedding, listed once; FAVOR projections are fixed and not listed).
  std::vector<Parameter> Parameters();
  // Host copies of every tensor (ExpectedTensors), for checkpoints.
  HostWeights Weights();

  // The training form (model_train.cc): runs tokens [batch, time] from empty
  // states, scores the next-token targets [batch, time] (negative: ignored),
  // and backpropagates the mean loss, adding each parameter's gradient into
  // (*grads)[i] (one device buffer per Parameters()[i]); with grads null it
  // only scores. Returns the mean loss and the number of scored targets.
  //
  // With `carry` (a pool of `batch` slots from NewStatePool), sequence b
  // starts from carry's slot b instead of an empty state, and the states
  // after the last token are written back into it: consecutive segments of
  // long streams (truncated backpropagation through time; gradients do not
  // flow into the carried state).
  //
  // `gradient_scale` multiplies the gradients added (not the loss returned):
  // 1/k for each of k equal micro-batches summed into one step's gradient.
  struct Loss {
    double mean = 0.0;
    int64_t count = 0;
  };
  absl::StatusOr<Loss> ForwardBackward(absl::Span<const int32_t> tokens,
                                       absl::Span<const int32_t> targets, int64_t batch,
                                       std::vector<Buffer>* grads,
                                       StatePool* carry = nullptr,
                                       float gradient_scale = 1.0f);

  // The fast-weight op's chunk length for Prefill (≥ 1; default 64).
  int64_t chunk_size() const { return chunk_size_; }
  void set_chunk_size(int64_t chunk) { chunk_size_ = chunk < 1 ? 1 : chunk; }

 private:
  struct Layer {
    Buffer attn_norm_w, attn_norm_b, qkvb, out, favor_proj;
    Buffer ffn_norm_w, ffn_norm_b, up_w, up_b, down_w, down_b;
  };

  Model(Backend& backend, const Config& config);

  // Leaves the logits in logits_ (device) and copies them to `logits` (host)
  // unless it is null.
  absl::Status Run(StatePool& pool, absl::Span<const int32_t> slots,
                   absl::Span<const int32_t> tokens, int64_t time, bool step,
                   bool all_logits, float* logits);
  absl::Status Validate(const StatePool& pool, absl::Span<const int32_t> slots,
                        absl::Span<const int32_t> tokens) const;
  absl::Status Reserve(int64_t rows, int64_t batch);

  struct TrainWorkspace;

  Backend& backend_;
  Config config_;
  int64_t chunk_size_ = 64;
  Buffer embed_, final_norm_w_, final_norm_b_, lm_head_;
  std::vector<Layer> layers_;

  // Workspace, grown on demand: rows = tokens in one call.
  int64_t rows_capacity_ = 0;
  int64_t batch_capacity_ = 0;
  Buffer x_, xn_, qkvb_, y_, ff_, logits_;  // activations
  Buffer tokens_, positions_, slots_;       // inputs

  std::unique_ptr<TrainWorkspace> train_;  // model_train.cc
};

}  // namespace fwp
