// The fast-weight memory of FastWeightAttention (Schlag et al. 2021, eq. 14-19).
//
// Per head, token t, with q, k, v, b read from the fused projection row:
//   φq, φk = φ(q), φ(k)                      (feature map, sum normalisation)
//   delta:  β = sigmoid(b);  v̄ = W φk;  W ← W + β (v − v̄) ⊗ φk
//   sum:    W ← W + v ⊗ φk;  z ← z + φk   (z only with the attention normaliser)
//   y = scale · W φq                         (scale 1/sqrt(d_head) unless set; sum +
//                                             normaliser: divided by z·φq when
//                                             it is positive)
// The update comes before the read-out, so a token sees its own write.
//
// Keys and queries have d_head dimensions (d_φ after the feature map), values
// and outputs d_value (= d_head in the language model; the synthetic
// retrieval task uses one-hot values of another size).
//
// W is stored transposed, S = Wᵀ [d_φ, d_value], so that every update and read
// walks contiguous rows. States live in a pool of slots; a slot's layers and
// heads are addressed through StateView (see model/state.h for the layout).
//
// Projection row layout (one row per token, heads side by side), as in the
// paper's code: [q (d_head) | k (d_head) | v (d_value) | b (1, delta only)].
//
// Two ops:
//   FastWeightSequence  T tokens of each of B sequences from their states, in
//                       chunks: inside a chunk the delta rule is the lower-
//                       triangular system (I + diag(β)·tril(ΦkΦkᵀ, −1)) U =
//                       diag(β)(V − Φk S₀), then Y = Φq S₀ + tril(ΦqΦkᵀ) U and
//                       S = S₀ + Φkᵀ U (the chunkwise-parallel form; chunk = T
//                       is the fully parallel form, chunk = 1 the recurrence).
//   FastWeightStep      one token for each of n slots: the recurrent form, one
//                       read of S and one read-modify-write per token.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "kernels/feature_map.h"

namespace fwp {

enum class UpdateRule { kDelta, kSum };

const char* UpdateRuleName(UpdateRule rule);
// The rule UpdateRuleName gives `name`; nullopt for no rule.
std::optional<UpdateRule> UpdateRuleFromName(std::string_view name);

struct FastWeightSpec {
  UpdateRule update = UpdateRule::kDelta;
  FeatureMapSpec phi;
  bool attention_normalizer = false;  // sum rule only
  int64_t heads = 1;
  int64_t d_head = 1;   // keys and queries
  int64_t d_value = 0;  // values and outputs; 0 means d_head
  float scale = 0.0f;   // output scale; 0 means 1/sqrt(d_head)

  int64_t DPhi() const { return phi.OutputDim(d_head); }
  int64_t DValue() const { return d_value > 0 ? d_value : d_head; }
  float Scale() const;
  // Floats per head in a projection row.
  int64_t HeadWidth() const {
    return 2 * d_head + DValue() + (update == UpdateRule::kDelta ? 1 : 0);
  }
  // Floats per token in a projection row.
  int64_t RowWidth() const { return heads * HeadWidth(); }
  bool HasNormalizer() const {
    return update == UpdateRule::kSum && attention_normalizer;
  }
};

// Where one layer's memory lives inside a pool of state slots:
//   S of (slot, head)  at base + slot·slot_floats + s_offset + head·d_φ·d_value
//   z of (slot, head)  at base + slot·slot_floats + z_offset + head·d_φ
struct StateView {
  float* base = nullptr;
  int64_t slot_floats = 0;
  int64_t s_offset = 0;
  int64_t z_offset = 0;  // used only when the spec has a normaliser
};

}  // namespace fwp

namespace fwp::cpu {

// qkvb: [B, T, RowWidth]; slots: [B] (distinct); y: [B, T, heads·d_value].
// favor_proj: Ω [m, d_head] for favor, else null. chunk ≥ 1.
void FastWeightSequence(const FastWeightSpec& spec, const float* qkvb,
                        const float* favor_proj, const int32_t* slots,
                        int64_t batch, int64_t time, const StateView& state,
                        float* y, int64_t chunk);

// Backward of FastWeightSequence over the same inputs. `state` holds the
// states the forward started from (S₀, z₀) and is only read. dy: [B, T,
// heads·d_value]. dqkvb: [B, T, RowWidth], written. dstate (base may be null):
// on entry ∂L/∂(S_T, z_T) of the final states, on return ∂L/∂(S₀, z₀), laid out
// like `state`. Memory stays linear in T: the state is checkpointed at chunk
// starts (T/chunk copies); each chunk, from the last, is recomputed and taken
// back by the chunkwise form's products (chunk 1: the recurrence).
void FastWeightSequenceBackward(const FastWeightSpec& spec, const float* qkvb,
                                const float* favor_proj, const int32_t* slots,
                                int64_t batch, int64_t time, const StateView& state,
                                const float* dy, float* dqkvb, const StateView& dstate,
                                int64_t chunk);

// qkvb: [n, RowWidth]; slots: [n] (distinct); y: [n, heads·d_value].
void FastWeightStep(const FastWeightSpec& spec, const float* qkvb,
                    const float* favor_proj, const int32_t* slots, int64_t n,
                    const StateView& state, float* y);

}  // namespace fwp::cpu
