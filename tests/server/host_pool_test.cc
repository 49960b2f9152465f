#include "server/host_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

namespace fwp::server {
namespace {

// Blocks are distinct, aligned, hold their bytes, come back for reuse and
// span several slabs when the tier grows.
TEST(HostStatePool, BlocksAreDistinctAlignedAndReused) {
  auto backend = MakeCpuBackend();
  const size_t bytes = (size_t{3} << 20) + 5;  // 3 MiB + 5: several slabs for 12 blocks
  HostStatePool pool(*backend, bytes);
  std::vector<HostStatePool::Block> blocks;
  std::set<char*> seen;
  for (int i = 0; i < 12; ++i) {
    blocks.push_back(pool.Take());
    char* p = blocks.back().get();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    EXPECT_TRUE(seen.insert(p).second) << "block " << i << " handed out twice";
    std::memset(p, i, bytes);
  }
  for (int i = 0; i < 12; ++i) {
    const char* p = blocks[i].get();
    EXPECT_EQ(p[0], i);
    EXPECT_EQ(p[bytes - 1], i) << "block " << i << " overlaps another";
  }
  EXPECT_GE(pool.slab_bytes(), 12 * bytes);
  const size_t held = pool.slab_bytes();
  char* returned = blocks[3].get();
  blocks[3].reset();
  EXPECT_EQ(pool.Take().get(), returned);  // reused, no new slab
  EXPECT_EQ(pool.slab_bytes(), held);
}

}  // namespace
}  // namespace fwp::server
