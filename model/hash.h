// FNV-1a, 64 bits: the fingerprints of model files (server snapshots) and of
// token files (a resumed training run), which only have to tell files apart.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fwp {

inline constexpr uint64_t kFnv1aSeed = 0xcbf29ce484222325ull;

// `hash` continued over `size` bytes at `data`.
inline uint64_t Fnv1a(uint64_t hash, const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) hash = (hash ^ bytes[i]) * 0x100000001b3ull;
  return hash;
}

}  // namespace fwp
