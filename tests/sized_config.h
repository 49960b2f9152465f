// The tests' small models: a config of the given sizes, everything else at
// Config's defaults (delta rule, DPFP ν=1, tied embeddings, no positions).
#pragma once

#include <cstdint>

#include "model/config.h"

namespace fwp::testing {

inline Config SizedConfig(int64_t vocab, int64_t d_model, int64_t layers, int64_t heads,
                          int64_t d_head, int64_t d_ff) {
  Config c;
  c.vocab_size = vocab;
  c.d_model = d_model;
  c.n_layers = layers;
  c.n_heads = heads;
  c.d_head = d_head;
  c.d_ff = d_ff;
  return c;
}

}  // namespace fwp::testing
