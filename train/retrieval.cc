#include "train/retrieval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/safetensors.h"
#include "kernels/status_macros.h"

namespace fwp {

// One sequence: T keys and values, a query and the value it should return.
struct RetrievalTask::Sample {
  std::vector<int32_t> keys, values;
  int32_t query = 0, target = 0;
};

// A trained tensor with its Adam moments and gradient, on the backend.
struct Tensor {
  Buffer data, grad, m, v;
  int64_t size = 0;
};

// k = W_kv onehot(v) + W_ke E[key] + b_k (W_k split by its input columns),
// β = W_bv onehot(v) + W_be E[key] + b_b, q = W_q E[query] + b_q.
struct RetrievalTask::Parameters {
  Tensor E, W_kv, W_ke, b_k, W_bv, W_be, b_b, W_q, b_q;
  std::vector<Tensor*> All() { return {&E, &W_kv, &W_ke, &b_k, &W_bv, &W_be, &b_b, &W_q, &b_q}; }
  // Names and shapes as saved, in the order of All().
  static std::vector<std::pair<std::string, std::vector<int64_t>>> Layout(int64_t S, int64_t d,
                                                                         int64_t e) {
    return {{"E", {S, e}},  {"W_kv", {d, S}}, {"W_ke", {d, e}}, {"b_k", {d}}, {"W_bv", {1, S}},
            {"W_be", {1, e}}, {"b_b", {1}},   {"W_q", {d, e}},  {"b_q", {d}}};
  }
};

namespace {

// e, the embedding width: 2.2·S as in the paper's code.
int64_t EmbedSize(int64_t S) { return static_cast<int64_t>(2 * S * 1.1); }

absl::Status Init(Backend& backend, Tensor& t, int64_t size,
                  const std::function<float()>& draw) {
  t.size = size;
  std::vector<float> host(size);
  for (float& x : host) x = draw();
  for (Buffer* b : {&t.data, &t.grad, &t.m, &t.v}) {
    FWP_ASSIGN_OR_RETURN(*b, Buffer::Allocate(backend, size * sizeof(float)));
    backend.Zero(b->data(), size * sizeof(float));
  }
  backend.CopyToDevice(t.data.data(), host.data(), size * sizeof(float));
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<Buffer> Upload(Backend& backend, const std::vector<T>& host) {
  FWP_ASSIGN_OR_RETURN(Buffer b, Buffer::Allocate(backend, std::max<size_t>(1, host.size()) * sizeof(T)));
  backend.CopyToDevice(b.data(), host.data(), host.size() * sizeof(T));
  return b;
}

std::vector<float> Download(Backend& backend, const Buffer& b, int64_t n) {
  std::vector<float> host(n);
  backend.CopyToHost(host.data(), b.data(), n * sizeof(float));
  return host;
}

}  // namespace

RetrievalTask::RetrievalTask(Backend& backend, const RetrievalConfig& config)
    : backend_(backend), config_(config), rng_(config.seed) {}

RetrievalTask::~RetrievalTask() = default;

absl::StatusOr<std::unique_ptr<RetrievalTask>> RetrievalTask::Create(
    Backend& backend, const RetrievalConfig& config) {
  if (config.setting != 1 && config.setting != 2) {
    return absl::InvalidArgumentError("retrieval setting must be 1 or 2");
  }
  // Normalised as in the paper's code (the delta rule's sum normalisation,
  // the sum rule's attention normaliser), which needs features ≥ 0.
  if (config.phi.kind == FeatureMapKind::kFavor || !config.phi.NonNegative()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the retrieval task runs dpfp, elu1 or relu, not ", FeatureMapName(config.phi.kind),
        ": it normalises as the paper's code did, which needs features that are never "
        "negative"));
  }
  if (config.pairs < 2 || config.pairs > kMaxRetrievalPairs || config.d_key < 1 ||
      config.batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("retrieval needs pairs in [2, ",
                                                   kMaxRetrievalPairs, "], d_key ≥ 1, batch ≥ 1"));
  }
  if (config.phi.kind == FeatureMapKind::kDpfp &&
      (config.phi.nu < 1 || config.phi.nu > kMaxDpfpNu)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DPFP ν must be in [1, ", kMaxDpfpNu, "], not ", config.phi.nu));
  }
  if (!std::isfinite(config.lr) || config.lr <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("retrieval lr must be finite and > 0, not ",
                                                   config.lr));
  }
  std::unique_ptr<RetrievalTask> task(new RetrievalTask(backend, config));
  const int64_t S = config.pairs, d = config.d_key;
  FastWeightSpec& spec = task->spec_;
  spec.update = config.update;
  spec.phi = config.phi;
  spec.phi.sum_norm = config.update == UpdateRule::kDelta;
  spec.attention_normalizer = config.update == UpdateRule::kSum;
  spec.heads = 1;
  spec.d_head = d;
  spec.d_value = S;
  spec.scale = 1.0f;
  FWP_RETURN_IF_ERROR(backend.CheckAttention(spec));
  task->embed_ = EmbedSize(S);
  const int64_t e = task->embed_;
  // Initialisation as in the paper's code (torch defaults elsewhere).
  Rng& rng = task->rng_;
  auto normal = [&] { return static_cast<float>(rng.Normal()); };
  auto uniform = [&](double bound) {
    return [&rng, bound] { return static_cast<float>((2 * rng.Uniform() - 1) * bound); };
  };
  const double fan_kv = 1.0 / std::sqrt(static_cast<double>(S + e));
  const double fan_q = 1.0 / std::sqrt(static_cast<double>(e));
  const double u = 1.0 / std::sqrt(static_cast<double>(d));
  task->params_ = std::make_unique<Parameters>();
  Parameters& p = *task->params_;
  FWP_RETURN_IF_ERROR(Init(backend, p.E, S * e, normal));
  FWP_RETURN_IF_ERROR(Init(backend, p.W_kv, d * S, uniform(u)));
  FWP_RETURN_IF_ERROR(Init(backend, p.W_ke, d * e, uniform(u)));
  FWP_RETURN_IF_ERROR(Init(backend, p.b_k, d, uniform(fan_kv)));
  FWP_RETURN_IF_ERROR(Init(backend, p.W_bv, S, uniform(fan_kv)));
  FWP_RETURN_IF_ERROR(Init(backend, p.W_be, e, uniform(fan_kv)));
  FWP_RETURN_IF_ERROR(Init(backend, p.b_b, 1, uniform(fan_kv)));
  FWP_RETURN_IF_ERROR(Init(backend, p.W_q, d * e, uniform(u)));
  FWP_RETURN_IF_ERROR(Init(backend, p.b_q, d, uniform(fan_q)));
  return task;
}

