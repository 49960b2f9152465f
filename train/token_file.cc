#include "train/token_file.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "model/atomic_file.h"
#include "model/hash.h"

namespace fwp {
namespace {
constexpr char kMagic[8] = {'F', 'W', 'P', 'T', 'O', 'K', '0', '1'};
constexpr size_t kHeader = 24;
}  // namespace

absl::Status WriteTokenFile(const std::string& path, const TokenFile& file) {
  std::string bytes(kHeader + 4 * file.tokens.size(), '\0');
  std::memcpy(bytes.data(), kMagic, 8);
  const uint64_t n = file.tokens.size();
  const uint32_t v = static_cast<uint32_t>(file.vocab_size);
  std::memcpy(bytes.data() + 8, &n, 8);
  std::memcpy(bytes.data() + 16, &v, 4);
  std::memcpy(bytes.data() + kHeader, file.tokens.data(), 4 * file.tokens.size());
  return WriteFileAtomically(path, bytes);
}

absl::StatusOr<TokenFile> ReadTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path,
                                            " (prepare the data with scripts/get-data)"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  if (bytes.size() < kHeader || std::memcmp(bytes.data(), kMagic, 8) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not an fwp token file"));
  }
  uint64_t n = 0;
  uint32_t v = 0;
  std::memcpy(&n, bytes.data() + 8, 8);
  std::memcpy(&v, bytes.data() + 16, 4);
  // n comes from the file: compare it with the payload's size without
  // computing 4·n, which a corrupt count would overflow.
  const uint64_t payload = bytes.size() - kHeader;
  if (payload % 4 != 0 || n != payload / 4) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header says ", n, " tokens but the file holds ",
                                                   (bytes.size() - kHeader) / 4.0, ": truncated?"));
  }
  TokenFile file;
  file.vocab_size = v;
  file.tokens.resize(n);
  std::memcpy(file.tokens.data(), bytes.data() + kHeader, 4 * n);
  for (uint64_t i = 0; i < n; ++i) {
    if (file.tokens[i] < 0 || static_cast<uint32_t>(file.tokens[i]) >= v) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": token ", file.tokens[i], " at ", i,
                                                     " is outside the vocabulary of ", v));
    }
  }
  return file;
}

uint64_t Fingerprint(const TokenFile& file) {
  const auto vocab = static_cast<uint64_t>(file.vocab_size);
  return Fnv1a(Fnv1a(kFnv1aSeed, &vocab, sizeof(vocab)), file.tokens.data(),
               file.tokens.size() * sizeof(int32_t));
}

}  // namespace fwp
