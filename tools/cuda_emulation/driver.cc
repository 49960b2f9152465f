// tools/cuda_emulation driver: fast_weight.cu emulated on the CPU against the CPU reference.
#include "kernels/cuda_common.cuh"
#include FAST_WEIGHT_INC
#include <fstream>
#include <string>

#include "tools/cuda_emulation/check.h"

using namespace fwp;
using emulation::Check;
using emulation::failures;
using testing::RandomVector;

struct Buf {  // a "device" buffer with NaN-free guard
  std::vector<float> v; size_t n; static constexpr size_t G = 1024;
  explicit Buf(size_t n_, float fill = std::numeric_limits<float>::quiet_NaN()) : v(n_ + 2 * G, -9876.5f), n(n_) {
    std::fill(v.begin() + G, v.begin() + G + n, fill);
  }
  explicit Buf(const std::vector<float>& h) : Buf(h.size()) { std::copy(h.begin(), h.end(), v.begin() + G); }
  float* p() { return v.data() + G; }
  std::vector<float> host() const { return std::vector<float>(v.begin() + G, v.begin() + G + n); }
  bool guards_ok() const {
    for (size_t i = 0; i < G; ++i) if (!(v[i] == -9876.5f) || !(v[G + n + i] == -9876.5f)) return false;
    return true;
  }
};

