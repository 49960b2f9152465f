#include "model/tokenizer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace fwp {

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  std::string error;
  t->sp_ = SentencePieceModel::Load(path, &error);
  t->path_ = path;
  if (t->sp_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load tokenizer ", path, ": ", error));
  }
  return t;
}

Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  const std::vector<int> ids = sp_->Encode(text);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<int> known;
  known.reserve(ids.size());
  const int32_t n = vocab_size();
  for (int32_t id : ids) {
    if (id >= 0 && id < n) known.push_back(id);
  }
  return sp_->Decode(known);
}

int32_t Tokenizer::vocab_size() const { return sp_->PieceCount(); }
int32_t Tokenizer::bos_id() const { return sp_->BosId(); }
int32_t Tokenizer::eos_id() const { return sp_->EosId(); }

namespace {
// SentencePiece renders an incomplete UTF-8 sequence as U+FFFD.
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
}  // namespace

void StreamDecoder::Prime(absl::Span<const int32_t> context) {
  // A few tokens of context suffice for the decoder's spacing decisions.
  constexpr size_t kContext = 8;
  const size_t keep = std::min(kContext, context.size());
  ids_.assign(context.end() - keep, context.end());
  prefix_ = 0;
  read_ = ids_.size();
}

// What `now` (the window decoded) adds to `before` (the part already shown).
// Where the window no longer reads as what was shown (the bytes of a
// character let out as U+FFFD before the rest came), from where they part,
// at a character's start, so that nothing is lost.
std::string StreamDecoder::Continuation(const std::string& before, const std::string& now) {
  if (now.starts_with(before)) return now.substr(before.size());
  size_t same = 0;
  while (same < before.size() && same < now.size() && before[same] == now[same]) ++same;
  while (same > 0 && same < now.size() &&
         (static_cast<unsigned char>(now[same]) & 0xC0) == 0x80) {
    --same;
  }
  return now.substr(same);
}

std::string StreamDecoder::Push(int32_t id) {
  ids_.push_back(id);
  absl::Span<const int32_t> all(ids_);
  const std::string before = tokenizer_.Decode(all.subspan(prefix_, read_ - prefix_));
  const std::string now = tokenizer_.Decode(all.subspan(prefix_));
  // A character takes at most 4 byte tokens: more held back are tokens that
  // print nothing (control ids, a run of bytes that is not UTF-8), which go
  // as they are, so that the window (decoded whole at every token) stays
  // short whatever the model makes.
  constexpr size_t kMostHeld = 16;
  const bool whole = now.size() > before.size() && !now.ends_with(kReplacement) &&
                     now.starts_with(before);
  if (!whole && ids_.size() - read_ <= kMostHeld) return "";
  prefix_ = read_;
  read_ = ids_.size();
  if (prefix_ > 64) {  // the window only needs the ids since prefix_
    ids_.erase(ids_.begin(), ids_.begin() + prefix_);
    read_ -= prefix_;
    prefix_ = 0;
  }
  return Continuation(before, now);
}

std::string StreamDecoder::Flush() {
  absl::Span<const int32_t> all(ids_);
  const std::string before = tokenizer_.Decode(all.subspan(prefix_, read_ - prefix_));
  const std::string now = tokenizer_.Decode(all.subspan(prefix_));
  prefix_ = read_ = ids_.size();
  return Continuation(before, now);
}

std::string Tokenizer::Piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? sp_->Piece(id) : std::string();
}

bool SameVocabulary(const Tokenizer& a, const Tokenizer& b) {
  if (a.vocab_size() != b.vocab_size() || a.bos_id() != b.bos_id() || a.eos_id() != b.eos_id()) {
    return false;
  }
  for (int32_t id = 0; id < a.vocab_size(); ++id) {
    if (a.Piece(id) != b.Piece(id)) return false;
  }
  return true;
}

absl::StatusOr<bool> SameVocabularyFiles(const std::string& a, const std::string& b) {
  FWP_ASSIGN_OR_RETURN(const auto first, Tokenizer::Load(a));
  FWP_ASSIGN_OR_RETURN(const auto second, Tokenizer::Load(b));
  return SameVocabulary(*first, *second);
}

}  // namespace fwp