std::vector<RetrievalTask::Sample> RetrievalTask::DrawBatch(int64_t n, Rng& rng) const {
  const int64_t S = config_.pairs;
  const bool replace = config_.setting == 2;
  const int64_t T = replace ? 2 * S : S;
  std::vector<Sample> batch(n);
  std::vector<int32_t> perm(S);
  for (Sample& s : batch) {
    for (auto* list : {&s.keys, &s.values}) {
      if (replace) {
        list->resize(T);
        for (auto& x : *list) x = static_cast<int32_t>(rng.Next() % S);
      } else {  // a random permutation: S distinct items
        std::iota(perm.begin(), perm.end(), 0);
        for (int64_t i = S - 1; i > 0; --i) std::swap(perm[i], perm[rng.Next() % (i + 1)]);
        *list = perm;
      }
    }
    // The query: a key of the sequence; the target: its most recent value.
    s.query = s.keys[rng.Next() % T];
    for (int64_t t = T - 1; t >= 0; --t) {
      if (s.keys[t] == s.query) {
        s.target = s.values[t];
        break;
      }
    }
  }
  return batch;
}

std::vector<RetrievalTask::Sample> RetrievalTask::DrawAllQueries(Rng& rng) const {
  // One sequence of S pairs, queried with each key it holds.
  const int64_t S = config_.pairs;
  Sample base;
  if (config_.setting == 2) {
    base.keys.resize(S);
    base.values.resize(S);
    for (auto& x : base.keys) x = static_cast<int32_t>(rng.Next() % S);
    for (auto& x : base.values) x = static_cast<int32_t>(rng.Next() % S);
  } else {
    base = DrawBatch(1, rng)[0];
  }
  std::vector<Sample> out;
  std::vector<bool> seen(S, false);
  for (int64_t t = static_cast<int64_t>(base.keys.size()) - 1; t >= 0; --t) {
    if (seen[base.keys[t]]) continue;
    seen[base.keys[t]] = true;
    Sample s = base;
    s.query = base.keys[t];
    s.target = base.values[t];
    out.push_back(std::move(s));
  }
  return out;
}

