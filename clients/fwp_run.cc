// fwp-run: generate a continuation of a prompt on the CPU, token by token.
//
//   fwp-run --model models/default --prompt "The jury said" --max_tokens 64
//   fwp-run --random-init config.json --seed 1 --prompt_ids 1,2,3
//   fwp-run --random-init config.json --tokenizer tok.model --save out/dir
//   fwp-run --random-init config.json --set n_layers=2,update=sum --prompt_ids 1,2,3
//
// The prompt is prefilled in one call (chunked parallel form), then each new
// token takes one recurrent Step. Text streams as it becomes whole characters.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "kernels/random.h"
#include "kernels/sampling.h"
#include "model/model_dir.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json, model.safetensors, tokenizer.model)");
ABSL_FLAG(std::string, random_init, "", "config.json of a model to make with seeded random weights");
ABSL_FLAG(std::vector<std::string>, set, {},
          "with --random-init: config fields over the file's, field=value (as fwp-train's --set)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the random weights (--random-init)");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.model to use with --random-init");
ABSL_FLAG(std::string, save, "", "with --random-init: write the model directory here and exit");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(std::string, prompt_ids, "", "prompt as comma-separated token ids");
ABSL_FLAG(int32_t, max_tokens, 64, "tokens to generate");
ABSL_FLAG(float, temperature, 0.0f, "sampling temperature; 0 is greedy");
ABSL_FLAG(int32_t, top_k, 0, "keep the k most likely tokens (0: all)");
ABSL_FLAG(float, top_p, 1.0f, "keep the smallest set with this much probability");
ABSL_FLAG(float, min_p, 0.0f, "drop tokens below min_p times the top probability");
ABSL_FLAG(uint64_t, sample_seed, 0, "seed of the sampler");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past the end-of-sequence token");
ABSL_FLAG(bool, stats, false, "print prefill and decode speed to stderr");

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "fwp-run: %s\n", std::string(status.message()).c_str());
  return 1;
}

