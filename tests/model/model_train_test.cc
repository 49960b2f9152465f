// The training form: the whole model's gradients against central finite
// differences of an independent float64 reference of the network, for every
// update rule × feature map; and a tiny model overfits one batch.
#include <gtest/gtest.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "kernels/embedding.h"
#include "model/model.h"
#include "tests/reference.h"

namespace fwp {
namespace {

using testing::FastWeightRecurrence64;
using testing::RelativeError;
using Weights64 = std::map<std::string, std::vector<double>>;

// y[rows, out] = x[rows, in] · Wᵀ (+ b).
std::vector<double> Linear(const std::vector<double>& x, const std::vector<double>& w,
                           const std::vector<double>* b, int64_t rows, int64_t in, int64_t out) {
  std::vector<double> y(rows * out);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = b ? (*b)[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) acc += x[r * in + i] * w[o * in + i];
      y[r * out + o] = acc;
    }
  }
  return y;
}

std::vector<double> LayerNorm64(const std::vector<double>& x, const std::vector<double>& g,
                                const std::vector<double>& b, int64_t rows, int64_t d, double eps) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < d; ++j) mean += x[r * d + j] / d;
    for (int64_t j = 0; j < d; ++j) var += (x[r * d + j] - mean) * (x[r * d + j] - mean) / d;
    for (int64_t j = 0; j < d; ++j) {
      y[r * d + j] = (x[r * d + j] - mean) / std::sqrt(var + eps) * g[j] + b[j];
    }
  }
  return y;
}

// Mean next-token cross-entropy of the network, in float64 throughout.
double ReferenceLoss(const Config& c, const Weights64& w, const std::vector<float>& omega_all,
                     const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                     int64_t batch) {
  const int64_t time = tokens.size() / batch, D = c.d_model, F = c.d_ff, V = c.vocab_size;
  const FastWeightSpec attn = c.Attention();
  const int64_t RW = attn.RowWidth(), HD = c.n_heads * c.d_head;
  double total = 0;
  int64_t count = 0;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<double> x(time * D);
    for (int64_t t = 0; t < time; ++t) {
      for (int64_t j = 0; j < D; ++j) {
        x[t * D + j] = w.at("embed.weight")[tokens[b * time + t] * D + j];
        if (c.positions == Positions::kSinusoidal) x[t * D + j] += SinusoidalCode(t, j, D);
      }
    }
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = absl::StrCat("layers.", l, ".");
      const auto xn = LayerNorm64(x, w.at(p + "attn_norm.weight"), w.at(p + "attn_norm.bias"),
                                  time, D, c.norm_eps);
      const std::string qn = c.update == UpdateRule::kDelta ? "attn.qkvb.weight" : "attn.qkv.weight";
      const auto qkvb = Linear(xn, w.at(p + qn), nullptr, time, D, RW);
      std::vector<double> y(time * HD);
      const float* omega = c.feature_map.kind == FeatureMapKind::kFavor
                               ? omega_all.data() + l * c.feature_map.favor_features * c.d_head
                               : nullptr;
      for (int64_t h = 0; h < c.n_heads; ++h) {
        std::vector<double> s(attn.DPhi() * c.d_head, 0.0), z(attn.DPhi(), 0.0), yh;
        FastWeightRecurrence64(attn, qkvb.data() + h * attn.HeadWidth(), RW, time, omega, s, z, yh);
        for (int64_t t = 0; t < time; ++t) {
          for (int64_t j = 0; j < c.d_head; ++j) y[t * HD + h * c.d_head + j] = yh[t * c.d_head + j];
        }
      }
      const auto o = Linear(y, w.at(p + "attn.out.weight"), nullptr, time, HD, D);
      for (int64_t i = 0; i < time * D; ++i) x[i] += o[i];
      const auto xn2 = LayerNorm64(x, w.at(p + "ffn_norm.weight"), w.at(p + "ffn_norm.bias"),
                                   time, D, c.norm_eps);
      auto ff = Linear(xn2, w.at(p + "ffn.up.weight"), &w.at(p + "ffn.up.bias"), time, D, F);
      for (double& v : ff) {
        v = c.activation == Activation::kRelu
                ? std::max(v, 0.0)
                : 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
      }
      const auto down = Linear(ff, w.at(p + "ffn.down.weight"), &w.at(p + "ffn.down.bias"), time, F, D);
      for (int64_t i = 0; i < time * D; ++i) x[i] += down[i];
    }
    const auto xf = LayerNorm64(x, w.at("final_norm.weight"), w.at("final_norm.bias"), time, D,
                                c.norm_eps);
    const auto logits = Linear(xf, w.at(c.tied_embeddings ? "embed.weight" : "lm_head.weight"),
                               nullptr, time, D, V);
    for (int64_t t = 0; t < time; ++t) {
      const int32_t target = targets[b * time + t];
      if (target < 0) continue;
      double max = -1e300, sum = 0;
      for (int64_t v = 0; v < V; ++v) max = std::max(max, logits[t * V + v]);
      for (int64_t v = 0; v < V; ++v) sum += std::exp(logits[t * V + v] - max);
      total += max + std::log(sum) - logits[t * V + target];
      ++count;
    }
  }
  return total / count;
}

Config Tiny(const FastWeightSpec& attn) {
  Config c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = attn.heads;
  c.d_head = attn.d_head;
  c.d_ff = 16;
  c.update = attn.update;
  c.feature_map = attn.phi;
  c.feature_map.favor_features = 6;
  c.attention_normalizer = attn.attention_normalizer;
  return c;
}