absl::StatusOr<double> RetrievalTask::Run(const std::vector<Sample>& samples, bool train,
                                          std::vector<int32_t>* predictions,
                                          std::vector<float>* final_states) {
  Backend& B = backend_;
  Parameters& p = *params_;
  const int64_t n = samples.size(), T = samples[0].keys.size();
  const int64_t S = config_.pairs, d = config_.d_key, e = embed_, rows = n * T;
  const int64_t RW = spec_.RowWidth(), dp = spec_.DPhi();
  // Inputs.
  std::vector<int32_t> keys(rows), queries(n);
  std::vector<float> onehot(rows * S, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    queries[i] = samples[i].query;
    for (int64_t t = 0; t < T; ++t) {
      keys[i * T + t] = samples[i].keys[t];
      onehot[(i * T + t) * S + samples[i].values[t]] = 1.0f;
    }
  }
  FWP_ASSIGN_OR_RETURN(Buffer keys_d, Upload(B, keys));
  FWP_ASSIGN_OR_RETURN(Buffer queries_d, Upload(B, queries));
  FWP_ASSIGN_OR_RETURN(Buffer onehot_d, Upload(B, onehot));
  FWP_ASSIGN_OR_RETURN(Buffer ek, Buffer::Allocate(B, rows * e * sizeof(float)));   // [rows, e]
  FWP_ASSIGN_OR_RETURN(Buffer eq, Buffer::Allocate(B, n * e * sizeof(float)));      // [n, e]
  FWP_ASSIGN_OR_RETURN(Buffer k, Buffer::Allocate(B, rows * d * sizeof(float)));    // [rows, d]
  FWP_ASSIGN_OR_RETURN(Buffer beta, Buffer::Allocate(B, rows * sizeof(float)));     // [rows]
  FWP_ASSIGN_OR_RETURN(Buffer q, Buffer::Allocate(B, n * d * sizeof(float)));       // [n, d]
  const auto* key_ids = static_cast<const int32_t*>(keys_d.data());
  const auto* query_ids = static_cast<const int32_t*>(queries_d.data());
  B.Embedding(key_ids, nullptr, rows, p.E.data.f32(), e, ek.f32());
  B.Embedding(query_ids, nullptr, n, p.E.data.f32(), e, eq.f32());
  B.Matmul(onehot_d.f32(), p.W_kv.data.f32(), p.b_k.data.f32(), k.f32(), rows, d, S, false);
  B.Matmul(ek.f32(), p.W_ke.data.f32(), nullptr, k.f32(), rows, d, e, true);
  B.Matmul(onehot_d.f32(), p.W_bv.data.f32(), p.b_b.data.f32(), beta.f32(), rows, 1, S, false);
  B.Matmul(ek.f32(), p.W_be.data.f32(), nullptr, beta.f32(), rows, 1, e, true);
  B.Matmul(eq.f32(), p.W_q.data.f32(), p.b_q.data.f32(), q.f32(), n, d, e, false);

  // Memory rows [q | k | v | b]: the query sits in each sequence's last row.
  const auto k_h = Download(B, k, rows * d), beta_h = Download(B, beta, rows);
  const auto q_h = Download(B, q, n * d);
  std::vector<float> qkvb(rows * RW, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = &qkvb[r * RW];
    std::copy(&k_h[r * d], &k_h[(r + 1) * d], row + d);
    std::copy(&onehot[r * S], &onehot[(r + 1) * S], row + 2 * d);
    if (spec_.update == UpdateRule::kDelta) row[2 * d + S] = beta_h[r];
    if (r % T == T - 1) std::copy(&q_h[(r / T) * d], &q_h[(r / T + 1) * d], row);
  }
  FWP_ASSIGN_OR_RETURN(Buffer qkvb_d, Upload(B, qkvb));
  const int64_t slot_floats = dp * S + (spec_.HasNormalizer() ? dp : 0);
  FWP_ASSIGN_OR_RETURN(Buffer state, Buffer::Allocate(B, n * slot_floats * sizeof(float)));
  std::vector<int32_t> slots(n);
  std::iota(slots.begin(), slots.end(), 0);
  FWP_ASSIGN_OR_RETURN(Buffer slots_d, Upload(B, slots));
  const auto* slot_ids = static_cast<const int32_t*>(slots_d.data());
  const StateView view{state.f32(), slot_floats, 0, dp * S};
  FWP_ASSIGN_OR_RETURN(Buffer y, Buffer::Allocate(B, rows * S * sizeof(float)));
  B.Zero(state.data(), state.bytes());
  B.FastWeightSequence(spec_, qkvb_d.f32(), nullptr, slot_ids, n, T, view, y.f32(), 64);
  const auto y_h = Download(B, y, rows * S);
  if (final_states) *final_states = Download(B, state, n * slot_floats);

  // Loss ½‖v − ŷ‖² per sequence, averaged.
  double loss = 0;
  std::vector<float> dy(rows * S, 0.0f);
  if (predictions) predictions->assign(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    const float* yhat = &y_h[((i + 1) * T - 1) * S];
    float* g = &dy[((i + 1) * T - 1) * S];
    int32_t best = 0;
    for (int64_t j = 0; j < S; ++j) {
      const double diff = yhat[j] - (j == samples[i].target ? 1.0 : 0.0);
      loss += 0.5 * diff * diff;
      g[j] = static_cast<float>(diff / n);
      if (yhat[j] > yhat[best]) best = static_cast<int32_t>(j);
    }
    if (predictions) (*predictions)[i] = best;
  }
  loss /= n;
  if (!train) return loss;

  // Backward, in reverse.
  for (Tensor* t : p.All()) B.Zero(t->grad.data(), t->size * sizeof(float));
  FWP_ASSIGN_OR_RETURN(Buffer dy_d, Upload(B, dy));
  FWP_ASSIGN_OR_RETURN(Buffer dqkvb, Buffer::Allocate(B, rows * RW * sizeof(float)));
  B.Zero(state.data(), state.bytes());  // the backward reads the initial (empty) states
  B.FastWeightSequenceBackward(spec_, qkvb_d.f32(), nullptr, slot_ids, n, T, view, dy_d.f32(),
                               dqkvb.f32(), StateView{}, 64);
  const auto drows = Download(B, dqkvb, rows * RW);
  std::vector<float> dk(rows * d), dbeta(rows, 0.0f), dq(n * d);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = &drows[r * RW];
    std::copy(row + d, row + 2 * d, &dk[r * d]);
    if (spec_.update == UpdateRule::kDelta) dbeta[r] = row[2 * d + S];
    if (r % T == T - 1) std::copy(row, row + d, &dq[(r / T) * d]);
  }
  FWP_ASSIGN_OR_RETURN(Buffer dk_d, Upload(B, dk));
  FWP_ASSIGN_OR_RETURN(Buffer dbeta_d, Upload(B, dbeta));
  FWP_ASSIGN_OR_RETURN(Buffer dq_d, Upload(B, dq));
  FWP_ASSIGN_OR_RETURN(Buffer dek, Buffer::Allocate(B, rows * e * sizeof(float)));
  FWP_ASSIGN_OR_RETURN(Buffer dek2, Buffer::Allocate(B, rows * e * sizeof(float)));
  FWP_ASSIGN_OR_RETURN(Buffer deq, Buffer::Allocate(B, n * e * sizeof(float)));
  B.MatmulBackward(dq_d.f32(), eq.f32(), p.W_q.data.f32(), deq.f32(), p.W_q.grad.f32(),
                   p.b_q.grad.f32(), n, d, e);
  B.MatmulBackward(dbeta_d.f32(), ek.f32(), p.W_be.data.f32(), dek2.f32(), p.W_be.grad.f32(),
                   nullptr, rows, 1, e);
  B.MatmulBackward(dbeta_d.f32(), onehot_d.f32(), p.W_bv.data.f32(), nullptr, p.W_bv.grad.f32(),
                   p.b_b.grad.f32(), rows, 1, S);
  B.MatmulBackward(dk_d.f32(), ek.f32(), p.W_ke.data.f32(), dek.f32(), p.W_ke.grad.f32(),
                   nullptr, rows, d, e);
  B.MatmulBackward(dk_d.f32(), onehot_d.f32(), p.W_kv.data.f32(), nullptr, p.W_kv.grad.f32(),
                   p.b_k.grad.f32(), rows, d, S);
  B.EmbeddingBackward(key_ids, rows, dek.f32(), e, p.E.grad.f32());
  B.EmbeddingBackward(key_ids, rows, dek2.f32(), e, p.E.grad.f32());
  B.EmbeddingBackward(query_ids, n, deq.f32(), e, p.E.grad.f32());
  // Adam (AdamW without decay), as torch.optim.Adam with its defaults.
  ++step_;
  AdamWParams hp;
  hp.lr = config_.lr;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.999f;
  hp.eps = 1e-8f;
  hp.weight_decay = 0.0f;
  hp.step = step_;
  for (Tensor* t : p.All()) B.AdamW(t->data.f32(), t->grad.f32(), t->m.f32(), t->v.f32(), t->size, hp);
  return loss;
}

