// fwp-train: trains an FWP language model on prepared token files.
//
//   fwp-train --config models/default.json --data data/brown --out runs/default
//             --batch 16 --seq 128 --steps 4000 --lr 2e-3
//   fwp-train --out runs/default --resume [--steps 6000]
//   fwp-train --config models/default.json --set n_layers=8,feature_map.nu=2 ...
//   fwp-train --init models/default --data data/mine --out runs/mine --lr 3e-4
//
// Prints a progress line (loss, tokens/s, ETA) on a terminal, always appends
// to <out>/log.csv, and at the end plots <out>/loss.png with gnuplot when it
// is installed. --backend cuda trains on the GPU.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <new>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "model/config.h"
#include "model/atomic_file.h"
#include "model/model_dir.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "train/trainer.h"

ABSL_FLAG(std::string, config, "", "model config.json (new runs)");
ABSL_FLAG(std::vector<std::string>, set, {},
          "config fields over --config's, field=value, repeatable or comma-separated: "
          "--set n_layers=8,update=sum --set feature_map.nu=2 (feature_map=elu1 replaces the map)");
ABSL_FLAG(std::string, init, "",
          "a model directory to start from (fine-tuning) instead of random weights; its "
          "config.json is the run's, and --data must use its tokenizer");
ABSL_FLAG(std::string, data, "data/brown", "prepared data: train.tok, valid.tok, tokenizer.model");
ABSL_FLAG(std::string, out, "", "checkpoint directory");
ABSL_FLAG(bool, resume, false, "continue the run in --out");
ABSL_FLAG(std::string, backend, "auto",
          "auto (cuda when a GPU is present, else cpu), cpu, cuda or cuda:N");
ABSL_FLAG(int64_t, batch, 16, "sequences per forward/backward pass");
ABSL_FLAG(int64_t, accum, 1,
          "passes whose gradients each step sums (a step sees --batch × --accum sequences "
          "in the memory of --batch)");
ABSL_FLAG(int64_t, seq, 128, "tokens per sequence");
ABSL_FLAG(int64_t, steps, 0,
          "optimiser steps in all (0: 1000 for a new run, the run's own with --resume); "
          "extending a resumed run keeps its learning-rate schedule, so the extra steps "
          "run at the schedule's final rate");
ABSL_FLAG(double, lr, 1e-3, "peak learning rate");
ABSL_FLAG(double, min_lr_ratio, 0.1, "final learning rate as a fraction of --lr");
ABSL_FLAG(int64_t, warmup, 100, "linear warm-up steps");
ABSL_FLAG(double, weight_decay, 0.1, "decoupled weight decay of matrices");
ABSL_FLAG(double, clip, 1.0, "gradient-norm clipping (0: off)");
ABSL_FLAG(int64_t, eval_every, 200, "steps between evaluations on the valid split");
ABSL_FLAG(int64_t, eval_windows, 0,
          "valid windows per evaluation (0: the whole split; with stream, that many --seq's)");
ABSL_FLAG(std::string, eval_context, "auto",
          "how evaluations read the valid split: window (--seq tokens from empty states), "
          "stream (one stream, state carried), auto (stream with --carry_state, else window)");
ABSL_FLAG(int64_t, checkpoint_every, 500, "steps between checkpoints");
ABSL_FLAG(bool, keep_best, false,
          "also write the model directory to <out>/best after each evaluation with the "
          "lowest valid loss so far");
ABSL_FLAG(uint64_t, seed, 1, "seed of the initial weights and of the batches");
ABSL_FLAG(bool, carry_state, false,
          "train on contiguous streams with the fast-weight state carried between steps");

