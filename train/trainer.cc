#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/random.h"
#include "kernels/status_macros.h"
#include "model/atomic_file.h"
#include "model/model_dir.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "train/scoring.h"

namespace fwp {
namespace {

// Where SaveCheckpoint writes a checkpoint before it moves it in.
std::string StagingDir(const std::string& out_dir) { return out_dir + "/.checkpoint"; }

using nlohmann::json;

json ToJson(const TrainerConfig& c, int64_t step) {
  const OptimizerConfig& o = c.optimizer;
  json j = {{"step", step},
          {"batch", c.batch},
          {"seq", c.seq},
          {"accum", c.accum},
          {"steps", c.steps},
          {"eval_every", c.eval_every},
          {"eval_windows", c.eval_windows},
          {"eval_context", c.eval_stream ? "stream" : "window"},
          {"checkpoint_every", c.checkpoint_every},
          {"seed", c.seed},
          {"carry_state", c.carry_state},
          {"optimizer",
           {{"lr", o.lr},
            {"min_lr_ratio", o.min_lr_ratio},
            {"warmup_steps", o.warmup_steps},
            {"total_steps", o.total_steps},
            {"beta1", o.beta1},
            {"beta2", o.beta2},
            {"eps", o.eps},
            {"weight_decay", o.weight_decay},
            {"clip_norm", o.clip_norm}}}};
  j["keep_best"] = c.keep_best;
  if (!c.data.empty()) j["data"] = c.data;
  j["train_tokens"] = c.train_tokens;
  j["valid_tokens"] = c.valid_tokens;
  j["train_fingerprint"] = absl::StrFormat("%016x", c.train_fingerprint);
  j["valid_fingerprint"] = absl::StrFormat("%016x", c.valid_fingerprint);
  return j;
}

// keep_best's record, <out>/best/best.json, written just after the weights
// it describes (not with the checkpoint, which may be older).
absl::Status ReadBest(const std::string& path, int64_t* step, double* valid_loss) {
  if (!std::filesystem::exists(path)) return absl::OkStatus();  // no best yet
  FWP_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(path));
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("step") ||
      !j["step"].is_number_integer() || !j.contains("valid_loss") ||
      !j["valid_loss"].is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not {\"step\": integer, \"valid_loss\": number}"));
  }
  *step = j["step"].get<int64_t>();
  *valid_loss = j["valid_loss"].get<double>();
  return absl::OkStatus();
}

