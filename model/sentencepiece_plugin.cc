// The SentencePiece plugin (libfwp_sentencepiece.so): the only code that
// includes SentencePiece's headers or links its libraries.
//
// Debian's libsentencepiece carries a private copy of protobuf 3.14 and
// exports its symbols, which collide with the system protobuf that gRPC
// uses (a process linking both crashes in protobuf's static initialisers).
// So sentencepiece_adapter.cc loads this module with dlmopen into a link-map
// namespace of its own: there SentencePiece binds to its own protobuf (and
// its own C and C++ runtimes), and nothing of it meets the process's. The
// interface is therefore plain C over caller-owned buffers: no allocation,
// object or exception crosses the boundary.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#define FWP_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

void CopyOut(const std::string& text, char* out, size_t cap) {
  if (cap == 0) return;
  const size_t n = std::min(text.size(), cap - 1);
  std::memcpy(out, text.data(), n);
  out[n] = '\0';
}

}  // namespace

// Null with the reason in `error` when `path` is not a loadable model.
FWP_EXPORT void* fwp_spm_load(const char* path, char* error, size_t error_cap) {
  auto* processor = new sentencepiece::SentencePieceProcessor();
  const auto status = processor->Load(path);
  if (!status.ok()) {
    CopyOut(status.ToString(), error, error_cap);
    delete processor;
    return nullptr;
  }
  return processor;
}

FWP_EXPORT void fwp_spm_free(void* processor) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(processor);
}

// Returns the number of ids; writes the first min(count, cap) into `ids`.
FWP_EXPORT size_t fwp_spm_encode(const void* processor, const char* text, size_t size,
                                 int* ids, size_t cap) {
  std::vector<int> out;
  static_cast<const sentencepiece::SentencePieceProcessor*>(processor)
      ->Encode(std::string(text, size), &out)
      .IgnoreError();  // fails only without a model
  std::copy_n(out.begin(), std::min(out.size(), cap), ids);
  return out.size();
}

// Returns the text's length; writes the first min(length, cap) bytes.
FWP_EXPORT size_t fwp_spm_decode(const void* processor, const int* ids, size_t n, char* text,
                                 size_t cap) {
  std::string out;
  static_cast<const sentencepiece::SentencePieceProcessor*>(processor)
      ->Decode(std::vector<int>(ids, ids + n), &out)
      .IgnoreError();  // ids are checked by the caller
  std::memcpy(text, out.data(), std::min(out.size(), cap));
  return out.size();
}

// Returns the piece's length (its text, "▁the" or "<0x41>"); writes the
// first min(length, cap) bytes. The caller checks the id.
FWP_EXPORT size_t fwp_spm_piece(const void* processor, int id, char* text, size_t cap) {
  const std::string& piece =
      static_cast<const sentencepiece::SentencePieceProcessor*>(processor)->IdToPiece(id);
  std::memcpy(text, piece.data(), std::min(piece.size(), cap));
  return piece.size();
}

// what: 0 piece count, 1 BOS id, 2 EOS id.
FWP_EXPORT int fwp_spm_info(const void* processor, int what) {
  const auto* p = static_cast<const sentencepiece::SentencePieceProcessor*>(processor);
  switch (what) {
    case 0: return p->GetPieceSize();
    case 1: return p->bos_id();
    default: return p->eos_id();
  }
}

// 0 on success, else the trainer's error in `error`.
FWP_EXPORT int fwp_spm_train(const char* flags, char* error, size_t error_cap) {
  const auto status = sentencepiece::SentencePieceTrainer::Train(flags);
  if (status.ok()) return 0;
  CopyOut(status.ToString(), error, error_cap);
  return 1;
}
