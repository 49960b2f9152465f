#include "model/sentencepiece_adapter.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace fwp {

SentencePieceModel::SentencePieceModel()
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}

SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::Load(const std::string& path,
                                                             std::string* error) {
  std::unique_ptr<SentencePieceModel> model(new SentencePieceModel());
  const auto status = model->processor_->Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return model;
}

std::vector<int> SentencePieceModel::Encode(std::string_view text) const {
  std::vector<int> ids;
  processor_->Encode(text, &ids).IgnoreError();  // fails only without a model
  return ids;
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  std::string text;
  processor_->Decode(ids, &text).IgnoreError();  // ids are checked by the caller
  return text;
}

int SentencePieceModel::PieceCount() const { return processor_->GetPieceSize(); }
int SentencePieceModel::BosId() const { return processor_->bos_id(); }
int SentencePieceModel::EosId() const { return processor_->eos_id(); }

std::string TrainSentencePiece(const std::string& flags) {
  const auto status = sentencepiece::SentencePieceTrainer::Train(flags);
  return status.ok() ? std::string() : status.ToString();
}

}  // namespace fwp
