#include "model/model.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "model/train_workspace.h"

namespace fwp {
namespace {

absl::StatusOr<Buffer> Upload(Backend& backend, const std::vector<float>& host) {
  auto buffer = Buffer::Allocate(backend, host.size() * sizeof(float));
  if (!buffer.ok()) return buffer.status();
  backend.CopyToDevice(buffer->data(), host.data(), host.size() * sizeof(float));
  return buffer;
}

}  // namespace

Model::Model(Backend& backend, const Config& config) : backend_(backend), config_(config) {}

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Create(Backend& backend,
                                                     const Config& config,
                                                     const HostWeights& weights) {
  FWP_RETURN_IF_ERROR(config.Validate());
  FWP_RETURN_IF_ERROR(backend.CheckAttention(config.Attention()));
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    auto it = weights.find(spec.name);
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    if (it == weights.end() || static_cast<int64_t>(it->second.size()) != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("weights lack '", spec.name, "' or it has the wrong size"));
    }
  }
  std::unique_ptr<Model> model(new Model(backend, config));
  auto get = [&](const std::string& name) { return Upload(backend, weights.at(name)); };
  FWP_ASSIGN_OR_RETURN(model->embed_, get("embed.weight"));
  FWP_ASSIGN_OR_RETURN(model->final_norm_w_, get("final_norm.weight"));
  FWP_ASSIGN_OR_RETURN(model->final_norm_b_, get("final_norm.bias"));
  if (!config.tied_embeddings) {
    FWP_ASSIGN_OR_RETURN(model->lm_head_, get("lm_head.weight"));
  }
  for (int64_t l = 0; l < config.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    Layer layer;
    FWP_ASSIGN_OR_RETURN(layer.attn_norm_w, get(p + "attn_norm.weight"));
    FWP_ASSIGN_OR_RETURN(layer.attn_norm_b, get(p + "attn_norm.bias"));
    FWP_ASSIGN_OR_RETURN(layer.qkvb, get(p + (config.update == UpdateRule::kDelta
                                                  ? "attn.qkvb.weight"
                                                  : "attn.qkv.weight")));
    FWP_ASSIGN_OR_RETURN(layer.out, get(p + "attn.out.weight"));
    if (config.feature_map.kind == FeatureMapKind::kFavor) {
      FWP_ASSIGN_OR_RETURN(layer.favor_proj, get(p + "attn.favor_proj"));
    }
    FWP_ASSIGN_OR_RETURN(layer.ffn_norm_w, get(p + "ffn_norm.weight"));
    FWP_ASSIGN_OR_RETURN(layer.ffn_norm_b, get(p + "ffn_norm.bias"));
    FWP_ASSIGN_OR_RETURN(layer.up_w, get(p + "ffn.up.weight"));
    FWP_ASSIGN_OR_RETURN(layer.up_b, get(p + "ffn.up.bias"));
    FWP_ASSIGN_OR_RETURN(layer.down_w, get(p + "ffn.down.weight"));
    FWP_ASSIGN_OR_RETURN(layer.down_b, get(p + "ffn.down.bias"));
    model->layers_.push_back(std::move(layer));
  }
  return model;
}

std::vector<Model::Parameter> Model::Parameters() {
  std::vector<Parameter> params;
  auto add = [&](const std::string& name, Buffer& b) {
    params.push_back({name, b.f32(), static_cast<int64_t>(b.bytes() / sizeof(float))});
  };
  add("embed.weight", embed_);
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    Layer& L = layers_[l];
    add(p + "attn_norm.weight", L.attn_norm_w);
    add(p + "attn_norm.bias", L.attn_norm_b);
    add(p + (config_.update == UpdateRule::kDelta ? "attn.qkvb.weight" : "attn.qkv.weight"),
        L.qkvb);
    add(p + "attn.out.weight", L.out);
    add(p + "ffn_norm.weight", L.ffn_norm_w);
    add(p + "ffn_norm.bias", L.ffn_norm_b);
    add(p + "ffn.up.weight", L.up_w);
    add(p + "ffn.up.bias", L.up_b);
    add(p + "ffn.down.weight", L.down_w);
    add(p + "ffn.down.bias", L.down_b);
  }
  add("final_norm.weight", final_norm_w_);
  add("final_norm.bias", final_norm_b_);
  if (!config_.tied_embeddings) add("lm_head.weight", lm_head_);
  return params;
}