namespace {

// The signal that asked the run to stop (SIGINT, SIGTERM, SIGHUP), or 0.
// The first stops the run at the end of its step, checkpointed, and says so
// at once; any second one ends the process there and then.
volatile std::sig_atomic_t stop_signal = 0;

void RequestStop(int signal) {
  if (stop_signal != 0) {
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return;
  }
  stop_signal = signal;
  static const char kSaid[] =
      "\nfwp-train: stopping after this step, checkpointed (a second signal ends it now)\n";
  ssize_t ignored = write(STDERR_FILENO, kSaid, sizeof kSaid - 1);  // async-signal-safe
  (void)ignored;
}

void StopOnSignals() {
  struct sigaction action = {};
  action.sa_handler = RequestStop;
  action.sa_flags = SA_RESTART;  // a write to a slow pipe is not cut short
  sigemptyset(&action.sa_mask);
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) sigaction(signal, &action, nullptr);
}

const char* SignalName(int signal) {
  return signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "SIGHUP";
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "fwp-train: %s\n", std::string(s.message()).c_str());
  return 1;
}

void Plot(const std::string& out) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) return;
  // A script file, not `gnuplot -e`: the shell would expand gnuplot's $6.
  const std::string script = out + "/loss.gp";
  std::ofstream(script) << "set terminal pngcairo size 900,500\n"
                        << "set output '" << out << "/loss.png'\n"
                        << "set datafile separator ','\n"
                        << "set key top right\nset xlabel 'step'\nset ylabel 'loss (nats)'\n"
                        << "set title 'fwp-train'\n"
                        << "plot '" << out << "/log.csv' every ::1 using 1:3 with lines title 'train', "
                        << "'' every ::1 using 1:($6 >= 0 ? $6 : 1/0) with linespoints title 'valid'\n";
  const std::string cmd = "gnuplot '" + script + "' 2>/dev/null";
  if (std::system(cmd.c_str()) == 0) std::printf("plotted %s/loss.png\n", out.c_str());
}

// Settings a resumed run takes from its trainer.json and config.json; given
// again, they would silently do nothing (or break the exact continuation).
absl::Status CheckNoFixedFlags(const std::vector<std::string>& args,
                               const fwp::TrainerConfig& run, const std::string& out) {
  const fwp::OptimizerConfig& o = run.optimizer;
  const std::pair<const char*, std::string> fixed[] = {
      {"config", out + "/config.json"},
      {"set", out + "/config.json"},
      {"batch", absl::StrCat(run.batch)},
      {"seq", absl::StrCat(run.seq)},
      {"accum", absl::StrCat(run.accum)},
      {"lr", absl::StrCat(o.lr)},
      {"min_lr_ratio", absl::StrCat(o.min_lr_ratio)},
      {"warmup", absl::StrCat(o.warmup_steps)},
      {"weight_decay", absl::StrCat(o.weight_decay)},
      {"clip", absl::StrCat(o.clip_norm)},
      {"seed", absl::StrCat(run.seed)},
      {"carry_state", run.carry_state ? "true" : "false"},
      {"keep_best", run.keep_best ? "true" : "false"},
      {"eval_context", run.eval_stream ? "stream" : "window"},
      {"eval_every", absl::StrCat(run.eval_every)},
      {"eval_windows", absl::StrCat(run.eval_windows)},
      {"checkpoint_every", absl::StrCat(run.checkpoint_every)},
  };
  for (const auto& [flag, value] : fixed) {
    if (fwp::FlagGiven(args, flag)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " cannot change on --resume: ",
                                                     out, " runs with ", flag, " ", value));
    }
  }
  return absl::OkStatus();
}

// A resumed run appends to log.csv from the checkpoint's step on; rows a
// crashed run logged after its last checkpoint would otherwise appear twice.
absl::Status CutLog(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return absl::OkStatus();
  std::string kept, line;
  for (bool header = true; std::getline(in, line); header = false) {
    if (!header && (line.empty() || std::strtoll(line.c_str(), nullptr, 10) > step)) continue;
    kept += line + "\n";
  }
  return fwp::WriteFileAtomically(path, kept);
}

}  // namespace

