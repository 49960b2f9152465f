// Embedding: out[i, :] = table[tokens[i], :] (+ sinusoidal position code).
//
// Positions are absolute token indices within a session, so a session that is
// prefilled in chunks or stepped token by token sees the same codes as one that
// is run whole. The code is the Transformer's: pe[p, 2i] = sin(p / 10000^(2i/d)),
// pe[p, 2i+1] = cos(p / 10000^(2i/d)). Callers validate token ids; the op does
// not check them.
#pragma once

#include <cstdint>

namespace fwp {

// The sinusoidal code's value at position p, feature j of d (both CPU and
// CUDA use this exact expression, computed in double, rounded to float).
double SinusoidalCode(int64_t position, int64_t j, int64_t d);

}  // namespace fwp

namespace fwp::cpu {

// tokens: [n], positions: [n] or null (no position code), table: [vocab, d],
// out: [n, d].
void Embedding(const int32_t* tokens, const int64_t* positions, int64_t n,
               const float* table, int64_t d, float* out);

// dtable[tokens[i], :] += dout[i, :] (positions have no parameters).
void EmbeddingBackward(const int32_t* tokens, int64_t n, const float* dout, int64_t d,
                       float* dtable);

}  // namespace fwp::cpu
