// The only door to the SentencePiece library, which lives in a plugin loaded
// at run time (sentencepiece_plugin.cc says why: its bundled protobuf
// collides with gRPC's). Its headers also declare their own
// `absl::string_view`, so this header uses only std.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace fwp {

class SentencePieceModel {
 public:
  // Null with *error set when `path` is not a loadable model.
  static std::unique_ptr<SentencePieceModel> Load(const std::string& path,
                                                  std::string* error);
  ~SentencePieceModel();

  std::vector<int> Encode(std::string_view text) const;
  std::string Decode(const std::vector<int>& ids) const;
  std::string Piece(int id) const;  // id in [0, PieceCount())
  int PieceCount() const;
  int BosId() const;
  int EosId() const;

 private:
  SentencePieceModel();
  void* processor_ = nullptr;  // the plugin's SentencePieceProcessor
};

// Trains a model with SentencePiece's trainer flags ("--input=... --model_prefix=...").
// Returns an empty string on success, else the trainer's error.
std::string TrainSentencePiece(const std::string& flags);

}  // namespace fwp
