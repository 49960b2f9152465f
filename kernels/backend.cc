#include "kernels/backend.h"

#include <algorithm>
#include <cstdio>
#include <new>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/device.h"

namespace fwp {

std::string ResolveBackendName(const std::string& name) {
  if (name != "auto") return name;
  if (CudaDeviceCount(nullptr) == 0) return "cpu";
  // A GPU the build cannot run on (older than its architectures, or one
  // that cannot start) is no GPU to use: the CPU serves, and says why.
  std::string why;
  if (CudaDeviceRunsThisBuild(0, &why)) return "cuda";
  std::fprintf(stderr, "backend auto: %s; using the CPU\n", why.c_str());
  return "cpu";
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& given) {
  const std::string name = ResolveBackendName(given);
  if (name == "cpu") return MakeCpuBackend();
  if (name == "cuda") return MakeCudaBackend(0);
  int device = 0;
  if (name.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(name.substr(5), &device) && device >= 0) {
    return MakeCudaBackend(device);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", name, "': use auto, cpu, cuda or cuda:N"));
}

absl::StatusOr<void*> Backend::AllocateHost(size_t bytes) {
  void* p = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t{64}, std::nothrow);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
  }
  return p;
}

void Backend::FreeHost(void* ptr) { ::operator delete(ptr, std::align_val_t{64}); }

absl::StatusOr<Buffer> Buffer::Allocate(Backend& backend, size_t bytes) {
  auto ptr = backend.AllocateRaw(bytes);
  if (!ptr.ok()) return ptr.status();
  Buffer buffer;
  buffer.backend_ = &backend;
  buffer.data_ = *ptr;
  buffer.bytes_ = bytes;
  return buffer;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Release();
    backend_ = other.backend_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.backend_ = nullptr;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Buffer::Release() {
  if (backend_ != nullptr && data_ != nullptr) backend_->FreeRaw(data_);
  backend_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

}  // namespace fwp
