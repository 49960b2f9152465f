// Token files (.tok): a prepared split as one stream of token ids.
//   bytes 0..7   magic "FWPTOK01"
//   bytes 8..15  token count N (little-endian u64)
//   bytes 16..19 vocabulary size V (u32); every id is < V
//   bytes 20..23 zero
//   then N little-endian int32 ids
// Documents are concatenated, each followed by the tokenizer's EOS id.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fwp {

struct TokenFile {
  int64_t vocab_size = 0;
  std::vector<int32_t> tokens;
};

absl::Status WriteTokenFile(const std::string& path, const TokenFile& file);
// Refuses a file that is short, has another magic, or holds an id ≥ V.
absl::StatusOr<TokenFile> ReadTokenFile(const std::string& path);

// A hash of the vocabulary size and every id (FNV-1a): a training run
// records its files' and refuses to resume on files that changed.
uint64_t Fingerprint(const TokenFile& file);

}  // namespace fwp
