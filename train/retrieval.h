// The synthetic associative retrieval task of Schlag, Irie & Schmidhuber
// (2021, section 6), set up as in the paper's code so that figures compare:
//
//   S keys and S values; a sequence presents S (setting 1: distinct keys,
//   values drawn without replacement) or 2S (setting 2: keys and values drawn
//   with replacement) key→value pairs; then one key is queried and the model
//   must return the value most recently paired with it.
//   Keys: learned embeddings E (e = ⌊2S·1.1⌋ wide, N(0, 1)); values: fixed
//   one-hot vectors (d_value = S). One fast-weight layer with d_key = 64:
//   k = W_k [v; E key] + b_k, β = sigmoid(W_b [v; E key] + b_b),
//   q = W_q E query + b_q; the memory's output after the last write is ŷ.
//   Loss ½‖v − ŷ‖² (0.5 is total failure). Adam, lr 1e-3, batch 32; every
//   100 steps the loss over 20 test sequences with every query; stop at
//   eval loss ≤ 0.001, after 10 evaluations without improvement, or at
//   100k steps. Delta rule: sum-normalised φ; sum rule: raw φ with the
//   attention normaliser (the paper's "linear" attention). Like the paper's
//   code, test sequences in setting 2 hold S pairs (its get_all_queries).
//
// The memory runs on the backend's FastWeightSequence op with the query in
// the row of the last write (the read-out after a token's write is the
// query after all writes), so the task exercises the same kernels as the LM.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/fast_weight.h"
#include "kernels/random.h"

namespace fwp {

// The largest S a task takes: the paper goes to 600, and the memory grows
// as S² (a d_key × S value matrix per sequence, an S × 2.2S embedding), so
// far larger values are typos that would otherwise die in bad_alloc.
inline constexpr int64_t kMaxRetrievalPairs = 100000;
// DPFP's ν: the paper uses 1 to 3; d_φ = 2·ν·d_key.
inline constexpr int kMaxDpfpNu = 16;

struct RetrievalConfig {
  int setting = 1;  // 1: capacity (no replacement, length S); 2: updates (replacement, 2S)
  int64_t pairs = 20;  // S
  int64_t d_key = 64;
  UpdateRule update = UpdateRule::kDelta;
  FeatureMapSpec phi;  // kind and ν / m; sum_norm is set from the update rule
  int64_t batch = 32;
  float lr = 1e-3f;
  int64_t max_steps = 100000;
  double max_seconds = 0;  // > 0: also stop at the first evaluation after this long
  int64_t eval_every = 100;
  int64_t eval_sequences = 20;
  int64_t patience = 10;
  double target_loss = 0.001;
  uint64_t seed = 1;
};

struct RetrievalEval {
  double loss = 0;
  double accuracy = 0;  // argmax ŷ = target
  int64_t queries = 0;
};

struct RetrievalResult {
  int64_t steps = 0;
  RetrievalEval best;   // the best evaluation
  RetrievalEval last;
  bool out_of_time = false;  // stopped by max_seconds, not by the paper's rule
};

class RetrievalTask {
 public:
  static absl::StatusOr<std::unique_ptr<RetrievalTask>> Create(Backend& backend,
                                                               const RetrievalConfig& config);
  ~RetrievalTask();

  // One Adam step on a fresh batch; returns the batch loss.
  absl::StatusOr<double> TrainStep();
  // Loss (mean over queries) and accuracy over eval_sequences fresh
  // sequences, each queried with every key it holds. The memory after a
  // sequence's writes is the same for all its queries, so each sequence runs
  // once and every query reads its final state. `rerun_each_query` is the
  // paper's code's way instead: every query in a sequence of its own (S×
  // the work; the two agree to float rounding, which the tests check).
  absl::StatusOr<RetrievalEval> Evaluate(bool rerun_each_query = false);
  // Trains with the paper's stopping rule; `on_eval` sees every evaluation.
  absl::StatusOr<RetrievalResult> Train(
      const std::function<void(int64_t step, const RetrievalEval&)>& on_eval);

  // The trained parameters and the task's shape (setting, S, d_key, update
  // rule, feature map) in one safetensors file; Load refuses a file that is
  // not one, naming what is wrong. A loaded task draws fresh sequences from
  // `seed`.
  absl::Status Save(const std::string& path) const;
  static absl::StatusOr<std::unique_ptr<RetrievalTask>> Load(Backend& backend,
                                                             const std::string& path,
                                                             uint64_t seed);

  const FastWeightSpec& memory() const { return spec_; }
  const RetrievalConfig& config() const { return config_; }
  void set_eval_sequences(int64_t n) { config_.eval_sequences = n; }
  int64_t steps() const { return step_; }

 private:
  struct Sample;
  struct Parameters;
  explicit RetrievalTask(Backend& backend, const RetrievalConfig& config);
  // Forward (and with `train` backward and an Adam step) over samples that
  // share one length. `final_states`, when given, receives each sequence's
  // memory after its last write ([n, slot floats]: S, then z if any).
  absl::StatusOr<double> Run(const std::vector<Sample>& samples, bool train,
                             std::vector<int32_t>* predictions,
                             std::vector<float>* final_states = nullptr);
  std::vector<Sample> DrawBatch(int64_t n, Rng& rng) const;
  // A test sequence of S pairs and its queries: one sample per distinct key,
  // the target being the key's most recent value.
  std::vector<Sample> DrawAllQueries(Rng& rng) const;
  absl::StatusOr<RetrievalEval> EvaluateByRerun(const std::vector<std::vector<Sample>>& sets);

  Backend& backend_;
  RetrievalConfig config_;
  FastWeightSpec spec_;
  int64_t embed_ = 0;  // e
  std::unique_ptr<Parameters> params_;
  Rng rng_;
  int64_t step_ = 0;
};

}  // namespace fwp
