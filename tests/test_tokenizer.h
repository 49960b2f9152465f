// A small SentencePiece model trained at test time (once per test process),
// with byte fallback so rare characters split into byte tokens.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "model/sentencepiece_adapter.h"

namespace fwp::testing {

inline const std::string& TestTokenizerPath() {
  static const std::string path = [] {
    const std::string dir = ::testing::TempDir();
    const std::string corpus = dir + "fwp_tokenizer_corpus.txt";
    {
      std::ofstream out(corpus);
      const char* lines[] = {
          "The jury said the election was conducted well.",
          "Fast weight programmers write keys and values into a memory.",
          "The delta rule corrects what the memory holds for a key.",
          "A linear transformer is secretly a fast weight programmer.",
          "Sessions keep a constant size state however long they run.",
      };
      for (int i = 0; i < 40; ++i) {
        for (const char* line : lines) out << line << "\n";
      }
      out << "Rare characters: caf\xC3\xA9 \xE2\x82\xAC \xE6\x97\xA5\xE6\x9C\xAC\n";
    }
    const std::string prefix = dir + "fwp_test_tokenizer";
    const std::string error = TrainSentencePiece(
        "--input=" + corpus + " --model_prefix=" + prefix +
        " --vocab_size=320 --model_type=bpe --byte_fallback=true"
        " --character_coverage=0.99 --minloglevel=2 --num_threads=1");
    if (!error.empty()) {
      std::fprintf(stderr, "training the test tokenizer failed: %s\n", error.c_str());
      std::abort();
    }
    return prefix + ".model";
  }();
  return path;
}

}  // namespace fwp::testing
