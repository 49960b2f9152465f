// fwp-retrieval: the paper's synthetic associative retrieval experiments.
//
//   fwp-retrieval --setting 1 --update sum --phi dpfp --nu 2 --from 20 --to 600 --by 20
//   fwp-retrieval --setting 2 --update delta --phi elu1 --from 20 --to 200 --by 20
//
// For each S it trains with the paper's schedule and stopping rule and prints
// (and appends to --csv) the final and best evaluation loss and accuracy;
// --save DIR keeps each trained memory as DIR/<rule>+<map>-setting<k>-S<S>.safetensors
// (fwp-eval --retrieval FILE scores it again on fresh sequences).
#include <cmath>
#include <cstdio>
#include <new>
#include <filesystem>
#include <fstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "train/retrieval.h"

ABSL_FLAG(int, setting, 1, "1: capacity (distinct keys), 2: updates (keys with replacement)");
ABSL_FLAG(std::string, update, "delta", "delta or sum");
ABSL_FLAG(std::string, phi, "dpfp", "dpfp, elu1 or relu");
ABSL_FLAG(int, nu, 1, "DPFP ν, 1 to 16");
ABSL_FLAG(int64_t, from, 20, "smallest S (≥ 2)");
ABSL_FLAG(int64_t, to, 20, "largest S (≤ 100000)");
ABSL_FLAG(int64_t, by, 20, "step of S (≥ 1)");
ABSL_FLAG(int64_t, max_steps, 100000, "step budget per S");
ABSL_FLAG(uint64_t, seed, 1, "seed");
ABSL_FLAG(std::string, backend, "auto",
          "auto (cuda when a GPU is present, else cpu), cpu, cuda or cuda:N");
ABSL_FLAG(std::string, csv, "", "append results to this CSV file");
ABSL_FLAG(std::string, save, "", "directory to save each trained memory in");
ABSL_FLAG(int64_t, eval_every, 100, "steps between evaluations");
ABSL_FLAG(int64_t, eval_sequences, 20, "test sequences per evaluation (each queried with every key)");
ABSL_FLAG(int64_t, patience, 10, "stop after this many evaluations without improvement");
ABSL_FLAG(int64_t, batch, 32, "sequences per step");
ABSL_FLAG(double, lr, 1e-3, "Adam learning rate");
ABSL_FLAG(int64_t, d_key, 64, "key (and query) dimension");
ABSL_FLAG(bool, progress, false, "print every evaluation");
ABSL_FLAG(double, max_seconds, 0,
          "also stop each S at its first evaluation after this many seconds (0: no limit)");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "fwp-retrieval: %s\n", message.c_str());
  return 1;
}

}  // namespace

