#include "train/corpus.h"

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "model/atomic_file.h"

namespace fwp {
namespace {

bool Blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isspace(c); });
}

// Paragraphs of `text`: runs of lines with no blank line among them.
void AddParagraphs(const std::string& name, const std::string& text,
                   std::vector<Document>& out) {
  std::string paragraph;
  int64_t line_number = 0, first_line = 0;
  auto flush = [&]() {
    if (!Blank(paragraph)) out.push_back({absl::StrCat(name, ":", first_line), paragraph});
    paragraph.clear();
  };
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    ++line_number;
    if (Blank(line)) {
      flush();
      continue;
    }
    if (paragraph.empty()) first_line = line_number;
    paragraph += line;
    paragraph += '\n';
  }
  flush();
}

}  // namespace

absl::StatusOr<std::vector<Document>> ReadTextCorpus(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  std::vector<Document> documents;
  if (fs::is_regular_file(path, error)) {
    auto text = ReadWholeFile(path);
    if (!text.ok()) return text.status();
    AddParagraphs(path, *text, documents);
  } else if (fs::is_directory(path, error)) {
    std::vector<fs::path> files;
    for (auto it = fs::recursive_directory_iterator(path, error);
         !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
      // Hidden entries (.git, editor files) are not text someone wrote.
      std::error_code entry;  // a dangling link is skipped, not the end of the listing
      if (it->path().filename().string().rfind('.', 0) == 0) {
        if (it->is_directory(entry)) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(entry)) files.push_back(it->path());
    }
    if (error) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot list ", path, ": ", error.message()));
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& file : files) {
      auto text = ReadWholeFile(file.string());
      if (!text.ok()) return text.status();
      if (!Blank(*text)) documents.push_back({file.string(), std::move(*text)});
    }
  } else {
    return absl::NotFoundError(
        absl::StrCat("--text ", path, " is neither a file nor a directory"));
  }
  if (documents.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--text ", path, " holds no text"));
  }
  return documents;
}

absl::StatusOr<CorpusSplit> SplitCorpus(std::vector<Document> documents, const std::string& what) {
  if (documents.size() < 20) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " holds ", documents.size(),
        " documents; a 90/5/5 split by document needs at least 20 (in one file, separate "
        "documents by blank lines; or give a directory of files, one document each)"));
  }
  CorpusSplit split;
  for (size_t i = 0; i < documents.size(); ++i) {
    auto& to = i % 20 == 18 ? split.valid : i % 20 == 19 ? split.test : split.train;
    to.push_back(std::move(documents[i]));
  }
  return split;
}

}  // namespace fwp
