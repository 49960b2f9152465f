#include "model/state.h"

#include "absl/strings/str_cat.h"

namespace fwp {

StateLayout StateLayout::For(const Config& config) {
  const FastWeightSpec spec = config.Attention();
  StateLayout layout;
  layout.layers = config.n_layers;
  layout.heads = config.n_heads;
  layout.d_phi = spec.DPhi();
  layout.d_head = config.d_head;
  layout.normalizer = spec.HasNormalizer();
  return layout;
}

absl::StatusOr<std::unique_ptr<StatePool>> StatePool::Create(
    Backend& backend, const StateLayout& layout, int32_t capacity) {
  if (capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("state pool capacity must be positive, got ", capacity));
  }
  if (layout.SlotBytes() <= 0 ||
      static_cast<uint64_t>(capacity) > (uint64_t{1} << 62) / static_cast<uint64_t>(layout.SlotBytes())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a state pool of ", capacity, " slots of ", layout.SlotBytes(), " bytes is too large"));
  }
  const size_t bytes = static_cast<size_t>(capacity) * layout.SlotBytes();
  auto memory = Buffer::Allocate(backend, bytes);
  if (!memory.ok()) return memory.status();
  backend.Zero(memory->data(), bytes);
  return std::unique_ptr<StatePool>(
      new StatePool(backend, layout, capacity, std::move(*memory)));
}

StatePool::StatePool(Backend& backend, const StateLayout& layout,
                     int32_t capacity, Buffer memory)
    : backend_(backend),
      layout_(layout),
      capacity_(capacity),
      memory_(std::move(memory)),
      positions_(capacity, 0) {}

StateView StatePool::View(int64_t layer) const {
  StateView view;
  view.base = memory_.f32();
  view.slot_floats = layout_.SlotFloats();
  view.s_offset = layer * layout_.SFloatsPerLayer();
  view.z_offset = layout_.layers * layout_.SFloatsPerLayer() +
                  layer * layout_.ZFloatsPerLayer();
  return view;
}

void StatePool::Reset(int32_t slot) {
  backend_.Zero(SlotData(slot), slot_bytes());
  positions_[slot] = 0;
}

void StatePool::CopyToHost(int32_t slot, void* host) const {
  backend_.CopyToHost(host, SlotData(slot), slot_bytes());
}

void StatePool::CopyFromHost(int32_t slot, const void* host, int64_t position) {
  backend_.CopyToDevice(SlotData(slot), host, slot_bytes());
  positions_[slot] = position;
}

void StatePool::CopyAllFrom(const StatePool& src) {
  backend_.CopyOnDevice(memory_.data(), src.memory_.data(), memory_.bytes());
  positions_ = src.positions_;
}

void StatePool::CopySlot(int32_t dst, int32_t src) {
  backend_.CopyOnDevice(SlotData(dst), SlotData(src), slot_bytes());
  positions_[dst] = positions_[src];
}

}  // namespace fwp
