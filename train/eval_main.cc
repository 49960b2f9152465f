// fwp-eval: perplexity and bits per byte of a model directory on a split.
//
//   fwp-eval --model models/default --data data/brown --split test
//
// --context window (default): contiguous windows of --seq tokens, each from
// an empty state, as during training. --context stream: the whole split as
// one stream with the state carried throughout, every prediction seeing all
// that came before (the recurrent model's unbounded context).
//
//   fwp-eval --retrieval runs/retrieval/models/delta+dpfp1-setting2-S40.safetensors
//
// scores a memory saved by fwp-retrieval --save on --sequences fresh test
// sequences (each queried with every key it holds): loss ½‖v − ŷ‖² and the
// fraction of queries whose largest output is the right value.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <new>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "model/model_dir.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "train/retrieval.h"
#include "train/scoring.h"
#include "train/token_file.h"

ABSL_FLAG(std::string, model, "models/default", "model directory");
ABSL_FLAG(std::string, data, "data/brown", "prepared data directory (token files, stats.json)");
ABSL_FLAG(std::string, split, "valid", "train, valid or test");
ABSL_FLAG(std::string, context, "window", "window or stream");
ABSL_FLAG(int64_t, seq, 128, "window length (--context window), ≥ 1");
ABSL_FLAG(int64_t, batch, 16, "windows per forward pass");
ABSL_FLAG(std::string, backend, "auto",
          "auto (cuda when a GPU is present, else cpu), cpu, cuda or cuda:N");
ABSL_FLAG(std::string, retrieval, "", "a retrieval memory saved by fwp-retrieval --save: score it");
ABSL_FLAG(int64_t, sequences, 100, "test sequences for --retrieval");
ABSL_FLAG(uint64_t, seed, 12345, "seed of the --retrieval test sequences");

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "fwp-eval: %s\n", std::string(s.message()).c_str());
  return 1;
}

// Bytes of `split` from <data>/stats.json, for bits per byte; 0 when the
// file is absent or does not list the split (the line then omits it).
absl::StatusOr<double> SplitBytes(const std::string& data, const std::string& split) {
  const std::string path = data + "/stats.json";
  std::ifstream in(path);
  if (!in) return 0.0;
  std::stringstream text;
  text << in.rdbuf();
  const auto stats = nlohmann::json::parse(text.str(), nullptr, false);
  if (stats.is_discarded() || !stats.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  if (!stats.contains(split)) return 0.0;
  const auto& entry = stats[split];
  if (!entry.is_object() || !entry.contains("bytes") || !entry["bytes"].is_number() ||
      !(entry["bytes"].get<double>() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": field '", split, ".bytes' must be a positive number"));
  }
  return entry["bytes"].get<double>();
}

int EvaluateRetrieval(fwp::Backend& backend, const std::string& path) {
  auto task = fwp::RetrievalTask::Load(backend, path, absl::GetFlag(FLAGS_seed));
  if (!task.ok()) return Fail(task.status());
  const int64_t sequences = absl::GetFlag(FLAGS_sequences);
  if (sequences < 1) return Fail(absl::InvalidArgumentError("--sequences must be ≥ 1"));
  (*task)->set_eval_sequences(sequences);
  auto eval = (*task)->Evaluate();
  if (!eval.ok()) return Fail(eval.status());
  const fwp::RetrievalConfig& c = (*task)->config();
  std::printf("%s: setting %d, S %lld, %s + %s%s, trained %lld steps: %lld sequences, "
              "%lld queries, loss %.6f, accuracy %.4f\n",
              path.c_str(), c.setting, (long long)c.pairs, fwp::UpdateRuleName(c.update),
              fwp::FeatureMapName(c.phi.kind),
              c.phi.kind == fwp::FeatureMapKind::kDpfp ? std::to_string(c.phi.nu).c_str() : "",
              (long long)(*task)->steps(), (long long)sequences,
              (long long)eval->queries, eval->loss, eval->accuracy);
  return 0;
}

}  // namespace

