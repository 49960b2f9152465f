// Trainer: the loop of fwp-train. Each step draws batch × accum windows of
// `seq` tokens at offsets from an Rng seeded by (seed, step), so a run resumed
// from a checkpoint draws exactly the batches the uninterrupted run would
// have; with the optimiser moments and the float32 weights restored, the
// CPU losses match the uninterrupted run bit for bit.
//
// A checkpoint directory is a model directory (config.json,
// model.safetensors, tokenizer.model) plus optimizer.safetensors,
// trainer.json (the settings and the step) and, with carry_state, the
// carried states (carry.safetensors). It is written into <out>/.checkpoint
// and then moved in (FinishCheckpoint), so that a crash never leaves a mixed
// or half-written one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "train/optimizer.h"
#include "train/token_file.h"

namespace fwp {

struct TrainerConfig {
  int64_t batch = 16;  // sequences per forward/backward pass (micro-batch)
  int64_t seq = 128;
  // Gradient accumulation: each step sums the gradients of `accum`
  // micro-batches of `batch` sequences, so a step sees batch × accum
  // sequences (the same windows, and nearly the same step, as one batch of
  // batch × accum) in the memory of `batch`.
  int64_t accum = 1;
  int64_t steps = 1000;
  int64_t eval_every = 200;        // 0: only at the end
  int64_t eval_windows = 0;        // 0: the whole valid split (else that many seq's worth)
  // How the valid split is read (train/scoring.h): windows of `seq` from
  // empty states, or one stream with the state carried (for carry_state
  // runs, whose point is the long context).
  bool eval_stream = false;
  int64_t checkpoint_every = 500;  // 0: only at the end
  uint64_t seed = 1;
  // Truncated BPTT: the batch is batch × accum contiguous streams through the
  // train split, each step the next window of each, the fast-weight states
  // carried from one step to the next (and reset when the streams wrap), so
  // the model learns to use a state older than one window.
  bool carry_state = false;
  // After each evaluation whose valid loss is the run's lowest so far, the
  // model directory is also written to <out>/best, with best.json naming its
  // step and valid loss (fine-tuning on little data overfits; the best
  // weights are kept whatever the last ones are).
  bool keep_best = false;
  // The --data directory the run reads, recorded in trainer.json so that
  // --resume reads the same token files (empty: a run from before it was
  // recorded).
  std::string data;
  // What the run's token files held (train/token_file.h's Fingerprint, and
  // their sizes), set by Trainer::Create and recorded in trainer.json, so
  // that --resume on files prepared again differently is refused (the same
  // step would draw other batches). 0: a run from before they were recorded.
  uint64_t train_fingerprint = 0, valid_fingerprint = 0;
  int64_t train_tokens = 0, valid_tokens = 0;
  OptimizerConfig optimizer;
};

struct StepReport {
  int64_t step = 0;
  float lr = 0;
  double loss = 0;
  double grad_norm = 0;
  double tokens_per_second = 0;
  double valid_loss = -1;  // < 0: not evaluated at this step
  bool new_best = false;   // keep_best wrote these weights to <out>/best
};

// Why `c` cannot train, naming the fwp-train flag of the field at fault
// (--lr for optimizer.lr, --clip for optimizer.clip_norm, ...); OK when it can.
absl::Status CheckTrainerConfig(const TrainerConfig& c);

// The step of the checkpoint in `out_dir` (its trainer.json); NotFound when
// the directory holds no run.
absl::StatusOr<int64_t> CheckpointStep(const std::string& out_dir);

// A checkpoint is written whole into <out_dir>/.checkpoint (trainer.json
// last, every file fsynced), then moved into <out_dir> file by file,
// trainer.json last, and the folder removed. FinishCheckpoint completes what
// a crash (kill, power loss) interrupted: a folder that holds trainer.json
// holds a whole, durable checkpoint, whose moves it finishes; one without it
// was cut off while written and is removed (<out_dir> still holds the
// checkpoint before it, whole). OK when there is nothing to do. Resume calls
// it, and so does fwp-train before it looks at <out_dir>.
absl::Status FinishCheckpoint(const std::string& out_dir);

// The settings recorded with the checkpoint in `out_dir` (its trainer.json).
absl::StatusOr<TrainerConfig> ReadTrainerConfig(const std::string& out_dir);

class Trainer {
 public:
  // A new run in `out_dir` from `weights`.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      Backend& backend, const Config& config, const HostWeights& weights,
      const TrainerConfig& trainer, TokenFile train, TokenFile valid, std::string out_dir,
      std::string tokenizer_path);
  // Continues the run checkpointed in `out_dir`; `steps` > 0 replaces the
  // total step count. The learning-rate schedule keeps its own total
  // (optimizer.total_steps), so steps past it run at the schedule's final
  // rate. Refused when the run is already at (or past) its total. `data`,
  // when not empty, is recorded as the run's data directory from now on
  // (where `train` and `valid` were read).
  static absl::StatusOr<std::unique_ptr<Trainer>> Resume(Backend& backend,
                                                         const std::string& out_dir,
                                                         TokenFile train, TokenFile valid,
                                                         int64_t steps,
                                                         const std::string& data = "");

  // One optimiser step.
  absl::StatusOr<StepReport> Step();
  // Steps until `config().steps`, evaluating and checkpointing on schedule;
  // `report` is called after every step. A train or valid loss that is not
  // finite stops the run with an error (before that step is checkpointed).
  // When `stop` says so after a step, the run is checkpointed at that step
  // and Run returns Cancelled (fwp-train's SIGINT/SIGTERM: --resume then
  // continues exactly).
  absl::Status Run(const std::function<void(const StepReport&)>& report,
                   const std::function<bool()>& stop = nullptr);
  // Mean loss on the valid split, read as eval_stream says.
  absl::StatusOr<Model::Loss> Evaluate();
  absl::Status SaveCheckpoint();

  int64_t step() const { return optimizer_->step(); }
  // keep_best: the lowest valid loss so far and its step (0: none yet).
  double best_valid_loss() const { return best_valid_loss_; }
  int64_t best_step() const { return best_step_; }
  const TrainerConfig& config() const { return config_; }
  Model& model() { return *model_; }

 private:
  Trainer() = default;

  TrainerConfig config_;
  Config model_config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Optimizer> optimizer_;
  // carry_state: accum pools of [batch] slots; micro-batch m carries
  // streams m·batch … (m+1)·batch − 1.
  std::vector<std::unique_ptr<StatePool>> carry_;
  TokenFile train_, valid_;
  std::string out_dir_, tokenizer_path_;
  double best_valid_loss_ = 0;
  int64_t best_step_ = 0;
};

}  // namespace fwp
