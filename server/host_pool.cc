#include "server/host_pool.h"

#include <algorithm>
#include <new>

namespace fwp::server {

namespace {
constexpr size_t kSlabTarget = size_t{16} << 20;  // about 16 MiB per slab
constexpr size_t kAlign = 64;
}  // namespace

HostStatePool::HostStatePool(Backend& backend, size_t block_bytes)
    : backend_(backend),
      block_bytes_(block_bytes),
      stride_(std::max<size_t>(kAlign, (block_bytes + kAlign - 1) / kAlign * kAlign)),
      per_slab_(std::max<size_t>(1, kSlabTarget / stride_)) {}

HostStatePool::~HostStatePool() {
  for (const Slab& slab : slabs_) {
    if (slab.pinned) {
      backend_.FreeHost(slab.base);
    } else {
      ::operator delete(slab.base, std::align_val_t{kAlign});
    }
  }
}

HostStatePool::Block HostStatePool::Take() {
  if (free_.empty()) {
    const size_t bytes = per_slab_ * stride_;
    Slab slab{nullptr, true};
    if (auto pinned = backend_.AllocateHost(bytes); pinned.ok()) {
      slab.base = *pinned;
      pinned_bytes_ += bytes;
    } else {
      slab.base = ::operator new(bytes, std::align_val_t{kAlign});
      slab.pinned = false;
    }
    slabs_.push_back(slab);
    slab_bytes_ += bytes;
    auto* base = static_cast<char*>(slab.base);
    for (size_t i = per_slab_; i-- > 0;) free_.push_back(base + i * stride_);
  }
  char* block = free_.back();
  free_.pop_back();
  return Block(block, Return{this});
}

void HostStatePool::Give(char* block) {
  if (block != nullptr) free_.push_back(block);
}

}  // namespace fwp::server