absl::StatusOr<TrainerConfig> FromJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("no checkpoint: cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  try {
    const json j = json::parse(text.str());
    TrainerConfig c;
    c.batch = j.at("batch");
    c.seq = j.at("seq");
    c.accum = j.value("accum", int64_t{1});  // runs from before accumulation
    c.steps = j.at("steps");
    c.eval_every = j.at("eval_every");
    c.eval_windows = j.at("eval_windows");
    const std::string context = j.value("eval_context", "window");  // runs from before it
    if (context != "window" && context != "stream") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": eval_context must be \"window\" or \"stream\", not \"", context, "\""));
    }
    c.eval_stream = context == "stream";
    c.checkpoint_every = j.at("checkpoint_every");
    c.seed = j.at("seed");
    c.carry_state = j.value("carry_state", false);
    c.keep_best = j.value("keep_best", false);  // runs from before keep_best
    c.data = j.value("data", std::string());    // runs from before data was recorded
    // Runs from before the token files were recorded: 0.
    c.train_tokens = j.value("train_tokens", int64_t{0});
    c.valid_tokens = j.value("valid_tokens", int64_t{0});
    for (auto [key, field] : {std::pair{"train_fingerprint", &c.train_fingerprint},
                              std::pair{"valid_fingerprint", &c.valid_fingerprint}}) {
      const std::string hex = j.value(key, std::string("0"));
      if (!absl::SimpleHexAtoi(hex, field)) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", key, " is not a hexadecimal number: \"", hex, "\""));
      }
    }
    const json& o = j.at("optimizer");
    c.optimizer.lr = o.at("lr");
    c.optimizer.min_lr_ratio = o.at("min_lr_ratio");
    c.optimizer.warmup_steps = o.at("warmup_steps");
    c.optimizer.total_steps = o.at("total_steps");
    c.optimizer.beta1 = o.at("beta1");
    c.optimizer.beta2 = o.at("beta2");
    c.optimizer.eps = o.at("eps");
    c.optimizer.weight_decay = o.at("weight_decay");
    c.optimizer.clip_norm = o.at("clip_norm");
    return c;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::Status CheckData(const TokenFile& file, const char* name, const Config& config,
                       int64_t seq) {
  if (file.vocab_size > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(name, " tokens use a vocabulary of ",
                                                   file.vocab_size, ", the model has ",
                                                   config.vocab_size));
  }
  if (static_cast<int64_t>(file.tokens.size()) < seq + 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, " split has ", file.tokens.size(),
                                                   " tokens, fewer than one window of ", seq + 1));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTrainerConfig(const TrainerConfig& c) {
  const OptimizerConfig& o = c.optimizer;
  auto bad = [](absl::string_view flag, absl::string_view rule, auto value) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " must be ", rule, ", not ", value));
  };
  // Bounds before products: batch·seq must not overflow, and a step of more
  // than 2^31 tokens is a typo, not a run (activations alone would be TBs).
  constexpr int64_t kMaxTokensPerStep = int64_t{1} << 31;
  if (c.batch < 1 || c.batch > kMaxTokensPerStep) return bad("--batch", "in [1, 2^31]", c.batch);
  if (c.seq < 1 || c.seq > kMaxTokensPerStep) return bad("--seq", "in [1, 2^31]", c.seq);
  if (c.batch * c.seq > kMaxTokensPerStep) {
    return absl::InvalidArgumentError(absl::StrCat("--batch × --seq is ", c.batch * c.seq,
                                                   " tokens per pass, more than 2^31"));
  }
  // Accumulation costs time, not memory: its bound only keeps products sane.
  constexpr int64_t kMaxAccum = int64_t{1} << 20;
  if (c.accum < 1 || c.accum > kMaxAccum) return bad("--accum", "in [1, 2^20]", c.accum);
  if (c.steps < 1) return bad("--steps", "≥ 1", c.steps);
  if (c.eval_every < 0) return bad("--eval_every", "≥ 0", c.eval_every);
  if (c.eval_windows < 0 || c.eval_windows > kMaxTokensPerStep) {
    return bad("--eval_windows", "in [0, 2^31]", c.eval_windows);
  }
  if (c.checkpoint_every < 0) return bad("--checkpoint_every", "≥ 0", c.checkpoint_every);
  if (!std::isfinite(o.lr) || o.lr <= 0) return bad("--lr", "finite and > 0", o.lr);
  if (!(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1)) {
    return bad("--min_lr_ratio", "in [0, 1]", o.min_lr_ratio);
  }
  if (o.warmup_steps < 0) return bad("--warmup", "≥ 0", o.warmup_steps);
  if (o.total_steps < 1) return bad("the schedule's total_steps", "≥ 1", o.total_steps);
  if (!std::isfinite(o.weight_decay) || o.weight_decay < 0) {
    return bad("--weight_decay", "finite and ≥ 0", o.weight_decay);
  }
  if (!std::isfinite(o.clip_norm) || o.clip_norm < 0) return bad("--clip", "finite and ≥ 0", o.clip_norm);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CheckpointStep(const std::string& out_dir) {
  const std::string path = out_dir + "/trainer.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("no checkpoint: cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  const json j = json::parse(text.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no integer field 'step'"));
  }
  return j["step"].get<int64_t>();
}