constexpr char kFormat[] = "fwp-retrieval";

absl::Status RetrievalTask::Save(const std::string& path) const {
  const auto layout = Parameters::Layout(config_.pairs, config_.d_key, embed_);
  const auto tensors = params_->All();
  std::vector<std::vector<float>> host;
  std::vector<TensorToWrite> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    host.push_back(Download(backend_, tensors[i]->data, tensors[i]->size));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    out.push_back({layout[i].first, DType::kF32, layout[i].second,
                   absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(host[i].data()),
                                       host[i].size() * sizeof(float))});
  }
  const std::map<std::string, std::string> metadata = {
      {"format", kFormat},
      {"setting", std::to_string(config_.setting)},
      {"pairs", std::to_string(config_.pairs)},
      {"d_key", std::to_string(config_.d_key)},
      {"update", UpdateRuleName(config_.update)},
      {"feature_map", FeatureMapName(config_.phi.kind)},
      {"nu", std::to_string(config_.phi.nu)},
      {"steps", std::to_string(step_)},
  };
  return WriteSafetensors(path, out, metadata);
}

absl::StatusOr<std::unique_ptr<RetrievalTask>> RetrievalTask::Load(Backend& backend,
                                                                   const std::string& path,
                                                                   uint64_t seed) {
  FWP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  const auto& meta = file->metadata();
  auto field = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = meta.find(key);
    if (it == meta.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a retrieval model (no metadata '", key, "')"));
    }
    return it->second;
  };
  auto number = [&](const char* key, int64_t lo, int64_t hi) -> absl::StatusOr<int64_t> {
    FWP_ASSIGN_OR_RETURN(std::string text, field(key));
    int64_t value = 0;
    if (!absl::SimpleAtoi(text, &value) || value < lo || value > hi) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": metadata '", key, "' is '", text,
                                                     "', not a number in [", lo, ", ", hi, "]"));
    }
    return value;
  };
  FWP_ASSIGN_OR_RETURN(std::string format, field("format"));
  if (format != kFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": format is '", format, "', not '", kFormat, "'"));
  }
  RetrievalConfig config;
  config.seed = seed;
  FWP_ASSIGN_OR_RETURN(int64_t setting, number("setting", 1, 2));
  config.setting = static_cast<int>(setting);
  FWP_ASSIGN_OR_RETURN(config.pairs, number("pairs", 2, kMaxRetrievalPairs));
  FWP_ASSIGN_OR_RETURN(config.d_key, number("d_key", 1, 1 << 16));
  FWP_ASSIGN_OR_RETURN(int64_t nu, number("nu", 1, kMaxDpfpNu));
  config.phi.nu = static_cast<int>(nu);
  FWP_ASSIGN_OR_RETURN(std::string update, field("update"));
  FWP_ASSIGN_OR_RETURN(std::string phi, field("feature_map"));
  const auto rule = UpdateRuleFromName(update);
  const auto kind = FeatureMapFromName(phi);
  if (!rule || !kind) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": unknown ", rule ? "feature map '" : "update rule '", rule ? phi : update, "'"));
  }
  config.update = *rule;
  config.phi.kind = *kind;
  // The file's tensors must fit its metadata before Create allocates a
  // task of that size: a corrupt 'pairs' would otherwise fail in bad_alloc.
  const auto layout = Parameters::Layout(config.pairs, config.d_key, EmbedSize(config.pairs));
  if (file->tensors().size() != layout.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": holds ", file->tensors().size(),
                                                   " tensors, a retrieval model ", layout.size()));
  }
  for (const auto& [name, shape] : layout) {
    const TensorInfo* info = file->Find(name);
    if (info == nullptr || info->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name, "' ", info ? "has the wrong shape" : "is missing",
          " (S = ", config.pairs, ", d_key = ", config.d_key, " needs [",
          absl::StrJoin(shape, ", "), "])"));
    }
  }
  FWP_ASSIGN_OR_RETURN(auto task, Create(backend, config));
  FWP_ASSIGN_OR_RETURN(task->step_, number("steps", 0, int64_t{1} << 40));
  const auto tensors = task->params_->All();
  for (size_t i = 0; i < layout.size(); ++i) {
    FWP_ASSIGN_OR_RETURN(std::vector<float> values, file->ReadF32(layout[i].first));
    backend.CopyToDevice(tensors[i]->data.data(), values.data(), values.size() * sizeof(float));
  }
  return task;
}

