// A small SentencePiece model trained at test time (once per test process),
// with byte fallback so rare characters split into byte tokens. Each process
// trains into its own directory: ctest runs the tests in parallel processes, and a
// shared path let one process read a model another was still writing.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "model/sentencepiece_adapter.h"

namespace fwp::testing {

inline const std::string& TestTokenizerPath() {
  // Removes the process's directory when the process ends.
  struct Dir {
    std::string path;
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static Dir dir_owner;
  static const std::string path = [] {
    std::string pattern = ::testing::TempDir() + "fwp_tokenizer_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::fprintf(stderr, "cannot make a directory for the test tokenizer: %s\n",
                   pattern.c_str());
      std::abort();
    }
    dir_owner.path = pattern;
    const std::string dir = pattern + "/";
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