absl::StatusOr<TrainerConfig> ReadTrainerConfig(const std::string& out_dir) {
  return FromJson(out_dir + "/trainer.json");
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    Backend& backend, const Config& config, const HostWeights& weights,
    const TrainerConfig& trainer, TokenFile train, TokenFile valid, std::string out_dir,
    std::string tokenizer_path) {
  FWP_RETURN_IF_ERROR(CheckTrainerConfig(trainer));
  // trainer.json must be writable at the first checkpoint, not fail there
  // after the training time is spent (JSON holds only UTF-8 strings).
  try {
    (void)ToJson(trainer, 0).dump();
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the run's settings cannot be recorded in trainer.json (is the --data path \"",
        absl::CHexEscape(trainer.data), "\" UTF-8?): ", e.what()));
  }
  FWP_RETURN_IF_ERROR(CheckData(train, "train", config, trainer.seq));
  FWP_RETURN_IF_ERROR(CheckData(valid, "valid", config, trainer.seq));
  std::unique_ptr<Trainer> t(new Trainer());
  t->config_ = trainer;
  t->config_.train_fingerprint = Fingerprint(train);
  t->config_.valid_fingerprint = Fingerprint(valid);
  t->config_.train_tokens = static_cast<int64_t>(train.tokens.size());
  t->config_.valid_tokens = static_cast<int64_t>(valid.tokens.size());
  t->model_config_ = config;
  FWP_ASSIGN_OR_RETURN(t->model_, Model::Create(backend, config, weights));
  FWP_ASSIGN_OR_RETURN(t->optimizer_, Optimizer::Create(*t->model_, trainer.optimizer));
  if (trainer.carry_state) {
    const int64_t streams = trainer.batch * trainer.accum;
    if ((static_cast<int64_t>(train.tokens.size()) - 1) / streams < trainer.seq) {
      return absl::InvalidArgumentError(absl::StrCat(
          "carry_state needs at least one window per stream: ", streams,
          " streams (--batch × --accum) of ", trainer.seq, " tokens do not fit in ",
          train.tokens.size(), " training tokens"));
    }
    for (int64_t m = 0; m < trainer.accum; ++m) {
      FWP_ASSIGN_OR_RETURN(auto pool, t->model_->NewStatePool(static_cast<int32_t>(trainer.batch)));
      t->carry_.push_back(std::move(pool));
    }
  }
  t->train_ = std::move(train);
  t->valid_ = std::move(valid);
  t->out_dir_ = std::move(out_dir);
  t->tokenizer_path_ = std::move(tokenizer_path);
  return t;
}