absl::StatusOr<double> RetrievalTask::TrainStep() {
  return Run(DrawBatch(config_.batch, rng_), /*train=*/true, nullptr);
}

absl::StatusOr<RetrievalEval> RetrievalTask::Evaluate(bool rerun_each_query) {
  std::vector<std::vector<Sample>> sets;
  for (int64_t i = 0; i < config_.eval_sequences; ++i) sets.push_back(DrawAllQueries(rng_));
  if (rerun_each_query) return EvaluateByRerun(sets);
  Backend& B = backend_;
  Parameters& p = *params_;
  const int64_t S = config_.pairs, d = config_.d_key, e = embed_, dp = spec_.DPhi();
  // Each sequence's writes once; its final memory is what every query reads.
  std::vector<Sample> bases;
  std::vector<int32_t> query_ids;
  for (const auto& set : sets) {
    bases.push_back(set[0]);
    for (const Sample& s : set) query_ids.push_back(s.query);
  }
  std::vector<float> states;
  FWP_RETURN_IF_ERROR(Run(bases, /*train=*/false, nullptr, &states).status());
  const int64_t slot_floats = static_cast<int64_t>(states.size()) / config_.eval_sequences;
  // q = W_q E[query] + b_q for every query, on the backend.
  const int64_t nq = query_ids.size();
  FWP_ASSIGN_OR_RETURN(Buffer ids_d, Upload(B, query_ids));
  FWP_ASSIGN_OR_RETURN(Buffer eq, Buffer::Allocate(B, nq * e * sizeof(float)));
  FWP_ASSIGN_OR_RETURN(Buffer q, Buffer::Allocate(B, nq * d * sizeof(float)));
  B.Embedding(static_cast<const int32_t*>(ids_d.data()), nullptr, nq, p.E.data.f32(), e, eq.f32());
  B.Matmul(eq.f32(), p.W_q.data.f32(), p.b_q.data.f32(), q.f32(), nq, d, e, false);
  const auto q_h = Download(B, q, nq * d);
  // The read-out y = scale · φ(q) S (÷ φ(q)·z when it is positive), as the
  // memory's own read-out after the last write.
  const float scale = spec_.Scale();
  std::vector<float> phi(dp);
  std::vector<double> y(S);
  double loss = 0;
  int64_t correct = 0, at = 0;
  for (size_t i = 0; i < sets.size(); ++i) {
    const float* Sm = &states[i * slot_floats];
    const float* z = spec_.HasNormalizer() ? Sm + dp * S : nullptr;
    for (const Sample& s : sets[i]) {
      FeatureMapRow(spec_.phi, &q_h[at++ * d], d, nullptr, phi.data());
      std::fill(y.begin(), y.end(), 0.0);
      double den = 0;
      for (int64_t r = 0; r < dp; ++r) {
        const float* row = Sm + r * S;
        for (int64_t j = 0; j < S; ++j) y[j] += static_cast<double>(phi[r]) * row[j];
        if (z) den += static_cast<double>(phi[r]) * z[r];
      }
      const double f = den > 0 ? scale / den : scale;
      int64_t best = 0;
      for (int64_t j = 0; j < S; ++j) {
        y[j] *= f;
        const double diff = y[j] - (j == s.target ? 1.0 : 0.0);
        loss += 0.5 * diff * diff;
        if (y[j] > y[best]) best = j;
      }
      correct += best == s.target;
    }
  }
  return RetrievalEval{loss / nq, static_cast<double>(correct) / nq, nq};
}