static int Main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "the paper's synthetic associative retrieval experiments\n"
      "\n"
      "  fwp-retrieval --setting 1 --update sum --phi dpfp --nu 2 --from 20 --to 600 --by 20");
  auto made = fwp::MakeBackend(absl::GetFlag(FLAGS_backend));
  if (!made.ok()) {
    std::fprintf(stderr, "fwp-retrieval: %s\n", std::string(made.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<fwp::Backend> backend = std::move(*made);
  backend->SetBatchInvariant(false);  // training: cuBLAS
  std::printf("backend %s\n", backend->Name());
  fwp::RetrievalConfig config;
  config.setting = absl::GetFlag(FLAGS_setting);
  const std::string update = absl::GetFlag(FLAGS_update), phi = absl::GetFlag(FLAGS_phi);
  const auto rule = fwp::UpdateRuleFromName(update);
  const auto kind = fwp::FeatureMapFromName(phi);
  if (!rule || !kind) {
    std::fprintf(stderr, "fwp-retrieval: unknown %s '%s'\n", rule ? "--phi" : "--update",
                 (rule ? phi : update).c_str());
    return 1;
  }
  config.update = *rule;
  config.phi.kind = *kind;
  config.phi.nu = absl::GetFlag(FLAGS_nu);
  config.max_steps = absl::GetFlag(FLAGS_max_steps);
  config.max_seconds = absl::GetFlag(FLAGS_max_seconds);
  config.seed = absl::GetFlag(FLAGS_seed);
  config.eval_every = absl::GetFlag(FLAGS_eval_every);
  config.eval_sequences = absl::GetFlag(FLAGS_eval_sequences);
  config.patience = absl::GetFlag(FLAGS_patience);
  config.batch = absl::GetFlag(FLAGS_batch);
  config.lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
  config.d_key = absl::GetFlag(FLAGS_d_key);
  if (config.eval_every < 1 || config.eval_sequences < 1 || config.max_steps < 1) {
    std::fprintf(stderr, "fwp-retrieval: --eval_every, --eval_sequences and --max_steps must be ≥ 1\n");
    return 1;
  }
  const int64_t from = absl::GetFlag(FLAGS_from), to = absl::GetFlag(FLAGS_to),
                by = absl::GetFlag(FLAGS_by);
  if (from < 2 || from > fwp::kMaxRetrievalPairs) {
    return Fail(absl::StrCat("--from must be in [2, ", fwp::kMaxRetrievalPairs, "], not ", from));
  }
  if (to < from || to > fwp::kMaxRetrievalPairs) {
    return Fail(absl::StrCat("--to must be in [--from = ", from, ", ", fwp::kMaxRetrievalPairs,
                             "], not ", to));
  }
  if (by < 1) return Fail(absl::StrCat("--by must be ≥ 1, not ", by));
  if (config.phi.nu < 1 || config.phi.nu > fwp::kMaxDpfpNu) {
    return Fail(absl::StrCat("--nu must be in [1, ", fwp::kMaxDpfpNu, "], not ", config.phi.nu));
  }
  if (!std::isfinite(config.lr) || config.lr <= 0) {
    return Fail(absl::StrCat("--lr must be finite and > 0, not ", absl::GetFlag(FLAGS_lr)));
  }
  if (config.batch < 1) return Fail(absl::StrCat("--batch must be ≥ 1, not ", config.batch));
  if (config.d_key < 1 || config.d_key > (1 << 16)) {
    return Fail(absl::StrCat("--d_key must be in [1, 65536], not ", config.d_key));
  }
  if (config.patience < 0) return Fail(absl::StrCat("--patience must be ≥ 0, not ", config.patience));
  // Opened before the first S trains (hours, at large S), so that a path
  // it cannot write fails now rather than dropping the results.
  const std::string csv_path = absl::GetFlag(FLAGS_csv);
  std::ofstream csv;
  if (!csv_path.empty()) {
    csv.open(csv_path, std::ios::app);
    if (!csv) return Fail(absl::StrCat("--csv: cannot write ", csv_path));
  }
  const std::string save_dir = absl::GetFlag(FLAGS_save);
  if (!save_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(save_dir, error);
    if (error) {
      std::fprintf(stderr, "fwp-retrieval: cannot create %s: %s\n", save_dir.c_str(),
                   error.message().c_str());
      return 1;
    }
  }
  const std::string name = absl::GetFlag(FLAGS_update) + "+" + phi +
                           (phi == "dpfp" ? std::to_string(config.phi.nu) : "");
  std::printf("%-12s %7s %5s %8s %11s %9s %11s %9s\n", "memory", "setting", "S", "steps",
              "final loss", "final acc", "best loss", "best acc");
  for (int64_t S = from; S <= to; S += by) {
    config.pairs = S;
    auto task = fwp::RetrievalTask::Create(*backend, config);
    if (!task.ok()) {
      std::fprintf(stderr, "fwp-retrieval: %s\n", std::string(task.status().message()).c_str());
      return 1;
    }
    const bool progress = absl::GetFlag(FLAGS_progress);
    auto result = (*task)->Train([&](int64_t step, const fwp::RetrievalEval& eval) {
      if (progress) {
        std::printf("  S=%lld step %lld: loss %.4f, accuracy %.3f\n", (long long)S,
                    (long long)step, eval.loss, eval.accuracy);
        std::fflush(stdout);
      }
    });
    if (!result.ok()) {
      std::fprintf(stderr, "fwp-retrieval: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    std::printf("%-12s %7d %5lld %8lld %11.4f %9.3f %11.4f %9.3f\n", name.c_str(), config.setting,
                (long long)S, (long long)result->steps, result->last.loss, result->last.accuracy,
                result->best.loss, result->best.accuracy);
    if (result->out_of_time) std::printf("  (S=%lld stopped by --max_seconds)\n", (long long)S);
    std::fflush(stdout);
    if (!save_dir.empty()) {
      const std::string path = save_dir + "/" + name + "-setting" +
                               std::to_string(config.setting) + "-S" + std::to_string(S) +
                               ".safetensors";
      const absl::Status saved = (*task)->Save(path);
      if (!saved.ok()) {
        std::fprintf(stderr, "fwp-retrieval: %s\n", std::string(saved.message()).c_str());
        return 1;
      }
    }
    if (csv.is_open()) {
      csv << name << ',' << config.setting << ',' << S << ',' << result->steps << ','
          << result->last.loss << ',' << result->last.accuracy << ',' << result->best.loss << ','
          << result->best.accuracy << '\n';
      csv.flush();
      if (!csv) return Fail(absl::StrCat("--csv: writing ", csv_path, " failed"));
    }
  }
  return 0;
}

int main(int argc, char** argv) { return fwp::RunMain("fwp-retrieval", Main, argc, argv); }
