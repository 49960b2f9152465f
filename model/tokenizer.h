// Tokenizer: a thin wrapper over a SentencePiece model (tokenizer.model).
//
// Ids the SentencePiece model does not know (a model may pad its vocabulary
// past the tokenizer's) decode to nothing rather than failing, so whatever a
// model samples can always be shown.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/sentencepiece_adapter.h"

namespace fwp {

class Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  std::vector<int32_t> Encode(std::string_view text) const;
  std::string Decode(absl::Span<const int32_t> ids) const;

  std::string Piece(int32_t id) const;  // "" for an id outside the vocabulary
  int32_t vocab_size() const;
  int32_t bos_id() const;  // −1 when the model has none
  int32_t eos_id() const;  // −1 when the model has none
  const std::string& path() const { return path_; }

 private:
  Tokenizer() = default;
  std::unique_ptr<SentencePieceModel> sp_;
  std::string path_;
};

// Whether `a` and `b` have the same pieces at the same ids ("▁the" is not
// "the"; bytes are "<0x..>"), with the same special ids: token files made by
// one read the same with the other. The files' bytes may still differ (a
// model records how and where it was trained).
bool SameVocabulary(const Tokenizer& a, const Tokenizer& b);
// SameVocabulary of two tokenizer.model files (an error when one cannot be
// loaded).
absl::StatusOr<bool> SameVocabularyFiles(const std::string& a, const std::string& b);

// Turns a stream of token ids into a stream of text without ever emitting
// half a character: a multi-byte character whose bytes arrive in separate
// (byte-fallback) tokens is held back until it is whole. Decoding works on a
// short window of recent tokens, so each Push costs O(window), not O(stream).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  // Takes `context` (e.g. the prompt) as already shown, so that the first
  // pushed token decodes as a continuation (keeping its leading space).
  void Prime(absl::Span<const int32_t> context);
  // Appends one token; returns the text that became complete (maybe empty).
  std::string Push(int32_t id);
  // Returns what is still held back (an incomplete character at the end).
  std::string Flush();

 private:
  static std::string Continuation(const std::string& before, const std::string& now);

  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0;  // start of the decoding window
  size_t read_ = 0;    // ids before this index have been emitted
};

}  // namespace fwp