absl::Status FinishCheckpoint(const std::string& out_dir) {
  namespace fs = std::filesystem;
  const fs::path staging = StagingDir(out_dir);
  std::error_code error;
  if (!fs::exists(staging, error)) return absl::OkStatus();
  auto fail = [&](const std::string& what) {
    return absl::InternalError(absl::StrCat("cannot finish the checkpoint in ", out_dir, ": ",
                                            what, ": ", error.message()));
  };
  if (!fs::exists(staging / "trainer.json", error)) {
    // Cut off while written: <out_dir> holds the checkpoint before it.
    fs::remove_all(staging, error);
    return error ? fail(absl::StrCat("removing ", staging.string())) : absl::OkStatus();
  }
  // Whole: move its files in (a rerun after a crash here moves the rest),
  // trainer.json last, so that CheckpointStep names the step only once the
  // files of that step are all in place.
  for (const auto& entry : fs::directory_iterator(staging, error)) {
    if (entry.path().filename() == "trainer.json" || !entry.is_regular_file()) continue;
    fs::rename(entry.path(), fs::path(out_dir) / entry.path().filename(), error);
    if (error) return fail(absl::StrCat("moving ", entry.path().string()));
  }
  if (error) return fail(absl::StrCat("listing ", staging.string()));
  // The moves are on disk before trainer.json names their step (renames in
  // one directory may otherwise reach the disk in any order).
  FWP_RETURN_IF_ERROR(SyncDirectory(out_dir));
  fs::rename(staging / "trainer.json", fs::path(out_dir) / "trainer.json", error);
  if (error) return fail("moving trainer.json");
  FWP_RETURN_IF_ERROR(SyncDirectory(out_dir));
  fs::remove_all(staging, error);
  return error ? fail(absl::StrCat("removing ", staging.string())) : absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Resume(Backend& backend,
                                                         const std::string& out_dir,
                                                         TokenFile train, TokenFile valid,
                                                         int64_t steps, const std::string& data) {
  FWP_RETURN_IF_ERROR(FinishCheckpoint(out_dir));
  FWP_ASSIGN_OR_RETURN(TrainerConfig trainer, ReadTrainerConfig(out_dir));
  // The same step must draw the same batches (and the valid loss mean the
  // same): the token files must be the ones the run began on.
  for (const auto& [name, file, fingerprint, count] :
       {std::tuple{"train", &train, trainer.train_fingerprint, trainer.train_tokens},
        std::tuple{"valid", &valid, trainer.valid_fingerprint, trainer.valid_tokens}}) {
    if (fingerprint == 0 || Fingerprint(*file) == fingerprint) continue;
    const auto now = static_cast<int64_t>(file->tokens.size());
    return absl::FailedPreconditionError(absl::StrCat(
        "the ", name, " tokens are not those the run in ", out_dir, " was trained on (",
        count == now ? absl::StrCat(now, " tokens then and now, other ids")
                     : absl::StrCat(count, " tokens then, ", now, " now"),
        "): --resume would not continue it exactly; prepare the data as it was, or start a "
        "new run from its weights with --init ", out_dir));
  }
  if (steps > 0) trainer.steps = steps;
  if (!data.empty()) trainer.data = data;
  FWP_ASSIGN_OR_RETURN(HostModel checkpoint, ReadHostModel(out_dir));
  const std::string tokenizer = out_dir + "/tokenizer.model";
  FWP_ASSIGN_OR_RETURN(auto t, Create(backend, checkpoint.config, checkpoint.weights, trainer,
                                      std::move(train),
                                      std::move(valid), out_dir,
                                      std::filesystem::exists(tokenizer) ? tokenizer : ""));
  FWP_RETURN_IF_ERROR(t->optimizer_->Load(out_dir + "/optimizer.safetensors"));
  // The files of one checkpoint, at one step (files from before steps were
  // recorded in the weights say nothing and pass).
  FWP_ASSIGN_OR_RETURN(const int64_t recorded, CheckpointStep(out_dir));
  auto torn = [&](const std::string& file, const std::string& step) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint in ", out_dir, " was cut off while it was written: ", file,
        " is at step ", step, ", optimizer.safetensors at step ", t->step(),
        "; it cannot continue exactly"));
  };
  if (recorded != t->step()) return torn("trainer.json", absl::StrCat(recorded));
  if (auto it = checkpoint.metadata.find("step");
      it != checkpoint.metadata.end() && it->second != absl::StrCat(t->step())) {
    return torn("model.safetensors", it->second);
  }
  if (trainer.keep_best) {
    FWP_RETURN_IF_ERROR(ReadBest(out_dir + "/best/best.json", &t->best_step_, &t->best_valid_loss_));
  }
  if (t->step() >= trainer.steps) {
    return absl::FailedPreconditionError(absl::StrCat(
        out_dir, " is at step ", t->step(), " of ", trainer.steps,
        ": nothing to do (--steps above ", t->step(), " extends the run)"));
  }
  if (!t->carry_.empty()) {
    const std::string path = out_dir + "/carry.safetensors";
    FWP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    if (auto it = file->metadata().find("step");
        it != file->metadata().end() && it->second != absl::StrCat(t->step())) {
      return torn("carry.safetensors", it->second);
    }
    const int64_t floats = t->carry_[0]->slot_bytes() / 4;
    const int64_t streams = trainer.batch * trainer.accum;
    FWP_ASSIGN_OR_RETURN(std::vector<float> states, file->ReadF32("states"));
    const TensorInfo* positions = file->Find("positions");
    if (static_cast<int64_t>(states.size()) != streams * floats || positions == nullptr ||
        positions->dtype != DType::kI64 || positions->NumElements() != streams) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": carried states do not fit the run"));
    }
    const auto bytes = file->Bytes(*positions);
    for (int64_t s = 0; s < streams; ++s) {
      int64_t position;
      std::memcpy(&position, bytes.data() + 8 * s, 8);
      t->carry_[s / trainer.batch]->CopyFromHost(static_cast<int32_t>(s % trainer.batch),
                                                 states.data() + s * floats, position);
    }
  }
  return t;
}