int Run(const std::vector<std::string>& settings) {
  using Clock = std::chrono::steady_clock;
  fwp::SamplingParams params;
  params.temperature = absl::GetFlag(FLAGS_temperature);
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.top_p = absl::GetFlag(FLAGS_top_p);
  params.min_p = absl::GetFlag(FLAGS_min_p);
  // The server's rules, named as flags, before a model is loaded or written.
  if (auto s = fwp::ValidateSamplingParams(params, "--"); !s.ok()) return Fail(s);
  if (absl::GetFlag(FLAGS_max_tokens) < 1) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--max_tokens must be ≥ 1, got ", absl::GetFlag(FLAGS_max_tokens))));
  }
  auto backend = fwp::MakeCpuBackend();
  fwp::LoadedModel loaded;
  if (!absl::GetFlag(FLAGS_random_init).empty()) {
    auto config = fwp::Config::FromFile(absl::GetFlag(FLAGS_random_init), settings);
    if (!config.ok()) return Fail(config.status());
    // A model directory whose tokenizer and embedding disagree would load
    // and then emit ids the tokenizer cannot decode (or never emit some).
    if (!absl::GetFlag(FLAGS_tokenizer).empty()) {
      auto tokenizer = fwp::Tokenizer::Load(absl::GetFlag(FLAGS_tokenizer));
      if (!tokenizer.ok()) return Fail(tokenizer.status());
      if ((*tokenizer)->vocab_size() != config->vocab_size) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            "--random_init ", absl::GetFlag(FLAGS_random_init), " has vocab_size ",
            config->vocab_size, " but --tokenizer ", absl::GetFlag(FLAGS_tokenizer), " has ",
            (*tokenizer)->vocab_size())));
      }
    }
    const fwp::HostWeights weights = fwp::RandomWeights(*config, absl::GetFlag(FLAGS_seed));
    if (!absl::GetFlag(FLAGS_save).empty()) {
      auto status = fwp::WriteModelDir(absl::GetFlag(FLAGS_save), *config, weights,
                                       absl::GetFlag(FLAGS_tokenizer));
      if (!status.ok()) return Fail(status);
      std::printf("wrote %s (%lld parameters, random weights, seed %llu)\n",
                  absl::GetFlag(FLAGS_save).c_str(),
                  static_cast<long long>(config->ParameterCount()),
                  static_cast<unsigned long long>(absl::GetFlag(FLAGS_seed)));
      return 0;
    }
    auto model = fwp::Model::Create(*backend, *config, weights);
    if (!model.ok()) return Fail(model.status());
    loaded.config = *config;
    loaded.model = std::move(*model);
    if (!absl::GetFlag(FLAGS_tokenizer).empty()) {
      auto tokenizer = fwp::Tokenizer::Load(absl::GetFlag(FLAGS_tokenizer));
      if (!tokenizer.ok()) return Fail(tokenizer.status());
      loaded.tokenizer = std::move(*tokenizer);
    }
  } else if (!settings.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--set changes the config of --random-init; a --model directory's config is its weights'"));
  } else if (!absl::GetFlag(FLAGS_model).empty()) {
    auto dir = fwp::LoadModelDir(absl::GetFlag(FLAGS_model), *backend);
    if (!dir.ok()) return Fail(dir.status());
    loaded = std::move(*dir);
  } else {
    return Fail(absl::InvalidArgumentError("give --model DIR or --random-init CONFIG"));
  }
  fwp::Model& model = *loaded.model;
  const fwp::Tokenizer* tokenizer = loaded.tokenizer.get();

  std::vector<int32_t> prompt;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_prompt_ids), ',')) {
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) {
        return Fail(absl::InvalidArgumentError(
            "--prompt_ids must be comma-separated integers, got '" + std::string(part) + "'"));
      }
      prompt.push_back(id);
    }
  } else {
    if (tokenizer == nullptr) {
      return Fail(absl::InvalidArgumentError(
          "--prompt needs a tokenizer (--model, or --tokenizer with --random-init); "
          "or give --prompt_ids"));
    }
    // No BOS: the models are trained on documents without one, and the
    // server adds none (fwp-run and fwp-generate continue a prompt alike).
    for (int32_t id : tokenizer->Encode(absl::GetFlag(FLAGS_prompt))) prompt.push_back(id);
  }
  if (prompt.empty()) return Fail(absl::InvalidArgumentError("the prompt is empty"));

  auto pool = model.NewStatePool(1);
  if (!pool.ok()) return Fail(pool.status());
  const int32_t slot = 0;
  std::vector<float> logits(model.config().vocab_size);
  auto t0 = Clock::now();
  auto status = model.Prefill(**pool, {&slot, 1}, prompt, false, logits.data());
  if (!status.ok()) return Fail(status);
  auto t1 = Clock::now();

  fwp::Rng rng(absl::GetFlag(FLAGS_sample_seed));
  std::unique_ptr<fwp::StreamDecoder> stream;
  if (tokenizer) {
    stream = std::make_unique<fwp::StreamDecoder>(*tokenizer);
    stream->Prime(prompt);  // the continuation keeps its leading space
  }
  if (tokenizer) std::printf("%s", absl::GetFlag(FLAGS_prompt).c_str());
  const int32_t eos = tokenizer ? tokenizer->eos_id() : -1;
  int generated = 0;
  for (; generated < absl::GetFlag(FLAGS_max_tokens); ++generated) {
    int32_t token = fwp::cpu::SampleToken(logits.data(), logits.size(), params, rng);
    if (token == eos && !absl::GetFlag(FLAGS_ignore_eos)) break;
    if (stream) {
      std::printf("%s", stream->Push(token).c_str());
    } else {
      std::printf("%s%d", generated ? " " : "", token);
    }
    std::fflush(stdout);
    if (generated + 1 == absl::GetFlag(FLAGS_max_tokens)) {
      ++generated;
      break;
    }
    status = model.Step(**pool, {&slot, 1}, {&token, 1}, logits.data());
    if (!status.ok()) return Fail(status);
  }
  if (stream) std::printf("%s", stream->Flush().c_str());
  std::printf("\n");
  std::fflush(stdout);
  auto t2 = Clock::now();
  if (absl::GetFlag(FLAGS_stats)) {
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_s = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr,
                 "prompt %zu tokens in %.3f s (%.1f tok/s); generated %d tokens in "
                 "%.3f s (%.1f tok/s); state %lld bytes\n",
                 prompt.size(), prefill_s, prompt.size() / prefill_s, generated, decode_s,
                 generated / decode_s, static_cast<long long>((*pool)->slot_bytes()));
  }
  return 0;
}

}  // namespace

static int Main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
                  "generate a continuation of a prompt on the CPU, token by token\n\n"
                  "  fwp-run --model DIR --prompt TEXT | --random-init CONFIG [--tokenizer T] "
                  "[--prompt_ids 1,2,3] [--save DIR]");
  auto settings = fwp::RepeatedFlagValues(fwp::UnderscoreFlagNames(argc, argv), "set",
                                          absl::GetFlag(FLAGS_set));
  if (!settings.ok()) return Fail(settings.status());
  return Run(*settings);
}

int main(int argc, char** argv) { return fwp::RunMain("fwp-run", Main, argc, argv); }
