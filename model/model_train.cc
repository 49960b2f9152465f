// The training form of Model: forward with saved activations, softmax
// cross-entropy, and the backward through every op in exactly the reverse
// order of the forward (STYLE.md). Activation gradients are written or added
// into the residual stream's gradient; parameter gradients accumulate into
// the caller's buffers, so several micro-batches can be summed before a step.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "model/model.h"
#include "model/train_workspace.h"

namespace fwp {

absl::StatusOr<Model::Loss> Model::ForwardBackward(absl::Span<const int32_t> tokens,
                                                  absl::Span<const int32_t> targets,
                                                  int64_t batch, std::vector<Buffer>* grads,
                                                  StatePool* carry, float gradient_scale) {
  const Config& c = config_;
  if (batch <= 0 || tokens.empty() || tokens.size() % batch != 0 ||
      targets.size() != tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "training needs tokens and targets of equal size [batch, time]; got ", tokens.size(),
        " tokens, ", targets.size(), " targets, batch ", batch));
  }
  const std::vector<Parameter> params = Parameters();
  if (grads != nullptr && grads->size() != params.size()) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", params.size(),
                                                   " gradient buffers, got ", grads->size()));
  }
  const int64_t time = tokens.size() / batch;
  const int64_t n = batch * time;
  const int64_t D = c.d_model, F = c.d_ff, V = c.vocab_size;
  const FastWeightSpec attn = c.Attention();
  const int64_t RW = attn.RowWidth(), HD = c.n_heads * c.d_head;
  int64_t count = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", tokens[i], " at index ", i, " is outside the vocabulary"));
    }
    if (targets[i] >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat("target ", targets[i], " at index ", i, " is outside the vocabulary"));
    }
    if (targets[i] >= 0) ++count;
  }
  if (carry != nullptr && (carry->capacity() != batch ||
                           carry->slot_bytes() != state_layout().SlotBytes())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the carried states must be a pool of this model with ", batch, " slots"));
  }

  // Workspace for this shape.
  if (!train_ || train_->batch != batch || train_->time != time) {
    auto w = std::make_unique<TrainWorkspace>();
    w->batch = batch;
    w->time = time;
    auto alloc = [&](Buffer& b, int64_t floats) -> absl::Status {
      FWP_ASSIGN_OR_RETURN(b, Buffer::Allocate(backend_, floats * sizeof(float)));
      return absl::OkStatus();
    };
    for (auto* list : {&w->x_in, &w->xn1, &w->qkvb, &w->y, &w->h, &w->xn2, &w->ff_pre,
                       &w->ff_act}) {
      list->resize(c.n_layers);
    }
    for (int64_t l = 0; l < c.n_layers; ++l) {
      FWP_RETURN_IF_ERROR(alloc(w->x_in[l], n * D));
      FWP_RETURN_IF_ERROR(alloc(w->xn1[l], n * D));
      FWP_RETURN_IF_ERROR(alloc(w->qkvb[l], n * RW));
      FWP_RETURN_IF_ERROR(alloc(w->y[l], n * HD));
      FWP_RETURN_IF_ERROR(alloc(w->h[l], n * D));
      FWP_RETURN_IF_ERROR(alloc(w->xn2[l], n * D));
      FWP_RETURN_IF_ERROR(alloc(w->ff_pre[l], n * F));
      FWP_RETURN_IF_ERROR(alloc(w->ff_act[l], n * F));
    }
    FWP_RETURN_IF_ERROR(alloc(w->x_final, n * D));
    FWP_RETURN_IF_ERROR(alloc(w->xn_final, n * D));
    FWP_RETURN_IF_ERROR(alloc(w->logits, n * V));
    FWP_RETURN_IF_ERROR(alloc(w->losses, n));
    FWP_RETURN_IF_ERROR(alloc(w->dx, n * D));
    FWP_RETURN_IF_ERROR(alloc(w->dxn, n * D));
    FWP_RETURN_IF_ERROR(alloc(w->dy, n * HD));
    FWP_RETURN_IF_ERROR(alloc(w->dqkvb, n * RW));
    FWP_RETURN_IF_ERROR(alloc(w->dff, n * F));
    FWP_ASSIGN_OR_RETURN(w->tokens, Buffer::Allocate(backend_, n * sizeof(int32_t)));
    FWP_ASSIGN_OR_RETURN(w->targets, Buffer::Allocate(backend_, n * sizeof(int32_t)));
    FWP_ASSIGN_OR_RETURN(w->positions, Buffer::Allocate(backend_, n * sizeof(int64_t)));
    FWP_ASSIGN_OR_RETURN(w->slots, Buffer::Allocate(backend_, batch * sizeof(int32_t)));
    FWP_ASSIGN_OR_RETURN(w->initial, NewStatePool(static_cast<int32_t>(batch)));
    FWP_ASSIGN_OR_RETURN(w->work, NewStatePool(static_cast<int32_t>(batch)));
    std::vector<int32_t> slots(batch);
    for (int64_t b = 0; b < batch; ++b) slots[b] = static_cast<int32_t>(b);
    backend_.CopyToDevice(w->slots.data(), slots.data(), batch * sizeof(int32_t));
    train_ = std::move(w);
  }
  TrainWorkspace& w = *train_;
  // The states the sequences start from: carried ones, or empty.
  if (carry != nullptr) {
    w.initial->CopyAllFrom(*carry);
    w.work->CopyAllFrom(*carry);
  } else {
    for (int32_t b = 0; b < batch; ++b) {
      w.initial->Reset(b);
      w.work->Reset(b);
    }
  }
  if (c.positions == Positions::kSinusoidal) {
    std::vector<int64_t> positions(n);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < time; ++t) positions[b * time + t] = w.work->position(b) + t;
    }
    backend_.CopyToDevice(w.positions.data(), positions.data(), n * sizeof(int64_t));
  }
  backend_.CopyToDevice(w.tokens.data(), tokens.data(), n * sizeof(int32_t));
  backend_.CopyToDevice(w.targets.data(), targets.data(), n * sizeof(int32_t));
  const auto* token_ids = static_cast<const int32_t*>(w.tokens.data());
  const auto* slot_ids = static_cast<const int32_t*>(w.slots.data());
  const int64_t* positions =
      c.positions == Positions::kSinusoidal ? static_cast<const int64_t*>(w.positions.data())
                                            : nullptr;

  // ---- forward ----
  float* x = w.x_in.empty() ? w.x_final.f32() : w.x_in[0].f32();
  backend_.Embedding(token_ids, positions, n, embed_.f32(), D, x);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[l];
    float* x_in = w.x_in[l].f32();
    float* h = w.h[l].f32();
    backend_.LayerNorm(x_in, L.attn_norm_w.f32(), L.attn_norm_b.f32(), n, D, c.norm_eps,
                       w.xn1[l].f32());
    backend_.Matmul(w.xn1[l].f32(), L.qkvb.f32(), nullptr, w.qkvb[l].f32(), n, RW, D, false);
    backend_.FastWeightSequence(attn, w.qkvb[l].f32(), L.favor_proj.f32(), slot_ids, batch,
                                time, w.work->View(l), w.y[l].f32(), chunk_size_);
    backend_.CopyOnDevice(h, x_in, n * D * sizeof(float));
    backend_.Matmul(w.y[l].f32(), L.out.f32(), nullptr, h, n, D, HD, /*accumulate=*/true);
    backend_.LayerNorm(h, L.ffn_norm_w.f32(), L.ffn_norm_b.f32(), n, D, c.norm_eps,
                       w.xn2[l].f32());
    backend_.Matmul(w.xn2[l].f32(), L.up_w.f32(), L.up_b.f32(), w.ff_pre[l].f32(), n, F, D,
                    false);
    backend_.CopyOnDevice(w.ff_act[l].f32(), w.ff_pre[l].f32(), n * F * sizeof(float));
    backend_.Activate(c.activation, w.ff_act[l].f32(), n * F);
    float* x_out = l + 1 < c.n_layers ? w.x_in[l + 1].f32() : w.x_final.f32();
    backend_.CopyOnDevice(x_out, h, n * D * sizeof(float));
    backend_.Matmul(w.ff_act[l].f32(), L.down_w.f32(), L.down_b.f32(), x_out, n, D, F,
                    /*accumulate=*/true);
  }
  backend_.LayerNorm(w.x_final.f32(), final_norm_w_.f32(), final_norm_b_.f32(), n, D,
                     c.norm_eps, w.xn_final.f32());
  const float* head = c.tied_embeddings ? embed_.f32() : lm_head_.f32();
  backend_.Matmul(w.xn_final.f32(), head, nullptr, w.logits.f32(), n, V, D, false);
  const float dloss = count > 0 ? gradient_scale / static_cast<float>(count) : 0.0f;
  backend_.SoftmaxCrossEntropy(w.logits.f32(), static_cast<const int32_t*>(w.targets.data()), n,
                               V, w.losses.f32(), grads ? w.logits.f32() : nullptr, dloss);
  auto mean_loss = [&]() -> Loss {
    std::vector<float> losses(n);
    backend_.CopyToHost(losses.data(), w.losses.data(), n * sizeof(float));
    double total = 0.0;
    for (float v : losses) total += v;
    return Loss{count > 0 ? total / count : 0.0, count};
  };
  if (carry != nullptr) {
    for (int32_t b = 0; b < batch; ++b) w.work->Advance(b, time);
    carry->CopyAllFrom(*w.work);
  }
  if (grads == nullptr) return mean_loss();

  // ---- backward, in reverse ----
  // The gradient buffer of a parameter, by name.
  auto grad_of = [&](const std::string& name) -> float* {
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].name == name) return (*grads)[i].f32();
    }
    return nullptr;
  };
  float* dx = w.dx.f32();
  float* dxn = w.dxn.f32();
  float* d_head = c.tied_embeddings ? grad_of("embed.weight") : grad_of("lm_head.weight");
  backend_.MatmulBackward(w.logits.f32(), w.xn_final.f32(), head, dxn, d_head, nullptr, n, V, D);
  backend_.Zero(dx, n * D * sizeof(float));
  backend_.LayerNormBackward(w.x_final.f32(), final_norm_w_.f32(), dxn, n, D, c.norm_eps, dx,
                             grad_of("final_norm.weight"), grad_of("final_norm.bias"));
  for (int64_t l = c.n_layers - 1; l >= 0; --l) {
    const Layer& L = layers_[l];
    const std::string p = absl::StrCat("layers.", l, ".");
    // x_out = h + W_down act(ff_pre) + b_down;  dx holds ∂L/∂x_out.
    float* dff = w.dff.f32();
    backend_.MatmulBackward(dx, w.ff_act[l].f32(), L.down_w.f32(), dff,
                            grad_of(p + "ffn.down.weight"), grad_of(p + "ffn.down.bias"), n, D,
                            F);
    backend_.ActivateBackward(c.activation, w.ff_pre[l].f32(), dff, n * F, dff);
    backend_.MatmulBackward(dff, w.xn2[l].f32(), L.up_w.f32(), dxn, grad_of(p + "ffn.up.weight"),
                            grad_of(p + "ffn.up.bias"), n, F, D);
    backend_.LayerNormBackward(w.h[l].f32(), L.ffn_norm_w.f32(), dxn, n, D, c.norm_eps, dx,
                               grad_of(p + "ffn_norm.weight"), grad_of(p + "ffn_norm.bias"));
    // h = x_in + W_o y;  dx holds ∂L/∂h.
    backend_.MatmulBackward(dx, w.y[l].f32(), L.out.f32(), w.dy.f32(),
                            grad_of(p + "attn.out.weight"), nullptr, n, D, HD);
    backend_.FastWeightSequenceBackward(attn, w.qkvb[l].f32(), L.favor_proj.f32(), slot_ids,
                                        batch, time, w.initial->View(l), w.dy.f32(),
                                        w.dqkvb.f32(), StateView{}, chunk_size_);
    const std::string qkvb_name =
        p + (c.update == UpdateRule::kDelta ? "attn.qkvb.weight" : "attn.qkv.weight");
    backend_.MatmulBackward(w.dqkvb.f32(), w.xn1[l].f32(), L.qkvb.f32(), dxn,
                            grad_of(qkvb_name), nullptr, n, RW, D);
    backend_.LayerNormBackward(w.x_in[l].f32(), L.attn_norm_w.f32(), dxn, n, D, c.norm_eps, dx,
                               grad_of(p + "attn_norm.weight"), grad_of(p + "attn_norm.bias"));
  }
  backend_.EmbeddingBackward(token_ids, n, dx, D, grad_of("embed.weight"));
  return mean_loss();
}

}  // namespace fwp