absl::StatusOr<StepReport> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  const int64_t step = optimizer_->step() + 1;
  const int64_t B = config_.batch, T = config_.seq, M = config_.accum;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  auto take = [&](int64_t b, uint64_t offset) {
    for (int64_t t = 0; t < T; ++t) {
      tokens[b * T + t] = train_.tokens[offset + t];
      targets[b * T + t] = train_.tokens[offset + t + 1];
    }
  };
  // Stream s (of B·M) covers [s·L, (s+1)·L); step k reads its window (k−1) mod W.
  const int64_t stream = (static_cast<int64_t>(train_.tokens.size()) - 1) / (B * M);
  const int64_t window = carry_.empty() ? 0 : (step - 1) % (stream / T);
  // Micro-batch m takes the m-th B of the step's B·M window offsets.
  Rng rng(config_.seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(step));
  const uint64_t span = train_.tokens.size() - T;  // window starts in [0, span)
  optimizer_->ZeroGrads();
  double loss_sum = 0, last_mean = 0;
  int64_t loss_count = 0;
  for (int64_t m = 0; m < M; ++m) {
    StatePool* carry = carry_.empty() ? nullptr : carry_[m].get();
    if (carry != nullptr) {
      if (window == 0) {
        for (int32_t b = 0; b < B; ++b) carry->Reset(b);
      }
      for (int64_t b = 0; b < B; ++b) take(b, (m * B + b) * stream + window * T);
    } else {
      for (int64_t b = 0; b < B; ++b) take(b, rng.Next() % span);
    }
    FWP_ASSIGN_OR_RETURN(Model::Loss loss,
                         model_->ForwardBackward(tokens, targets, B, &optimizer_->grads(), carry,
                                                 1.0f / static_cast<float>(M)));
    loss_sum += loss.mean * loss.count;
    loss_count += loss.count;
    last_mean = loss.mean;
  }
  StepReport report;
  report.step = step;
  report.lr = LearningRate(optimizer_->config(), step);
  report.loss = M == 1 ? last_mean : loss_sum / std::max<int64_t>(loss_count, 1);
  report.grad_norm = optimizer_->Step();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.tokens_per_second = B * M * T / seconds;
  return report;
}

absl::StatusOr<Model::Loss> Trainer::Evaluate() {
  if (config_.eval_stream) {
    return ScoreStream(*model_, valid_.tokens, 512, config_.eval_windows * config_.seq);
  }
  return ScoreWindows(*model_, valid_.tokens, config_.seq, config_.batch, config_.eval_windows);
}

absl::Status Trainer::SaveCheckpoint() {
  // The set goes to a staging folder first (FinishCheckpoint): a crash while
  // it is written leaves <out> at the checkpoint before, whole. Each file
  // also names its step, so that a set mixed by other means (files copied
  // by hand) is refused by Resume instead of mixing steps.
  const std::string staging = StagingDir(out_dir_);
  std::error_code error;
  std::filesystem::remove_all(staging, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot remove ", staging, ": ", error.message()));
  }
  const std::map<std::string, std::string> step = {{"step", absl::StrCat(optimizer_->step())}};
  FWP_RETURN_IF_ERROR(
      WriteModelDir(staging, model_config_, model_->Weights(), tokenizer_path_, step));
  FWP_RETURN_IF_ERROR(optimizer_->Save(staging + "/optimizer.safetensors"));
  if (!carry_.empty()) {
    // [batch × accum streams, state floats], stream s in pool s / batch.
    const int64_t floats = carry_[0]->slot_bytes() / 4;
    const int64_t streams = config_.batch * config_.accum;
    std::vector<float> states(streams * floats);
    std::vector<int64_t> positions(streams);
    for (int64_t s = 0; s < streams; ++s) {
      const StatePool& pool = *carry_[s / config_.batch];
      const auto slot = static_cast<int32_t>(s % config_.batch);
      pool.CopyToHost(slot, states.data() + s * floats);
      positions[s] = pool.position(slot);
    }
    FWP_RETURN_IF_ERROR(WriteSafetensors(
        staging + "/carry.safetensors",
        {{"states", DType::kF32, {streams, floats},
          {reinterpret_cast<const uint8_t*>(states.data()), states.size() * 4}},
         {"positions", DType::kI64, {streams},
          {reinterpret_cast<const uint8_t*>(positions.data()), positions.size() * 8}}},
        step));
  }
  FWP_RETURN_IF_ERROR(WriteFileAtomically(staging + "/trainer.json",
                                          ToJson(config_, optimizer_->step()).dump(2) + "\n"));
  return FinishCheckpoint(out_dir_);
}

