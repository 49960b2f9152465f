#include "server/generation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fwp::server {

absl::Status ValidateGenerationParams(const GenerationParams& p,
                                      const GenerationLimits& limits, int32_t vocab) {
  const auto bad = [](auto... parts) {
    return absl::InvalidArgumentError(absl::StrCat(parts...));
  };
  if (absl::Status s = ValidateSamplingParams(p.sampling, "sampling."); !s.ok()) return s;
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) {
    return bad("sampling.repetition_penalty must be > 0, got ", p.repetition_penalty);
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return bad("sampling.presence_penalty must be in [-2, 2], got ", p.presence_penalty);
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return bad("sampling.frequency_penalty must be in [-2, 2], got ", p.frequency_penalty);
  }
  if (p.max_tokens <= 0) return bad("stopping.max_tokens must be > 0, got ", p.max_tokens);
  if (p.max_tokens > limits.max_tokens) {
    return bad("stopping.max_tokens is ", p.max_tokens, "; this server allows at most ",
               limits.max_tokens);
  }
  if (static_cast<int64_t>(p.stop.size()) > limits.max_stop_strings) {
    return bad("stopping.stop has ", p.stop.size(), " strings; at most ",
               limits.max_stop_strings, " are allowed");
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty() ||
        static_cast<int64_t>(p.stop[i].size()) > limits.max_stop_bytes) {
      return bad("stopping.stop[", i, "] must be 1 to ", limits.max_stop_bytes,
                 " bytes, got ", p.stop[i].size());
    }
  }
  if (static_cast<int64_t>(p.stop_token_ids.size()) > limits.max_stop_token_ids) {
    return bad("stopping.stop_token_ids has ", p.stop_token_ids.size(), " ids; at most ",
               limits.max_stop_token_ids);
  }
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i) {
    if (p.stop_token_ids[i] < 0 || p.stop_token_ids[i] >= vocab) {
      return bad("stopping.stop_token_ids[", i, "] = ", p.stop_token_ids[i],
                 " is outside the vocabulary [0, ", vocab, ")");
    }
  }
  if (p.top_logprobs < 0 || p.top_logprobs > limits.max_top_logprobs) {
    return bad("top_logprobs must be in [0, ", limits.max_top_logprobs, "], got ",
               p.top_logprobs);
  }
  return absl::OkStatus();
}

namespace {

// max and log Σ exp over a row, in double.
std::pair<float, double> LogSumExp(const float* logits, int64_t vocab) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) max = std::max(max, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  return {max, std::log(sum)};
}

}  // namespace

float TokenLogprobOf(const float* logits, int64_t vocab, int32_t token) {
  const auto [max, lse] = LogSumExp(logits, vocab);
  return static_cast<float>(static_cast<double>(logits[token]) - max - lse);
}

TokenSampler::TokenSampler(const GenerationParams& params, absl::Span<const int32_t> prompt,
                           int64_t vocab)
    : params_(params), vocab_(vocab), rng_(params.seed), work_(vocab) {
  counted_ = params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f;
  if (params_.repetition_penalty != 1.0f || counted_) entry_of_.assign(vocab, -1);
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t t : prompt) {
      if (t >= 0 && t < vocab) Entry(t);
    }
  }
}

bool TokenSampler::needs_logits() const { return params_.logprobs || params_.top_logprobs > 0; }

LogitPenalty& TokenSampler::Entry(int32_t token) {
  int32_t& at = entry_of_[token];
  if (at < 0) {
    at = static_cast<int32_t>(penalties_.size());
    // Repetition applies to every listed token: with it on, the list is the
    // seen tokens; with it off, the output's.
    penalties_.push_back({0, token, params_.repetition_penalty, 0, params_.presence_penalty,
                          params_.frequency_penalty});
  }
  return penalties_[at];
}

void TokenSampler::AppendPenalties(int32_t row, std::vector<LogitPenalty>* out) const {
  const size_t first = out->size();
  out->insert(out->end(), penalties_.begin(), penalties_.end());
  for (size_t i = first; i < out->size(); ++i) (*out)[i].row = row;
}

PenaltyRow TokenSampler::TableRow(int32_t row, int32_t table_row) const {
  return {row, table_row, params_.repetition_penalty, params_.presence_penalty,
          params_.frequency_penalty};
}

