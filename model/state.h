// State: the constant-size memory of a session, and a pool of state slots.
//
// One slot holds, contiguously (float32):
//   S  [layers, heads, d_φ, d_head]   the fast weights, transposed (Wᵀ)
//   z  [layers, heads, d_φ]           sum rule with the attention normaliser only
// so that a whole session moves between devices, host memory and disk as one
// block of slot_bytes(). A pool lives in one backend's memory; which slot
// belongs to which session is the caller's business. Positions (tokens seen)
// are kept on the host beside the slots.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"

namespace fwp {

struct StateLayout {
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t d_phi = 0;
  int64_t d_head = 0;
  bool normalizer = false;

  static StateLayout For(const Config& config);

  int64_t SFloatsPerLayer() const { return heads * d_phi * d_head; }
  int64_t ZFloatsPerLayer() const { return normalizer ? heads * d_phi : 0; }
  int64_t SlotFloats() const {
    return layers * (SFloatsPerLayer() + ZFloatsPerLayer());
  }
  int64_t SlotBytes() const { return SlotFloats() * 4; }
};

class StatePool {
 public:
  // Zero-initialised slots, each at position 0.
  static absl::StatusOr<std::unique_ptr<StatePool>> Create(Backend& backend,
                                                           const StateLayout& layout,
                                                           int32_t capacity);
  StatePool(const StatePool&) = delete;
  StatePool& operator=(const StatePool&) = delete;

  const StateLayout& layout() const { return layout_; }
  int32_t capacity() const { return capacity_; }
  int64_t slot_bytes() const { return layout_.SlotBytes(); }

  // Where layer `layer`'s memory lives, for the fast-weight ops.
  StateView View(int64_t layer) const;

  // Empties a slot: zero memory, position 0.
  void Reset(int32_t slot);
  int64_t position(int32_t slot) const { return positions_[slot]; }
  void Advance(int32_t slot, int64_t tokens) { positions_[slot] += tokens; }

  // Whole-slot copies: to and from host memory (slot_bytes() each) and
  // between slots (a fork).
  void CopyToHost(int32_t slot, void* host) const;
  void CopyFromHost(int32_t slot, const void* host, int64_t position);
  void CopySlot(int32_t dst, int32_t src);
  // Every slot and position of `src`, a pool of the same layout and capacity.
  void CopyAllFrom(const StatePool& src);

 private:
  StatePool(Backend& backend, const StateLayout& layout, int32_t capacity,
            Buffer memory);
  float* SlotData(int32_t slot) const {
    return memory_.f32() + static_cast<int64_t>(slot) * layout_.SlotFloats();
  }

  Backend& backend_;
  StateLayout layout_;
  int32_t capacity_;
  Buffer memory_;  // [capacity, SlotFloats()]
  std::vector<int64_t> positions_;
};

}  // namespace fwp
