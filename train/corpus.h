// The corpora fwp-prepare turns into token files: named documents of plain
// text, split 90/5/5 by document.
//
// Your own text (ReadTextCorpus) is either one file, whose documents are
// separated by blank lines, or a directory, each regular file of which (in
// path order, subdirectories included; hidden files and directories, whose
// names start with '.', and links to nothing left out) is one document. The Brown Corpus is
// read by ReadBrownCorpus (train/brown.h).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fwp {

struct Document {
  std::string name;  // the file, or "file:line" of a paragraph
  std::string text;  // UTF-8 (or any bytes: the tokenizer falls back to bytes)
};

// The documents of `path` (a file or a directory, as above); documents that
// hold nothing but white space are dropped. Refused, naming the path: a
// path that does not exist, a file or directory without any text.
absl::StatusOr<std::vector<Document>> ReadTextCorpus(const std::string& path);

struct CorpusSplit {
  std::vector<Document> train, valid, test;
};

// Deterministic 90/5/5 split by position: document i goes to valid when
// i ≡ 18 (mod 20), to test when i ≡ 19, else to train. Refused with fewer
// than 20 documents (valid or test would be empty).
absl::StatusOr<CorpusSplit> SplitCorpus(std::vector<Document> documents, const std::string& what);

}  // namespace fwp