int32_t TokenSampler::TableValue(int32_t token) const {
  const int32_t at = entry_of_.empty() ? -1 : entry_of_[token];
  return at < 0 ? 0 : penalties_[at].count + 1;
}

RowSampling TokenSampler::Draw() {
  RowSampling row{params_.sampling, 0.0};
  if (!row.params.greedy()) row.uniform = rng_.Uniform();
  return row;
}

TokenSampler::Pick TokenSampler::Accept(int32_t token) {
  Record(token);
  Pick pick;
  pick.token = token;
  return pick;
}

void TokenSampler::Record(int32_t token) {
  if (entry_of_.empty() || token < 0 || token >= vocab_) return;
  LogitPenalty& entry = Entry(token);
  if (counted_) ++entry.count;
}

TokenSampler::Pick TokenSampler::Sample(const float* logits) {
  const float* row = logits;
  if (!penalties_.empty()) {  // as row 0 of a batch of one
    std::copy(logits, logits + vocab_, work_.begin());
    cpu::ApplyPenalties(work_.data(), vocab_, penalties_.data(),
                        static_cast<int64_t>(penalties_.size()));
    row = work_.data();
  }
  Pick pick;
  pick.token = cpu::SampleToken(row, vocab_, params_.sampling, rng_);
  if (params_.logprobs || params_.top_logprobs > 0) {
    const auto [max, lse] = LogSumExp(logits, vocab_);
    const auto logprob = [&, max = max, lse = lse](int32_t t) {
      return static_cast<float>(static_cast<double>(logits[t]) - max - lse);
    };
    pick.logprob = logprob(pick.token);
    if (params_.top_logprobs > 0) {
      std::vector<int32_t> ids(vocab_);
      for (int64_t i = 0; i < vocab_; ++i) ids[i] = static_cast<int32_t>(i);
      const int64_t k = std::min<int64_t>(params_.top_logprobs, vocab_);
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
        return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
      });
      for (int64_t i = 0; i < k; ++i) pick.top.push_back({ids[i], logprob(ids[i])});
    }
  }
  Record(pick.token);
  return pick;
}

TextStream::TextStream(const Tokenizer& tokenizer, absl::Span<const int32_t> context,
                       std::vector<std::string> stop)
    : decoder_(tokenizer), stop_(std::move(stop)) {
  decoder_.Prime(context);
  for (const auto& s : stop_) longest_stop_ = std::max(longest_stop_, s.size());
}

std::string TextStream::Push(int32_t token) {
  if (stopped_) return {};
  text_ += decoder_.Push(token);
  return Emit(/*final=*/false);
}

std::string TextStream::Finish() {
  if (stopped_) return {};
  text_ += decoder_.Flush();
  return Emit(/*final=*/true);
}

std::string TextStream::Emit(bool final) {
  // A stop string can only begin within the last longest_stop_ − 1 bytes
  // that were held back, or in the new text.
  if (!stop_.empty()) {
    const size_t from = emitted_ >= longest_stop_ ? emitted_ - longest_stop_ : 0;
    size_t first = std::string::npos;
    for (const auto& s : stop_) first = std::min(first, text_.find(s, from));
    if (first != std::string::npos) {
      stopped_ = true;
      std::string out = first > emitted_ ? text_.substr(emitted_, first - emitted_) : "";
      emitted_ = text_.size();
      return out;
    }
  }
  size_t safe = text_.size();
  if (!final) {
    // Hold back the longest tail that is a proper prefix of a stop string.
    for (const auto& s : stop_) {
      for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k) {
        if (text_.size() - k < emitted_) continue;  // already shown
        if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
          safe = std::min(safe, text_.size() - k);
          break;
        }
      }
    }
  }
  std::string out = safe > emitted_ ? text_.substr(emitted_, safe - emitted_) : "";
  emitted_ = std::max(emitted_, safe);
  return out;
}

}  // namespace fwp::server

namespace fwp::server {

absl::Status ValidatePrompt(absl::Span<const int32_t> ids, int32_t vocab, int64_t max_tokens,
                            const char* field, bool allow_empty) {
  if (ids.empty() && !allow_empty) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  }
  if (static_cast<int64_t>(ids.size()) > max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(field, " has ", ids.size(),
                                                   " tokens; this server accepts at most ",
                                                   max_tokens));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(field, " token ", i, " is ", ids[i],
                                                     ", outside the vocabulary [0, ", vocab,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace fwp::server
