// safetensors: read (memory-mapped) and write (atomically) tensor files.
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
//    "__metadata__": {"key": "value", ...}}
// then the data, which the tensors must cover exactly: no overlap, no hole,
// nothing past the end. Every violation is refused with a message naming the
// file, the tensor and what is wrong; nothing here crashes on a bad file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fwp {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

const char* DTypeName(DType dtype);
int64_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;

  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Null when there is no such tensor.
  const TensorInfo* Find(const std::string& name) const;
  // The tensor's bytes as stored (mapped memory; valid while this lives).
  absl::Span<const uint8_t> Bytes(const TensorInfo& info) const;
  // The tensor converted to float32 (from F32, F16 or BF16); a NaN or an
  // infinity is refused with the index of the first one.
  absl::StatusOr<std::vector<float>> ReadF32(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: `bytes` holds NumElements · DTypeSize(dtype) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> bytes;
};

// Writes `path` through a temporary file, fsync and rename, so a reader never
// sees a half-written file. The data section starts 8-byte aligned.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

// IEEE half and bfloat16 → float.
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);

}  // namespace fwp
