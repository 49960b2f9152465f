#include "train/brown.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/atomic_file.h"

namespace fwp {
namespace {

bool AttachesLeft(absl::string_view w) {
  return w == "." || w == "," || w == ";" || w == ":" || w == "?" || w == "!" || w == ")" ||
         w == "'s" || w == "n't" || w == "%";
}

}  // namespace

absl::StatusOr<std::string> StripBrownTags(const std::string& document, const std::string& name) {
  std::string out;
  int64_t words = 0;
  for (absl::string_view line : absl::StrSplit(document, '\n')) {
    std::string sentence;
    bool attach_next = false;  // the next word follows "(" or an opening quote
    for (absl::string_view token : absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
      const size_t slash = token.rfind('/');
      if (slash == absl::string_view::npos || slash == 0) continue;  // not word/TAG
      std::string word(token.substr(0, slash));
      ++words;
      if (word == "``") {
        if (!sentence.empty()) sentence += ' ';
        sentence += '"';
        attach_next = true;
        continue;
      }
      if (word == "''") {
        sentence += '"';
        continue;
      }
      if (!sentence.empty() && !attach_next && !AttachesLeft(word)) sentence += ' ';
      sentence += word;
      attach_next = word == "(";
    }
    if (!sentence.empty()) {
      out += sentence;
      out += '\n';
    }
  }
  if (words == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Brown document ", name, " holds no word/TAG tokens: not the Brown corpus?"));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ListBrownDocuments(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("corpus directory ", dir,
                                            " does not exist (scripts/get-data fetches it)"));
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string n = entry.path().filename().string();
    if (n.size() == 4 && std::islower(static_cast<unsigned char>(n[0])) &&
        std::islower(static_cast<unsigned char>(n[1])) && std::isdigit(static_cast<unsigned char>(n[2])) &&
        std::isdigit(static_cast<unsigned char>(n[3]))) {
      names.push_back(n);
    }
  }
  if (names.size() < 20) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, " holds ", names.size(),
        " Brown documents (ca01 … cr09 expected, 500 in all): incomplete or not the corpus"));
  }
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<std::vector<Document>> ReadBrownCorpus(const std::string& dir) {
  auto names = ListBrownDocuments(dir);
  if (!names.ok()) return names.status();
  std::vector<Document> documents;
  for (const std::string& name : *names) {
    auto raw = ReadWholeFile(dir + "/" + name);
    if (!raw.ok()) return raw.status();
    auto text = StripBrownTags(*raw, name);
    if (!text.ok()) return text.status();
    documents.push_back({name, std::move(*text)});
  }
  return documents;
}

}  // namespace fwp