TEST(ModelTraining, GradientsMatchFiniteDifferencesOfAFloat64ReferenceForEveryVariant) {
  auto backend = MakeCpuBackend();
  const int64_t batch = 2, time = 6;
  int variant = 0;
  for (const FastWeightSpec& attn : testing::AllAttentionVariants(2, 4)) {
    Config c = Tiny(attn);
    // Spread the other options over the variants.
    c.positions = variant % 2 ? Positions::kSinusoidal : Positions::kNone;
    c.tied_embeddings = variant % 3 != 1;
    c.activation = variant % 4 == 2 ? Activation::kGelu : Activation::kRelu;
    ++variant;
    SCOPED_TRACE(absl::StrCat(UpdateRuleName(c.update), "+", FeatureMapName(c.feature_map.kind),
                              c.attention_normalizer ? "+normaliser" : "",
                              c.positions == Positions::kSinusoidal ? " sinusoidal" : "",
                              c.tied_embeddings ? " tied" : " untied", " ",
                              ActivationName(c.activation)));
    const float init = attn.phi.kind == FeatureMapKind::kIdentity ? 0.2f : 0.5f;
    const HostWeights weights = RandomWeights(c, 3, init);
    auto model = Model::Create(*backend, c, weights);
    ASSERT_TRUE(model.ok()) << model.status();
    Rng rng(4);
    std::vector<int32_t> tokens(batch * time), targets(batch * time);
    for (auto& t : tokens) t = static_cast<int32_t>(rng.Next() % c.vocab_size);
    for (auto& t : targets) t = static_cast<int32_t>(rng.Next() % c.vocab_size);
    targets[3] = -1;  // an ignored position

    const auto params = (*model)->Parameters();
    std::vector<Buffer> grads;
    for (const auto& p : params) {
      auto g = Buffer::Allocate(*backend, p.size * sizeof(float));
      ASSERT_TRUE(g.ok());
      backend->Zero(g->data(), g->bytes());
      grads.push_back(std::move(*g));
    }
    (*model)->set_chunk_size(4);  // several chunks in the memory's backward
    auto loss = (*model)->ForwardBackward(tokens, targets, batch, &grads);
    ASSERT_TRUE(loss.ok()) << loss.status();
    EXPECT_EQ(loss->count, batch * time - 1);

    Weights64 w64;
    for (const auto& [name, v] : weights) w64[name] = std::vector<double>(v.begin(), v.end());
    std::vector<float> omega_all;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      auto it = weights.find(absl::StrCat("layers.", l, ".attn.favor_proj"));
      if (it != weights.end()) omega_all.insert(omega_all.end(), it->second.begin(), it->second.end());
    }
    EXPECT_NEAR(loss->mean, ReferenceLoss(c, w64, omega_all, tokens, targets, batch), 1e-5);
    std::vector<double> analytic, numeric;
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& name = params[i].name;
      const float* g = grads[i].f32();
      analytic.insert(analytic.end(), g, g + params[i].size);
      const auto fd = testing::NumericGradient(w64.at(name), [&](const std::vector<double>& v) {
        Weights64 perturbed = w64;
        perturbed[name] = v;
        return ReferenceLoss(c, perturbed, omega_all, tokens, targets, batch);
      }, 1e-5);
      numeric.insert(numeric.end(), fd.begin(), fd.end());
      EXPECT_LT(RelativeError(std::vector<double>(g, g + params[i].size), fd), 1e-3) << name;
    }
    EXPECT_LT(RelativeError(analytic, numeric), 1e-4);
  }
}

}  // namespace
}  // namespace fwp

namespace fwp {
namespace {

// Two segments with the state carried score exactly what one pass over the
// whole sequence scores (positions continue too).
TEST(ModelTraining, CarriedStatesContinueTheSequence) {
  auto backend = MakeCpuBackend();
  Config c = Tiny(testing::AllAttentionVariants(2, 4)[0]);
  c.positions = Positions::kSinusoidal;
  auto model = Model::Create(*backend, c, RandomWeights(c, 3, 0.5f));
  ASSERT_TRUE(model.ok());
  const int64_t batch = 2, half = 9;
  Rng rng(6);
  std::vector<int32_t> tokens(batch * 2 * half), targets(batch * 2 * half);
  for (auto& t : tokens) t = static_cast<int32_t>(rng.Next() % c.vocab_size);
  for (auto& t : targets) t = static_cast<int32_t>(rng.Next() % c.vocab_size);
  auto whole = (*model)->ForwardBackward(tokens, targets, batch, nullptr);
  ASSERT_TRUE(whole.ok());
  auto carry = (*model)->NewStatePool(batch);
  ASSERT_TRUE(carry.ok());
  double parts = 0;
  for (int64_t part = 0; part < 2; ++part) {
    std::vector<int32_t> in, out;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t at = b * 2 * half + part * half;
      in.insert(in.end(), tokens.begin() + at, tokens.begin() + at + half);
      out.insert(out.end(), targets.begin() + at, targets.begin() + at + half);
    }
    auto loss = (*model)->ForwardBackward(in, out, batch, nullptr, carry->get());
    ASSERT_TRUE(loss.ok()) << loss.status();
    parts += loss->mean * loss->count;
  }
  EXPECT_NEAR(parts / whole->count, whole->mean, 1e-5 * whole->mean);
  EXPECT_EQ((*carry)->position(0), 2 * half);
}

}  // namespace
}  // namespace fwp
