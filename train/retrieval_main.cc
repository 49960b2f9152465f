// fwp-retrieval: the paper's synthetic associative retrieval experiments.
//
//   fwp-retrieval --setting 1 --update sum --phi dpfp --nu 2 --from 20 --to 600 --by 20
//   fwp-retrieval --setting 2 --update delta --phi elu1 --from 20 --to 200 --by 20
//
// For each S it trains with the paper's schedule and stopping rule and prints
// (and appends to --csv) the final and best evaluation loss and accuracy.
#include <cstdio>
#include <fstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "train/retrieval.h"

ABSL_FLAG(int, setting, 1, "1: capacity (distinct keys), 2: updates (keys with replacement)");
ABSL_FLAG(std::string, update, "delta", "delta or sum");
ABSL_FLAG(std::string, phi, "dpfp", "dpfp, elu1, relu or identity");
ABSL_FLAG(int, nu, 1, "DPFP ν");
ABSL_FLAG(int64_t, from, 20, "smallest S");
ABSL_FLAG(int64_t, to, 20, "largest S");
ABSL_FLAG(int64_t, by, 20, "step of S");
ABSL_FLAG(int64_t, max_steps, 100000, "step budget per S");
ABSL_FLAG(uint64_t, seed, 1, "seed");
ABSL_FLAG(std::string, backend, "cpu", "cpu, cuda or cuda:N");
ABSL_FLAG(std::string, csv, "", "append results to this CSV file");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto made = fwp::MakeBackend(absl::GetFlag(FLAGS_backend));
  if (!made.ok()) {
    std::fprintf(stderr, "fwp-retrieval: %s\n", std::string(made.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<fwp::Backend> backend = std::move(*made);
  backend->SetBatchInvariant(false);  // training: cuBLAS
  fwp::RetrievalConfig config;
  config.setting = absl::GetFlag(FLAGS_setting);
  config.update = absl::GetFlag(FLAGS_update) == "sum" ? fwp::UpdateRule::kSum : fwp::UpdateRule::kDelta;
  const std::string phi = absl::GetFlag(FLAGS_phi);
  config.phi.kind = phi == "elu1" ? fwp::FeatureMapKind::kElu1
                    : phi == "relu" ? fwp::FeatureMapKind::kRelu
                    : phi == "identity" ? fwp::FeatureMapKind::kIdentity
                                        : fwp::FeatureMapKind::kDpfp;
  config.phi.nu = absl::GetFlag(FLAGS_nu);
  config.max_steps = absl::GetFlag(FLAGS_max_steps);
  config.seed = absl::GetFlag(FLAGS_seed);
  const std::string name = absl::GetFlag(FLAGS_update) + "+" + phi +
                           (phi == "dpfp" ? std::to_string(config.phi.nu) : "");
  std::printf("%-12s %7s %5s %8s %11s %9s %11s %9s\n", "memory", "setting", "S", "steps",
              "final loss", "final acc", "best loss", "best acc");
  for (int64_t S = absl::GetFlag(FLAGS_from); S <= absl::GetFlag(FLAGS_to); S += absl::GetFlag(FLAGS_by)) {
    config.pairs = S;
    auto task = fwp::RetrievalTask::Create(*backend, config);
    if (!task.ok()) {
      std::fprintf(stderr, "fwp-retrieval: %s\n", std::string(task.status().message()).c_str());
      return 1;
    }
    auto result = (*task)->Train([](int64_t, const fwp::RetrievalEval&) {});
    if (!result.ok()) {
      std::fprintf(stderr, "fwp-retrieval: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    std::printf("%-12s %7d %5lld %8lld %11.4f %9.3f %11.4f %9.3f\n", name.c_str(), config.setting,
                (long long)S, (long long)result->steps, result->last.loss, result->last.accuracy,
                result->best.loss, result->best.accuracy);
    std::fflush(stdout);
    if (!absl::GetFlag(FLAGS_csv).empty()) {
      std::ofstream(absl::GetFlag(FLAGS_csv), std::ios::app)
          << name << ',' << config.setting << ',' << S << ',' << result->steps << ','
          << result->last.loss << ',' << result->last.accuracy << ',' << result->best.loss << ','
          << result->best.accuracy << '\n';
    }
  }
  return 0;
}