absl::Status Trainer::Run(const std::function<void(const StepReport&)>& report,
                          const std::function<bool()>& stop) {
  while (optimizer_->step() < config_.steps) {
    FWP_ASSIGN_OR_RETURN(StepReport r, Step());
    // A diverged run must not go on (nor checkpoint NaN weights) and end
    // as if it had trained.
    if (!std::isfinite(r.loss)) {
      return absl::InternalError(absl::StrCat("loss is not finite at step ", r.step,
                                              ": lower --lr (", config_.optimizer.lr,
                                              ") or --clip, or check the data"));
    }
    if (!std::isfinite(r.grad_norm)) {  // the optimiser left the weights as they were
      return absl::InternalError(absl::StrCat(
          "the gradient is not finite at step ", r.step, " (the loss is ", r.loss,
          "); the step was not applied: lower --lr (", config_.optimizer.lr,
          "), or check the data"));
    }
    const bool last = r.step == config_.steps;
    if ((config_.eval_every > 0 && r.step % config_.eval_every == 0) || last) {
      FWP_ASSIGN_OR_RETURN(Model::Loss valid, Evaluate());
      if (!std::isfinite(valid.mean)) {
        return absl::InternalError(absl::StrCat("valid loss is not finite at step ", r.step,
                                                ": lower --lr (", config_.optimizer.lr,
                                                ") or --clip, or check the data"));
      }
      r.valid_loss = valid.mean;
      // The record follows the weights at once (a checkpoint may be many
      // steps away): a resumed run compares with the best that best/ holds.
      if (config_.keep_best && (best_step_ == 0 || valid.mean < best_valid_loss_)) {
        FWP_RETURN_IF_ERROR(WriteModelDir(out_dir_ + "/best", model_config_, model_->Weights(),
                                          tokenizer_path_));
        const json record = {{"step", r.step}, {"valid_loss", valid.mean}};
        FWP_RETURN_IF_ERROR(WriteFileAtomically(out_dir_ + "/best/best.json", record.dump() + "\n"));
        // (A kill between the two writes leaves best/ one best ahead of its
        // record: a later, worse evaluation may then replace it. Rare, and
        // nothing is mixed: best/ is always one model.)
        best_step_ = r.step;
        best_valid_loss_ = valid.mean;
        r.new_best = true;
      }
    }
    const bool checkpoint =
        (config_.checkpoint_every > 0 && r.step % config_.checkpoint_every == 0) || last;
    if (checkpoint) FWP_RETURN_IF_ERROR(SaveCheckpoint());
    report(r);
    // Stopped between steps, the run is checkpointed where it stands, so
    // that --resume continues it exactly (as from any checkpoint).
    if (!last && stop && stop()) {
      if (!checkpoint) FWP_RETURN_IF_ERROR(SaveCheckpoint());
      return absl::CancelledError(absl::StrCat("stopped at step ", r.step, " of ", config_.steps,
                                               ", checkpointed"));
    }
  }
  return absl::OkStatus();
}

}  // namespace fwp
