#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/atomic_file.h"
#include "nlohmann/json.hpp"

namespace fwp {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit

struct DTypeEntry {
  DType dtype;
  const char* name;
  int64_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8}, {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2}, {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

const char* DTypeName(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

int64_t DTypeSize(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  float magnitude;
  if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(mant), -24);  // subnormal or 0
  } else if (exp == 31) {
    magnitude = mant ? std::numeric_limits<float>::quiet_NaN()
                     : std::numeric_limits<float>::infinity();
  } else {
    magnitude = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &magnitude, 4);
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

float BFloat16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Bad(path, absl::StrCat("file is ", size,
                                  " bytes, too short for the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat("cannot map ", path, ": ", std::strerror(errno)));
  }
  file->map_ = static_cast<const uint8_t*>(map);
  file->map_size_ = size;

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->map_[i];
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return Bad(path, absl::StrCat("header length ", header_len,
                                  " does not fit in the file (", size,
                                  " bytes): truncated or not safetensors"));
  }
  const char* header_begin = reinterpret_cast<const char*>(file->map_ + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999
    return Bad(path, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) return Bad(path, "header is not a JSON object");
  file->data_ = file->map_ + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Bad(path, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Bad(path, absl::StrCat("__metadata__ value of '", key,
                                        "' is not a string"));
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", name, "'");
    if (!entry.is_object() || !entry.contains("dtype") ||
        !entry.contains("shape") || !entry.contains("data_offsets")) {
      return Bad(path, absl::StrCat(where, " needs dtype, shape and data_offsets"));
    }
    TensorInfo info;
    info.name = name;
    const json& dtype = entry.at("dtype");
    bool known = false;
    for (const auto& e : kDTypes) {
      if (dtype.is_string() && dtype.get<std::string>() == e.name) {
        info.dtype = e.dtype;
        known = true;
      }
    }
    if (!known) return Bad(path, absl::StrCat(where, " has unknown dtype ", dtype.dump()));
    const json& shape = entry.at("shape");
    if (!shape.is_array()) return Bad(path, absl::StrCat(where, " shape is not an array"));
    uint64_t elements = 1;
    for (const json& d : shape) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) {
        return Bad(path, absl::StrCat(where, " has a bad dimension ", d.dump()));
      }
      info.shape.push_back(d.get<int64_t>());
      // Checked before the product, which could otherwise wrap past 2^64.
      const uint64_t n = d.get<uint64_t>();
      if (n != 0 && elements > (uint64_t{1} << 40) / n) {
        return Bad(path, absl::StrCat(where, " of shape ", shape.dump(), " is implausibly large"));
      }
      elements *= n;
    }
    const json& offsets = entry.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2 ||
        !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return Bad(path, absl::StrCat(where, " data_offsets must be [begin, end]"));
    }
    info.begin = offsets[0].get<uint64_t>();
    info.end = offsets[1].get<uint64_t>();
    if (info.end < info.begin) {
      return Bad(path, absl::StrCat(where, " data_offsets end before they begin"));
    }
    const uint64_t need = elements * static_cast<uint64_t>(DTypeSize(info.dtype));
    if (info.end - info.begin != need) {
      return Bad(path, absl::StrCat(where, " of shape ", ShapeString(info.shape),
                                    " and dtype ", DTypeName(info.dtype), " needs ",
                                    need, " bytes but data_offsets span ",
                                    info.end - info.begin));
    }
    if (info.end > data_size) {
      return Bad(path, absl::StrCat(where, " ends at byte ", info.end,
                                    " past the data section (", data_size,
                                    " bytes): the file is truncated"));
    }
    file->tensors_[name] = std::move(info);
  }
  // The data must be covered exactly: sorted by offset, each tensor starts
  // where the previous one ended.
  std::vector<const TensorInfo*> order;
  for (const auto& [name, info] : file->tensors_) order.push_back(&info);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin < b->begin || (a->begin == b->begin && a->end < b->end);
  });
  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* info : order) {
    if (info->begin < cursor) {
      return Bad(path, absl::StrCat("tensors '", previous->name, "' and '",
                                    info->name, "' overlap"));
    }
    if (info->begin > cursor) {
      return Bad(path, absl::StrCat("bytes ", cursor, "..", info->begin,
                                    " before tensor '", info->name,
                                    "' belong to no tensor"));
    }
    cursor = info->end;
    previous = info;
  }
  if (cursor != data_size) {
    return Bad(path, absl::StrCat("the last ", data_size - cursor,
                                  " bytes of data belong to no tensor"));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::Span<const uint8_t> SafetensorsFile::Bytes(const TensorInfo& info) const {
  return absl::Span<const uint8_t>(data_ + info.begin, info.end - info.begin);
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadF32(
    const std::string& name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return Bad(path_, absl::StrCat("no tensor '", name, "'"));
  const int64_t n = info->NumElements();
  const uint8_t* src = data_ + info->begin;
  std::vector<float> out(n);
  switch (info->dtype) {
    case DType::kF32:
      std::memcpy(out.data(), src, n * 4);
      break;
    case DType::kF16:
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = info->dtype == DType::kF16 ? HalfToFloat(h) : BFloat16ToFloat(h);
      }
      break;
    default:
      return Bad(path_, absl::StrCat("tensor '", name, "' has dtype ",
                                     DTypeName(info->dtype),
                                     "; weights must be F32, F16 or BF16"));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(out[i])) {
      return Bad(path_, absl::StrCat("tensor '", name, "' holds a non-finite value (",
                                     out[i], ") at element ", i));
    }
  }
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    int64_t elements = 1;
    for (int64_t d : t.shape) elements *= d;
    const uint64_t bytes = elements * DTypeSize(t.dtype);
    if (bytes != t.bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.name, "' of shape ", ShapeString(t.shape), " needs ",
          bytes, " bytes, given ", t.bytes.size()));
    }
    if (header.contains(t.name)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' given twice"));
    }
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  std::string out;
  out.reserve(8 + text.size() + offset);
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += text;
  for (const TensorToWrite& t : tensors) {
    out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  }
  return WriteFileAtomically(path, out);
}

}  // namespace fwp
