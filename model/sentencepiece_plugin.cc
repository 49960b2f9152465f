// The SentencePiece plugin (libfwp_sentencepiece.so): the only code that
// includes SentencePiece's headers or links its libraries.
//
// Debian's libsentencepiece carries a private copy of protobuf 3.14 and
// exports its symbols, which collide with the system protobuf that gRPC
// uses (a process linking both crashes in protobuf's static initialisers).
// So this module is loaded at run time with dlopen(RTLD_LOCAL | RTLD_DEEPBIND)
// by sentencepiece_adapter.cc: SentencePiece then binds to its own protobuf
// and nothing of it leaks into the process. Its interface is plain C
// functions over std types (same libstdc++ on both sides).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <string>
#include <vector>

#define FWP_EXPORT extern "C" __attribute__((visibility("default")))

FWP_EXPORT void* fwp_spm_load(const char* path, std::string* error) {
  auto* processor = new sentencepiece::SentencePieceProcessor();
  const auto status = processor->Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    delete processor;
    return nullptr;
  }
  return processor;
}

FWP_EXPORT void fwp_spm_free(void* processor) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(processor);
}

FWP_EXPORT void fwp_spm_encode(const void* processor, const char* text, size_t size,
                               std::vector<int>* ids) {
  static_cast<const sentencepiece::SentencePieceProcessor*>(processor)
      ->Encode(std::string(text, size), ids)
      .IgnoreError();  // fails only without a model
}

FWP_EXPORT void fwp_spm_decode(const void* processor, const std::vector<int>* ids,
                               std::string* text) {
  static_cast<const sentencepiece::SentencePieceProcessor*>(processor)
      ->Decode(*ids, text)
      .IgnoreError();  // ids are checked by the caller
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

FWP_EXPORT void fwp_spm_train(const char* flags, std::string* error) {
  const auto status = sentencepiece::SentencePieceTrainer::Train(flags);
  if (!status.ok()) *error = status.ToString();
}