static int Main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "perplexity and bits per byte of a model on a split, or a retrieval memory's accuracy\n"
      "\n"
      "  fwp-eval --model models/default --data data/brown --split test\n"
      "  fwp-eval --retrieval FILE.safetensors");
  auto made = fwp::MakeBackend(absl::GetFlag(FLAGS_backend));
  if (!made.ok()) return Fail(made.status());
  std::unique_ptr<fwp::Backend> backend = std::move(*made);
  if (!absl::GetFlag(FLAGS_retrieval).empty()) {
    return EvaluateRetrieval(*backend, absl::GetFlag(FLAGS_retrieval));
  }
  // A name, not a path: --split ../x/valid would read another directory's
  // tokens and score them against this one's stats.json.
  const std::string split = absl::GetFlag(FLAGS_split);
  if (split != "train" && split != "valid" && split != "test") {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--split must be train, valid or test, not '", split, "'")));
  }
  const std::string context = absl::GetFlag(FLAGS_context);
  if (context != "window" && context != "stream") {
    return Fail(absl::InvalidArgumentError("--context must be window or stream"));
  }
  const int64_t T = absl::GetFlag(FLAGS_seq), B = absl::GetFlag(FLAGS_batch);
  constexpr int64_t kMaxTokensPerPass = int64_t{1} << 31;
  if (T < 1 || T > kMaxTokensPerPass) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--seq must be in [1, 2^31], not ", T)));
  }
  if (B < 1 || B > kMaxTokensPerPass / T) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "--batch must be ≥ 1 with --batch × --seq ≤ 2^31 tokens, not ", B)));
  }
  auto bytes = SplitBytes(absl::GetFlag(FLAGS_data), split);
  if (!bytes.ok()) return Fail(bytes.status());
  auto loaded = fwp::LoadModelDir(absl::GetFlag(FLAGS_model), *backend);
  if (!loaded.ok()) return Fail(loaded.status());
  fwp::Model& model = *loaded->model;
  // Tokens cut by another tokenizer name other pieces: the figures would
  // look like any others and mean nothing.
  const std::string data_tokenizer = absl::GetFlag(FLAGS_data) + "/tokenizer.model";
  if (std::filesystem::exists(data_tokenizer)) {
    auto theirs = fwp::Tokenizer::Load(data_tokenizer);
    if (!theirs.ok()) return Fail(theirs.status());
    if (!fwp::SameVocabulary(*loaded->tokenizer, **theirs)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--data ", absl::GetFlag(FLAGS_data), " was tokenized otherwise than --model ",
          absl::GetFlag(FLAGS_model), ": prepare it with fwp-prepare --tokenizer ",
          absl::GetFlag(FLAGS_model), "/tokenizer.model")));
    }
  }
  auto data = fwp::ReadTokenFile(absl::StrCat(absl::GetFlag(FLAGS_data), "/", split, ".tok"));
  if (!data.ok()) return Fail(data.status());
  const auto& tokens = data->tokens;
  const int64_t V = model.config().vocab_size;
  if (data->vocab_size > V) {
    return Fail(absl::InvalidArgumentError("the data's vocabulary is larger than the model's"));
  }
  const int64_t needed = context == "window" ? T + 1 : 2;
  if (static_cast<int64_t>(tokens.size()) < needed) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        split, " split has ", tokens.size(), " tokens, fewer than the ", needed,
        " one prediction needs", context == "window" ? " (--seq + 1)" : "")));
  }
  auto scored = context == "window" ? fwp::ScoreWindows(model, tokens, T, B)
                                     : fwp::ScoreStream(model, tokens);
  if (!scored.ok()) return Fail(scored.status());
  const int64_t count = scored->count;
  const double nats = scored->mean * count;
  const double loss = nats / count;
  std::printf("%s: %lld tokens scored, loss %.4f nats/token, perplexity %.2f", split.c_str(),
              (long long)count, loss, std::exp(loss));
  // Bits per byte of the split: the mean loss per prediction times the
  // split's predictions per byte (windows score only whole windows, fewer
  // predictions than the split's bytes hold; a stream scores them all).
  const auto predictions = static_cast<double>(tokens.size() - 1);
  if (*bytes > 0) std::printf(", %.4f bits/byte", loss * predictions / std::log(2.0) / *bytes);
  std::printf(" (context %s, %s)\n", context.c_str(), backend->Name());
  return 0;
}

int main(int argc, char** argv) { return fwp::RunMain("fwp-eval", Main, argc, argv); }