HostWeights Model::Weights() {
  HostWeights weights;
  for (const Parameter& p : Parameters()) {
    std::vector<float> host(p.size);
    backend_.CopyToHost(host.data(), p.data, p.size * sizeof(float));
    weights[p.name] = std::move(host);
  }
  if (config_.feature_map.kind == FeatureMapKind::kFavor) {
    for (int64_t l = 0; l < config_.n_layers; ++l) {
      const Buffer& b = layers_[l].favor_proj;
      std::vector<float> host(b.bytes() / sizeof(float));
      backend_.CopyToHost(host.data(), b.data(), b.bytes());
      weights[absl::StrCat("layers.", l, ".attn.favor_proj")] = std::move(host);
    }
  }
  return weights;
}

absl::StatusOr<std::unique_ptr<StatePool>> Model::NewStatePool(int32_t capacity) const {
  return StatePool::Create(backend_, state_layout(), capacity);
}

absl::Status Model::Prefill(StatePool& pool, absl::Span<const int32_t> slots,
                            absl::Span<const int32_t> tokens, bool all_logits,
                            float* logits) {
  if (slots.empty()) return absl::OkStatus();
  if (tokens.empty() || tokens.size() % slots.size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill needs the same positive number of tokens for each of ",
        slots.size(), " sessions, got ", tokens.size(), " tokens"));
  }
  return Run(pool, slots, tokens, tokens.size() / slots.size(), /*step=*/false,
             all_logits, logits);
}

absl::Status Model::Step(StatePool& pool, absl::Span<const int32_t> slots,
                         absl::Span<const int32_t> tokens, float* logits) {
  if (tokens.size() != slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step needs one token per session: ", slots.size(), " sessions, ",
        tokens.size(), " tokens"));
  }
  if (slots.empty()) return absl::OkStatus();
  return Run(pool, slots, tokens, 1, /*step=*/true, /*all_logits=*/false, logits);
}

