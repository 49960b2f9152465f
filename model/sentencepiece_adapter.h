// The only door to the SentencePiece library. Its headers declare their own
// `absl::string_view`, which collides with the real Abseil, so they are
// included in sentencepiece_adapter.cc alone and this header uses only std.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace fwp {

class SentencePieceModel {
 public:
  // Null with *error set when `path` is not a loadable model.
  static std::unique_ptr<SentencePieceModel> Load(const std::string& path,
                                                  std::string* error);
  ~SentencePieceModel();

  std::vector<int> Encode(std::string_view text) const;
  std::string Decode(const std::vector<int>& ids) const;
  int PieceCount() const;
  int BosId() const;
  int EosId() const;

 private:
  SentencePieceModel();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

// Trains a model with SentencePiece's trainer flags ("--input=... --model_prefix=...").
// Returns an empty string on success, else the trainer's error.
std::string TrainSentencePiece(const std::string& flags);

}  // namespace fwp