static int Main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "train an FWP language model on prepared token files\n"
      "\n"
      "  fwp-train --config models/default.json --data data/brown --out runs/default\n"
      "  fwp-train --out runs/default --resume [--steps N]");
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return Fail(absl::InvalidArgumentError("--out is required"));
  const bool resume = absl::GetFlag(FLAGS_resume);
  // A checkpoint a crash left half moved in is completed (or, cut off while
  // written, dropped) before anything reads the run.
  if (auto s = fwp::FinishCheckpoint(out); !s.ok()) return Fail(s);
  const int64_t steps = absl::GetFlag(FLAGS_steps);
  if (steps < 0) return Fail(absl::InvalidArgumentError("--steps must be ≥ 1 (or 0: the default)"));
  const std::string init = absl::GetFlag(FLAGS_init);
  auto set = fwp::RepeatedFlagValues(fwp::UnderscoreFlagNames(argc, argv), "set",
                                     absl::GetFlag(FLAGS_set));
  if (!set.ok()) return Fail(set.status());
  const std::vector<std::string>& settings = *set;
  fwp::TrainerConfig tc;
  if (resume && !init.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--init starts a new run from a model; --resume continues the run in --out"));
  }
  if (!resume) {
    if (absl::GetFlag(FLAGS_config).empty() == init.empty()) {
      return Fail(absl::InvalidArgumentError(
          init.empty() ? "a new run needs --config, or --init DIR to fine-tune a model (or --resume)"
                       : "--init DIR takes its config from DIR/config.json: drop --config"));
    }
    if (!init.empty() && !settings.empty()) {
      return Fail(absl::InvalidArgumentError(
          "--set cannot change --init's config: its weights fix every shape"));
    }
    tc.batch = absl::GetFlag(FLAGS_batch);
    tc.seq = absl::GetFlag(FLAGS_seq);
    tc.accum = absl::GetFlag(FLAGS_accum);
    tc.steps = steps > 0 ? steps : 1000;
    tc.eval_every = absl::GetFlag(FLAGS_eval_every);
    tc.eval_windows = absl::GetFlag(FLAGS_eval_windows);
    tc.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
    tc.seed = absl::GetFlag(FLAGS_seed);
    tc.carry_state = absl::GetFlag(FLAGS_carry_state);
    tc.keep_best = absl::GetFlag(FLAGS_keep_best);
    const std::string context = absl::GetFlag(FLAGS_eval_context);
    if (context != "auto" && context != "window" && context != "stream") {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--eval_context must be auto, window or stream, not '", context, "'")));
    }
    tc.eval_stream = context == "stream" || (context == "auto" && tc.carry_state);
    tc.optimizer.lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
    tc.optimizer.min_lr_ratio = static_cast<float>(absl::GetFlag(FLAGS_min_lr_ratio));
    tc.optimizer.warmup_steps = absl::GetFlag(FLAGS_warmup);
    tc.optimizer.total_steps = tc.steps;
    tc.optimizer.weight_decay = static_cast<float>(absl::GetFlag(FLAGS_weight_decay));
    tc.optimizer.clip_norm = static_cast<float>(absl::GetFlag(FLAGS_clip));
    if (auto s = fwp::CheckTrainerConfig(tc); !s.ok()) return Fail(s);
    if (auto at = fwp::CheckpointStep(out); !absl::IsNotFound(at.status())) {
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          out, " holds a run", at.ok() ? absl::StrCat(" at step ", *at) : std::string(),
          ": --resume to continue it, or choose another --out")));
    }
  }
  std::string data = absl::GetFlag(FLAGS_data);
  if (resume) {
    // The run reads the token files it was trained on: the --data recorded
    // in trainer.json (runs from before it was recorded take the flag), or
    // --data where that directory is gone (moved).
    auto run = fwp::ReadTrainerConfig(out);
    if (!run.ok()) return Fail(run.status());
    if (!run->data.empty()) {
      std::error_code error;
      const bool given = fwp::FlagGiven(fwp::UnderscoreFlagNames(argc, argv), "data");
      const bool gone = !std::filesystem::exists(run->data);
      if (!given && gone) {
        return Fail(absl::NotFoundError(absl::StrCat(
            out, " runs with data ", run->data, ", which is gone: --data names its new place")));
      }
      if (!given) {
        data = run->data;
      } else if (!gone && !std::filesystem::equivalent(data, run->data, error)) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            "--data cannot change on --resume: ", out, " runs with data ", run->data)));
      }
    }
    // Token files prepared again with another tokenizer would mean other
    // pieces; a directory that says nothing of its tokenizer cannot be checked.
    if (std::filesystem::exists(out + "/tokenizer.model")) {
      if (!std::filesystem::exists(data + "/tokenizer.model")) {
        return Fail(absl::NotFoundError(absl::StrCat(
            "--data ", data, " has no tokenizer.model to check against ", out, "'s")));
      }
      auto same = fwp::SameVocabularyFiles(data + "/tokenizer.model", out + "/tokenizer.model");
      if (!same.ok()) return Fail(same.status());
      if (!*same) {
        return Fail(absl::FailedPreconditionError(absl::StrCat(
            "--data ", data, " is no longer tokenized as ", out,
            " was trained: its tokenizer.model has other pieces")));
      }
    }
  }
  // Recorded absolute, so that --resume from another directory finds it.
  tc.data = std::filesystem::absolute(data).lexically_normal().string();
  // A new run copies the tokenizer into every checkpoint: missing, it
  // would fail only at the first one, after the training time is spent.
  if (!resume && !std::filesystem::is_regular_file(data + "/tokenizer.model")) {
    return Fail(absl::NotFoundError(absl::StrCat("--data ", data, " has no tokenizer.model")));
  }
  // Fine-tuning on text tokenized otherwise would train the model on ids
  // that mean other pieces than they did.
  if (!init.empty() && std::filesystem::exists(init + "/tokenizer.model")) {
    auto same = fwp::SameVocabularyFiles(data + "/tokenizer.model", init + "/tokenizer.model");
    if (!same.ok()) return Fail(same.status());
    if (!*same) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--data ", data, " was tokenized otherwise than --init ", init,
          ": prepare it with fwp-prepare --tokenizer ", init, "/tokenizer.model")));
    }
  }
  auto made = fwp::MakeBackend(absl::GetFlag(FLAGS_backend));
  if (!made.ok()) return Fail(made.status());
  std::unique_ptr<fwp::Backend> backend = std::move(*made);
  backend->SetBatchInvariant(false);  // training needs no per-row invariance: cuBLAS
  auto train = fwp::ReadTokenFile(data + "/train.tok");
  if (!train.ok()) return Fail(train.status());
  auto valid = fwp::ReadTokenFile(data + "/valid.tok");
  if (!valid.ok()) return Fail(valid.status());

  std::unique_ptr<fwp::Trainer> trainer;
  if (resume) {
    auto t = fwp::Trainer::Resume(*backend, out, std::move(*train), std::move(*valid), steps,
                                  tc.data);
    if (!t.ok()) return Fail(t.status());
    trainer = std::move(*t);
    if (auto s = CheckNoFixedFlags(fwp::UnderscoreFlagNames(argc, argv), trainer->config(), out); !s.ok()) return Fail(s);
    if (auto s = CutLog(out + "/log.csv", trainer->step()); !s.ok()) return Fail(s);
    std::printf("resuming %s at step %lld of %lld on %s, data %s\n", out.c_str(),
                (long long)trainer->step(), (long long)trainer->config().steps, backend->Name(),
                data.c_str());
    const int64_t schedule = trainer->config().optimizer.total_steps;
    if (trainer->config().steps > schedule) {
      const fwp::OptimizerConfig& o = trainer->config().optimizer;
      std::printf("the learning-rate schedule ends at step %lld: the extension to step %lld runs "
                  "at its final rate, min_lr_ratio × lr = %g\n",
                  (long long)schedule, (long long)trainer->config().steps,
                  static_cast<double>(o.min_lr_ratio) * o.lr);
    }
  } else {
    absl::StatusOr<fwp::HostModel> start;
    if (init.empty()) {
      auto config = fwp::Config::FromFile(absl::GetFlag(FLAGS_config), settings);
      if (config.ok()) start = fwp::HostModel{*config, fwp::RandomWeights(*config, tc.seed), {}};
      else start = config.status();
    } else {
      start = fwp::ReadHostModel(init);
    }
    if (!start.ok()) return Fail(start.status());
    const fwp::Config* config = &start->config;
    std::error_code error;
    std::filesystem::create_directories(out, error);
    if (error) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--out: cannot create ", out, ": ", error.message())));
    }
    auto t = fwp::Trainer::Create(*backend, *config, start->weights, tc,
                                  std::move(*train), std::move(*valid), out,
                                  data + "/tokenizer.model");
    if (!t.ok()) return Fail(t.status());
    trainer = std::move(*t);
    if (!(std::ofstream(out + "/log.csv")
          << "step,lr,loss,grad_norm,tokens_per_s,valid_loss,valid_ppl\n")) {
      return Fail(absl::PermissionDeniedError(absl::StrCat("cannot write ", out, "/log.csv")));
    }
    std::printf("%s %lld parameters%s on %s for %lld steps of %lld sequences%s\n",
                init.empty() ? "training" : "fine-tuning", (long long)config->ParameterCount(),
                init.empty() ? "" : (" from " + init).c_str(), backend->Name(), (long long)tc.steps,
                (long long)(tc.batch * tc.accum),
                tc.accum > 1 ? absl::StrCat(" (", tc.accum, " passes of ", tc.batch, ")").c_str()
                             : "");
  }
  const bool tty = isatty(fileno(stdout));
  std::fflush(stdout);  // what it trains, before the first step (stdout may be a file)
  StopOnSignals();
  std::ofstream log(out + "/log.csv", std::ios::app);
  const auto start = std::chrono::steady_clock::now();
  const int64_t first = trainer->step();
  double smooth = 0;
  auto status = trainer->Run([&](const fwp::StepReport& r) {
    smooth = r.step == first + 1 ? r.loss : 0.95 * smooth + 0.05 * r.loss;
    log << r.step << ',' << r.lr << ',' << r.loss << ',' << r.grad_norm << ','
        << r.tokens_per_second << ',' << r.valid_loss << ','
        << (r.valid_loss >= 0 ? std::exp(r.valid_loss) : -1) << '\n';
    log.flush();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double eta = elapsed / (r.step - first) * (trainer->config().steps - r.step);
    if (tty) {
      const int width = 30;
      const int filled = static_cast<int>(width * r.step / trainer->config().steps);
      std::printf("\r[%.*s%*s] %lld/%lld loss %.3f  %.0f tok/s  ETA %.0fs ", filled,
                  "##############################", width - filled, "", (long long)r.step,
                  (long long)trainer->config().steps, smooth, r.tokens_per_second, eta);
      std::fflush(stdout);
    }
    if (r.valid_loss >= 0) {
      std::printf("%sstep %lld  train %.4f  valid %s %.4f (ppl %.2f)  %.0f tok/s  %.0fs%s\n",
                  tty ? "\n" : "", (long long)r.step, smooth,
                  trainer->config().eval_stream ? "stream" : "windows", r.valid_loss,
                  std::exp(r.valid_loss),
                  r.tokens_per_second, elapsed, r.new_best ? "  best so far: saved to best/" : "");
      std::fflush(stdout);
    }
  }, [] { return stop_signal != 0; });
  if (absl::IsCancelled(status)) {
    std::fprintf(stderr, "fwp-train: %s: %s in %s; fwp-train --out %s --resume continues it\n",
                 SignalName(stop_signal), std::string(status.message()).c_str(), out.c_str(),
                 out.c_str());
    Plot(out);
    // Ended by the signal, as the shell must see it (a loop around fwp-train
    // stops too): 128 + the signal.
    std::fflush(nullptr);
    const int signal = stop_signal;
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return 128 + signal;
  }
  if (!status.ok()) return Fail(status);
  Plot(out);
  return 0;
}

int main(int argc, char** argv) { return fwp::RunMain("fwp-train", Main, argc, argv); }