absl::Status Model::StepAndSample(StatePool& pool, absl::Span<const int32_t> slots,
                                  absl::Span<const int32_t> tokens,
                                  absl::Span<const RowSampling> sampling, int32_t* next,
                                  absl::Span<const int32_t> logits_rows, float* logits,
                                  absl::Span<const LogitPenalty> penalties,
                                  const PenaltyTableRows& table) {
  if (tokens.size() != slots.size() || sampling.size() != slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step needs one token and one draw per session: ", slots.size(), " sessions, ",
        tokens.size(), " tokens, ", sampling.size(), " draws"));
  }
  for (int32_t r : logits_rows) {
    if (r < 0 || r >= static_cast<int64_t>(slots.size())) {
      return absl::InvalidArgumentError(absl::StrCat("logits row ", r, " is not a session's"));
    }
  }
  const int64_t V = config_.vocab_size;
  const int64_t n = static_cast<int64_t>(slots.size());
  for (const LogitPenalty& p : penalties) {
    if (p.row < 0 || p.row >= n || p.token < 0 || p.token >= V) {
      return absl::InvalidArgumentError(absl::StrCat(
          "penalty of row ", p.row, ", token ", p.token, " is outside the ", n, " × ", V,
          " logits"));
    }
  }
  std::vector<bool> tabled(n, false);
  for (const PenaltyRow& r : table.rows) {
    if (r.row < 0 || r.row >= n || r.table_row < 0 || r.table_row >= table.table_rows ||
        table.table == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "penalty table row ", r.table_row, " for row ", r.row, " is outside the ", n,
          " rows of the batch or the ", table.table_rows, " of the table"));
    }
    if (tabled[r.row]) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r.row, " takes two table rows"));
    }
    tabled[r.row] = true;
  }
  if (slots.empty()) return absl::OkStatus();
  FWP_RETURN_IF_ERROR(Run(pool, slots, tokens, 1, /*step=*/true, /*all_logits=*/false, nullptr));
  // The rows asked for, as the step gave them (before any penalty), in
  // consecutive rows to a copy (every copy from a GPU synchronises).
  for (size_t j = 0; j < logits_rows.size();) {
    size_t run = 1;
    while (j + run < logits_rows.size() && logits_rows[j + run] == logits_rows[j] + int32_t(run)) {
      ++run;
    }
    backend_.CopyToHost(logits + j * V, logits_.f32() + logits_rows[j] * V,
                        run * V * sizeof(float));
    j += run;
  }
  const auto penalties_size = static_cast<int64_t>(penalties.size());
  const auto table_size = static_cast<int64_t>(table.rows.size());
  const bool listed =
      backend_.ApplyPenalties(logits_.f32(), V, penalties.data(), penalties_size).ok();
  const bool tabulated =
      listed &&
      backend_.ApplyPenaltyRows(logits_.f32(), V, table.table, table.rows.data(), table_size).ok();
  if (!tabulated || !backend_.SampleRows(logits_.f32(), n, V, sampling.data(), next).ok()) {
    // No device memory for the penalties' or the sampler's scratch. The
    // states have advanced, so the step must still complete: the same draws
    // on the host (with the table's rows copied there).
    std::vector<float> host(n * V);
    backend_.CopyToHost(host.data(), logits_.f32(), host.size() * sizeof(float));
    if (!listed) cpu::ApplyPenalties(host.data(), V, penalties.data(), penalties_size);
    if (!tabulated && table_size > 0) {
      std::vector<int32_t> counts(table_size * V);  // the rows used, in order
      std::vector<PenaltyRow> rows(table.rows.begin(), table.rows.end());
      for (int64_t i = 0; i < table_size; ++i) {
        backend_.CopyToHost(counts.data() + i * V, table.table + rows[i].table_row * V,
                            V * sizeof(int32_t));
        rows[i].table_row = static_cast<int32_t>(i);
      }
      cpu::ApplyPenaltyRows(host.data(), V, counts.data(), rows.data(), table_size);
    }
    cpu::SampleRows(host.data(), n, V, sampling.data(), next);
  }
  return absl::OkStatus();
}

