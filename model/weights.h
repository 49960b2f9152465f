// Weights: the named tensors of a model, their expected shapes, reading them
// from safetensors, writing them, and seeded random initialisation.
// model/README.md documents the names.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace fwp {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor a model with `config` has, in file order.
std::vector<TensorSpec> ExpectedTensors(const Config& config);

// float32 host copies, by name.
using HostWeights = std::map<std::string, std::vector<float>>;

// Reads every expected tensor (F32, F16 or BF16) and checks that nothing is
// missing, misshapen, non-finite or left over.
absl::StatusOr<HostWeights> ReadWeights(const SafetensorsFile& file,
                                        const Config& config);

// Writes the weights as F32 safetensors (atomically), with `metadata` beside
// the format's own (a checkpoint's "step").
absl::Status WriteWeights(const std::string& path, const Config& config,
                          const HostWeights& weights,
                          const std::map<std::string, std::string>& metadata = {});

// Seeded random weights: matrices N(0, init_std²) (output projections scaled
// by 1/√(2·layers)), LayerNorm γ = 1, biases 0, FAVOR projections orthogonal
// random from the config's favor seed.
HostWeights RandomWeights(const Config& config, uint64_t seed,
                          float init_std = 0.02f);

// FAVOR+ projection Ω [m, d]: blocks of d orthonormal rows (Gram-Schmidt on
// Gaussian rows), each row scaled by the norm of an independent Gaussian
// vector, so rows are marginally Gaussian but mutually orthogonal per block.
std::vector<float> OrthogonalRandomFeatures(int64_t m, int64_t d, uint64_t seed);

}  // namespace fwp
