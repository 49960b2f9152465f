// The host tier's memory: fixed-size blocks (one session state each) of the
// backend's host memory, page-locked on a GPU so that evicting a session to
// the host and bringing it back run at the copy engines' full speed. Slabs
// are allocated as the tier grows and kept until the pool goes; where pinned
// memory runs out, slabs of ordinary memory take over. Engine thread only.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "kernels/backend.h"

namespace fwp::server {

class HostStatePool {
 public:
  struct Return {
    HostStatePool* pool = nullptr;
    void operator()(char* block) const { pool->Give(block); }
  };
  // A block of block_bytes; null holds nothing.
  using Block = std::unique_ptr<char, Return>;

  HostStatePool(Backend& backend, size_t block_bytes);
  ~HostStatePool();
  HostStatePool(const HostStatePool&) = delete;
  HostStatePool& operator=(const HostStatePool&) = delete;

  Block Take();
  size_t block_bytes() const { return block_bytes_; }
  // Bytes held in slabs, and how many of them are page-locked.
  size_t slab_bytes() const { return slab_bytes_; }
  size_t pinned_bytes() const { return pinned_bytes_; }

 private:
  void Give(char* block);

  struct Slab {
    void* base;
    bool pinned;
  };
  Backend& backend_;
  size_t block_bytes_;   // as asked
  size_t stride_;        // rounded up to 64 bytes
  size_t per_slab_;
  std::vector<Slab> slabs_;
  std::vector<char*> free_;
  size_t slab_bytes_ = 0, pinned_bytes_ = 0;
};

}  // namespace fwp::server