absl::Status Model::Validate(const StatePool& pool, absl::Span<const int32_t> slots,
                             absl::Span<const int32_t> tokens) const {
  if (pool.slot_bytes() != state_layout().SlotBytes()) {
    return absl::InvalidArgumentError("state pool was made for another model");
  }
  std::set<int32_t> seen;
  for (int32_t slot : slots) {
    if (slot < 0 || slot >= pool.capacity()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slot ", slot, " is outside the pool of ", pool.capacity()));
    }
    if (!seen.insert(slot).second) {
      return absl::InvalidArgumentError(absl::StrCat("slot ", slot, " given twice"));
    }
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token ", tokens[i], " at index ", i, " is outside the vocabulary [0, ",
          config_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Model::Reserve(int64_t rows, int64_t batch) {
  if (rows > rows_capacity_) {
    const Config& c = config_;
    const int64_t f = sizeof(float);
    FWP_ASSIGN_OR_RETURN(x_, Buffer::Allocate(backend_, rows * c.d_model * f));
    FWP_ASSIGN_OR_RETURN(xn_, Buffer::Allocate(backend_, rows * c.d_model * f));
    FWP_ASSIGN_OR_RETURN(qkvb_, Buffer::Allocate(backend_, rows * c.Attention().RowWidth() * f));
    FWP_ASSIGN_OR_RETURN(y_, Buffer::Allocate(backend_, rows * c.n_heads * c.d_head * f));
    FWP_ASSIGN_OR_RETURN(ff_, Buffer::Allocate(backend_, rows * c.d_ff * f));
    FWP_ASSIGN_OR_RETURN(logits_, Buffer::Allocate(backend_, rows * c.vocab_size * f));
    FWP_ASSIGN_OR_RETURN(tokens_, Buffer::Allocate(backend_, rows * sizeof(int32_t)));
    FWP_ASSIGN_OR_RETURN(positions_, Buffer::Allocate(backend_, rows * sizeof(int64_t)));
    rows_capacity_ = rows;
  }
  if (batch > batch_capacity_) {
    FWP_ASSIGN_OR_RETURN(slots_, Buffer::Allocate(backend_, batch * sizeof(int32_t)));
    batch_capacity_ = batch;
  }
  return absl::OkStatus();
}

absl::Status Model::Run(StatePool& pool, absl::Span<const int32_t> slots,
                        absl::Span<const int32_t> tokens, int64_t time, bool step,
                        bool all_logits, float* logits) {
  FWP_RETURN_IF_ERROR(Validate(pool, slots, tokens));
  const Config& c = config_;
  const FastWeightSpec attn = c.Attention();
  const int64_t batch = slots.size();
  const int64_t n = batch * time;  // rows of activations
  const int64_t D = c.d_model, F = c.d_ff, V = c.vocab_size;
  const int64_t HD = c.n_heads * c.d_head, RW = attn.RowWidth();
  FWP_RETURN_IF_ERROR(Reserve(n, batch));

  backend_.CopyToDevice(tokens_.data(), tokens.data(), n * sizeof(int32_t));
  backend_.CopyToDevice(slots_.data(), slots.data(), batch * sizeof(int32_t));
  const int64_t* positions = nullptr;
  if (c.positions == Positions::kSinusoidal) {
    std::vector<int64_t> host(n);  // [batch, time]
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < time; ++t) host[b * time + t] = pool.position(slots[b]) + t;
    }
    backend_.CopyToDevice(positions_.data(), host.data(), n * sizeof(int64_t));
    positions = static_cast<const int64_t*>(positions_.data());
  }
  const auto* token_ids = static_cast<const int32_t*>(tokens_.data());
  const auto* slot_ids = static_cast<const int32_t*>(slots_.data());
  float* x = x_.f32();      // [n, D]  residual stream
  float* xn = xn_.f32();    // [n, D]  normalised
  float* qkvb = qkvb_.f32();  // [n, RW] fused projection
  float* y = y_.f32();      // [n, HD] memory read-out
  float* ff = ff_.f32();    // [n, F]

  backend_.Embedding(token_ids, positions, n, embed_.f32(), D, x);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[l];
    backend_.LayerNorm(x, L.attn_norm_w.f32(), L.attn_norm_b.f32(), n, D, c.norm_eps, xn);
    backend_.Matmul(xn, L.qkvb.f32(), nullptr, qkvb, n, RW, D, false);
    const StateView view = pool.View(l);
    if (step) {
      backend_.FastWeightStep(attn, qkvb, L.favor_proj.f32(), slot_ids, batch, view, y);
    } else {
      backend_.FastWeightSequence(attn, qkvb, L.favor_proj.f32(), slot_ids, batch,
                                  time, view, y, chunk_size_);
    }
    backend_.Matmul(y, L.out.f32(), nullptr, x, n, D, HD, /*accumulate=*/true);
    backend_.LayerNorm(x, L.ffn_norm_w.f32(), L.ffn_norm_b.f32(), n, D, c.norm_eps, xn);
    backend_.Matmul(xn, L.up_w.f32(), L.up_b.f32(), ff, n, F, D, false);
    backend_.Activate(c.activation, ff, n * F);
    backend_.Matmul(ff, L.down_w.f32(), L.down_b.f32(), x, n, D, F, /*accumulate=*/true);
  }
  // Logits for every row, or for each session's last token only.
  int64_t out_rows = n;
  const float* head_in = x;
  if (!all_logits && time > 1) {
    for (int64_t b = 0; b < batch; ++b) {
      backend_.CopyOnDevice(xn + b * D, x + ((b + 1) * time - 1) * D, D * sizeof(float));
    }
    out_rows = batch;
    head_in = xn;
  }
  backend_.LayerNorm(head_in, final_norm_w_.f32(), final_norm_b_.f32(), out_rows, D,
                     c.norm_eps, xn);
  const float* head = c.tied_embeddings ? embed_.f32() : lm_head_.f32();
  backend_.Matmul(xn, head, nullptr, logits_.f32(), out_rows, V, D, false);
  if (logits) backend_.CopyToHost(logits, logits_.data(), out_rows * V * sizeof(float));
  for (int64_t b = 0; b < batch; ++b) pool.Advance(slots[b], time);
  return absl::OkStatus();
}

}  // namespace fwp