absl::StatusOr<RetrievalEval> RetrievalTask::EvaluateByRerun(
    const std::vector<std::vector<Sample>>& sets) {
  double loss = 0;
  int64_t correct = 0, total = 0;
  for (const auto& all : sets) {
    for (size_t i = 0; i < all.size(); i += config_.batch) {
      std::vector<Sample> part(all.begin() + i,
                               all.begin() + std::min(all.size(), i + config_.batch));
      std::vector<int32_t> predicted;
      FWP_ASSIGN_OR_RETURN(double l, Run(part, /*train=*/false, &predicted));
      loss += l * part.size();
      for (size_t j = 0; j < part.size(); ++j) correct += predicted[j] == part[j].target;
      total += part.size();
    }
  }
  return RetrievalEval{loss / total, static_cast<double>(correct) / total, total};
}

absl::StatusOr<RetrievalResult> RetrievalTask::Train(
    const std::function<void(int64_t, const RetrievalEval&)>& on_eval) {
  RetrievalResult result;
  result.best.loss = INFINITY;
  int64_t strikes = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= config_.max_steps; ++step) {
    FWP_RETURN_IF_ERROR(TrainStep().status());
    result.steps = step;
    if (step % config_.eval_every != 0) continue;
    FWP_ASSIGN_OR_RETURN(RetrievalEval eval, Evaluate());
    result.last = eval;
    on_eval(step, eval);
    if (eval.loss < result.best.loss) {
      result.best = eval;
      strikes = 0;
    } else {
      ++strikes;
    }
    if (eval.loss <= config_.target_loss || strikes > config_.patience) break;
    if (config_.max_seconds > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >=
            config_.max_seconds) {
      result.out_of_time = step < config_.max_steps;
      break;
    }
  }
  return result;
}

}  // namespace fwp