int main(int argc, char** argv) {
  // args: rule(d/s) norm(0/1) kind(dpfp/elu/relu/id/favor) nu d_head d_value heads batch time chunk limit_bytes order block_order dumpfile
  FastWeightSpec spec;
  spec.update = argv[1][0] == 'd' ? UpdateRule::kDelta : UpdateRule::kSum;
  spec.attention_normalizer = atoi(argv[2]);
  std::string kind = argv[3];
  spec.phi.kind = kind == "dpfp" ? FeatureMapKind::kDpfp : kind == "elu" ? FeatureMapKind::kElu1 : kind == "relu" ? FeatureMapKind::kRelu : kind == "id" ? FeatureMapKind::kIdentity : FeatureMapKind::kFavor;
  spec.phi.nu = atoi(argv[4]);
  if (kind == "favor") spec.phi.favor_features = atoi(argv[4]);
  spec.phi.sum_norm = kind != "id" && !getenv("EMU_NOSUMNORM");
  spec.d_head = atoi(argv[5]);
  spec.d_value = atoi(argv[6]);
  spec.heads = atoi(argv[7]);
  spec.scale = 1.0f;
  const int64_t batch = atoi(argv[8]), time = atoi(argv[9]), chunk = atoi(argv[10]);
  emu::g_shared_limit_bytes = atol(argv[11]);
  emu::order_mode = atoi(argv[12]);
  emu::block_order_mode = atoi(argv[13]);
  const char* dump = argc > 14 ? argv[14] : nullptr;

  const int64_t dp = spec.DPhi(), dv = spec.DValue();
  const int64_t s_floats = spec.heads * dp * dv, z_floats = spec.HasNormalizer() ? spec.heads * dp : 0;
  const int64_t slot_floats = s_floats + z_floats, pool = 2 * batch + 1;
  std::vector<int32_t> slots(batch);
  for (int64_t i = 0; i < batch; ++i) slots[i] = 2 * (batch - i);
  Rng g(7);
  auto initial = RandomVector(pool * slot_floats, g, 0.1);
  for (int64_t s = 0; s < pool; ++s) for (int64_t i = s_floats; i < slot_floats; ++i) initial[s * slot_floats + i] = std::abs(initial[s * slot_floats + i]);
  if (getenv("EMU_ZERO_STATE")) std::fill(initial.begin(), initial.end(), 0.0f);
  auto qkvb = RandomVector(batch * time * spec.RowWidth(), g, 0.3);
  auto omega = RandomVector(std::max<int64_t>(1, spec.phi.favor_features * spec.d_head), g, 0.5);
  const int64_t ny = batch * time * spec.heads * dv;
  auto dy = RandomVector(ny, g);
  auto dfinal = RandomVector(pool * slot_floats, g);
  StateView view{nullptr, slot_floats, 0, s_floats};
  auto V = [&](float* b) { StateView v = view; v.base = b; return v; };

  std::vector<float> state = initial, y(ny);
  cpu::FastWeightSequence(spec, qkvb.data(), omega.data(), slots.data(), batch, time, V(state.data()), y.data(), 64);
  std::vector<float> dq(qkvb.size()), dstate = dfinal;
  cpu::FastWeightSequenceBackward(spec, qkvb.data(), omega.data(), slots.data(), batch, time, V(initial.data()), dy.data(), dq.data(), V(dstate.data()), chunk);

  const char* why = "";
  if (!cuda::FastWeightSupported(spec, &why)) { printf("FAIL unsupported: %s\n", why); return 1; }
  { auto f = cuda::PickShape(spec, false), b = cuda::PickShape(spec, true);
    auto c = cuda::PickChunkShape(spec, chunk, time), cb = cuda::PickChunkBackwardShape(spec, chunk, time);
    printf("dp=%ld dv=%ld fwd tw=%d tiles=%d | chunkwise fwd C=%d tw=%d tiles=%d | bwd tw=%d tiles=%d chunkwise C=%d tw=%d tiles=%d\n", (long)dp, (long)dv, f.tw, f.tiles, c.chunk, c.s.tw, c.s.tiles, b.tw, b.tiles, cb.chunk, cb.s.tw, cb.s.tiles); }
  Buf gstate(initial), gq(qkvb), gom(omega), gy(ny);
  std::vector<int32_t> gslots = slots;
  cuda::FastWeightSequence(nullptr, spec, gq.p(), gom.p(), gslots.data(), batch, time, V(gstate.p()), gy.p(), chunk);
  auto hy = gy.host(), hs = gstate.host();
  Check("y", hy, y);
  Check("final state", hs, state);
  for (int64_t u = 0; u < pool; ++u) {
    if (std::find(slots.begin(), slots.end(), u) != slots.end()) continue;
    if (memcmp(hs.data() + u * slot_floats, initial.data() + u * slot_floats, slot_floats * 4)) { printf("FAIL untouched slot %ld changed\n", (long)u); ++failures; }
  }
  Buf ginit(initial), gdq(qkvb.size()), gdstate(dfinal), gdy(dy);
  Buf scratch(cuda::FastWeightBackwardScratch(spec, batch, time, chunk));
  cuda::FastWeightSequenceBackward(nullptr, spec, gq.p(), gom.p(), gslots.data(), batch, time, V(ginit.p()), gdy.p(), gdq.p(), V(gdstate.p()), chunk, scratch.p());
  auto hdq = gdq.host(), hds = gdstate.host();
  Check("dqkvb", hdq, dq);
  Check("dstate", hds, dstate);
  // Without dstate (base null).
  Buf gdq2(qkvb.size()), scratch2(cuda::FastWeightBackwardScratch(spec, batch, time, chunk));
  std::vector<float> dq2(qkvb.size());
  cpu::FastWeightSequenceBackward(spec, qkvb.data(), omega.data(), slots.data(), batch, time, V(initial.data()), dy.data(), dq2.data(), StateView{}, chunk);
  cuda::FastWeightSequenceBackward(nullptr, spec, gq.p(), gom.p(), gslots.data(), batch, time, V(ginit.p()), gdy.p(), gdq2.p(), StateView{}, chunk, scratch2.p());
  auto hdq2 = gdq2.host();
  Check("dqkvb without dstate", hdq2, dq2);
  bool ok = gstate.guards_ok() && gy.guards_ok() && gdq.guards_ok() && gdstate.guards_ok() && scratch.guards_ok() && gdq2.guards_ok() && scratch2.guards_ok() && ginit.guards_ok();
  if (!ok) { printf("FAIL a write outside a buffer (guard zone changed)\n"); ++failures; }
  if (ginit.host() != initial) { printf("FAIL the backward changed the initial state\n"); ++failures; }
  printf("barrier phases %ld\n", emu::total_syncs);
  if (dump) {
    std::ofstream f(dump, std::ios::binary);
    for (auto* v : {&hy, &hs, &hdq, &hds, &hdq2}) f.write((const char*)v->data(), v->size() * 4);
  }
  return failures ? 1 : 0;
}
