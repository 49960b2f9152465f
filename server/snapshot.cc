#include "server/snapshot.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>

#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/atomic_file.h"
#include "model/hash.h"

namespace fwp::server {
namespace {

constexpr char kMagic[8] = {'F', 'W', 'P', 'S', 'N', 'A', 'P', '\0'};
// Version 2's checksum covers the header too (but its own field); version
// 1's, still read, covers only what follows the header.
constexpr uint32_t kVersion = 2;
constexpr uint32_t kHeaderBytes = 64;
constexpr size_t kIdBytes = 32;
// Bounds on the header's counts: what no session reaches (2^48 tokens fed),
// and what a snapshot may hold besides its state.
constexpr int64_t kMaxPosition = int64_t{1} << 48;
constexpr uint32_t kMaxPending = kMaxSnapshotPending;
constexpr uint32_t kMaxOwnerBytes = 4096;

template <typename T>
void Put(std::string& out, size_t offset, T value) {
  std::memcpy(out.data() + offset, &value, sizeof(T));
}
template <typename T>
T Get(const std::string& in, size_t offset) {
  T value;
  std::memcpy(&value, in.data() + offset, sizeof(T));
  return value;
}

uint32_t Crc32(const char* data, size_t size, uLong crc = crc32(0L, Z_NULL, 0)) {
  while (size > 0) {  // zlib takes uInt lengths
    const uInt piece = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data), piece);
    data += piece;
    size -= piece;
  }
  return static_cast<uint32_t>(crc);
}

// The checksum of a snapshot `in` of `version` (its payload: the bytes
// after the header).
uint32_t SnapshotCrc(const std::string& in, uint32_t version) {
  const size_t payload = in.size() - kHeaderBytes;
  if (version == 1) return Crc32(in.data() + kHeaderBytes, payload);
  uint32_t crc = Crc32(in.data(), 48);                  // up to the checksum field
  crc = Crc32(in.data() + 52, kHeaderBytes - 52, crc);  // past it: reserved
  return Crc32(in.data() + kHeaderBytes, payload, crc);
}

// A snapshot file's bytes. The engine thread reads it, so what is not a
// snapshot must not stall it: a FIFO (opened without blocking) or a
// directory is refused, as is a file larger than any snapshot of this model
// before it is read.
FileId Identity(const struct stat& st) {
  return FileId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec,
                static_cast<int64_t>(st.st_size)};
}

absl::StatusOr<std::string> ReadSnapshotFile(const std::string& path, int64_t state_bytes,
                                             FileId* file) {
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string why = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    // Not a verdict on the file (EACCES, EMFILE, EIO): what reads it may try
    // again, and must not take it for corrupt (DeleteSession removes those).
    return err == ENOENT ? absl::NotFoundError(why) : absl::UnavailableError(why);
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { close(fd); }
  } closer{fd};
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::DataLossError(absl::StrCat(path, ": not a regular file"));
  }
  if (file != nullptr) *file = Identity(st);  // of the bytes read (no other stat's race)
  const int64_t most = kHeaderBytes + kIdBytes + int64_t{4} * kMaxPending + kMaxOwnerBytes +
                       std::max<int64_t>(state_bytes, 0);
  if (st.st_size > most) {
    return absl::DataLossError(absl::StrCat(path, ": ", st.st_size,
                                            " bytes, more than a snapshot of this model can "
                                            "hold (at most ", most, ")"));
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::UnavailableError(absl::StrCat(path, ": read error: ", std::strerror(errno)));
    }
    if (n == 0) break;  // shrank while read: the decoder names the short file
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return bytes;
}

}  // namespace

absl::StatusOr<uint64_t> ModelFingerprint(const std::string& model_dir) {
  // FNV-1a over both files' bytes, read a piece at a time: a model's weights
  // are never held twice in memory to hash them.
  uint64_t hash = kFnv1aSeed;
  std::vector<char> piece(1 << 20);
  for (const char* name : {"config.json", "model.safetensors"}) {
    const std::string path = absl::StrCat(model_dir, "/", name);
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
    while (in) {
      in.read(piece.data(), static_cast<std::streamsize>(piece.size()));
      hash = Fnv1a(hash, piece.data(), static_cast<size_t>(in.gcount()));
    }
    if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
    const unsigned char separator = 0xff;  // between the files
    hash = Fnv1a(hash, &separator, 1);
  }
  return hash;
}

std::string EncodeSnapshot(const SessionSnapshot& s, uint64_t fingerprint) {
  const size_t payload = kIdBytes + s.pending.size() * 4 + s.owner.size() + s.state.size();
  std::string out(kHeaderBytes + payload, '\0');
  std::memcpy(out.data(), kMagic, 8);
  Put<uint32_t>(out, 8, kVersion);
  Put<uint32_t>(out, 12, kHeaderBytes);
  Put<uint64_t>(out, 16, fingerprint);
  Put<int64_t>(out, 24, s.position);
  Put<int64_t>(out, 32, static_cast<int64_t>(s.state.size()));
  Put<uint32_t>(out, 40, static_cast<uint32_t>(s.pending.size()));
  Put<uint32_t>(out, 44, static_cast<uint32_t>(s.owner.size()));
  size_t at = kHeaderBytes;
  std::string id = s.session_id;
  id.resize(kIdBytes, '\0');
  std::memcpy(out.data() + at, id.data(), kIdBytes);
  at += kIdBytes;
  if (!s.pending.empty()) std::memcpy(out.data() + at, s.pending.data(), s.pending.size() * 4);
  at += s.pending.size() * 4;
  std::memcpy(out.data() + at, s.owner.data(), s.owner.size());
  at += s.owner.size();
  if (!s.state.empty()) std::memcpy(out.data() + at, s.state.data(), s.state.size());
  Put<uint32_t>(out, 48, SnapshotCrc(out, kVersion));
  return out;
}

absl::StatusOr<SessionSnapshot> DecodeSnapshot(const std::string& in, uint64_t fingerprint,
                                               int64_t state_bytes,
                                               const std::string& expected_id) {
  if (in.size() < kHeaderBytes || std::memcmp(in.data(), kMagic, 8) != 0) {
    return absl::DataLossError("not an fwp session snapshot (bad magic)");
  }
  const uint32_t version = Get<uint32_t>(in, 8);
  if (version != kVersion && version != 1) {
    return absl::DataLossError(
        absl::StrCat("snapshot version ", version, " is not supported (this server reads ",
                     kVersion, ")"));
  }
  if (Get<uint32_t>(in, 12) != kHeaderBytes) {
    return absl::DataLossError("snapshot header size is wrong");
  }
  const uint64_t file_fingerprint = Get<uint64_t>(in, 16);
  if (file_fingerprint != fingerprint) {
    return absl::DataLossError(absl::StrCat(
        "snapshot was made by another model (fingerprint ", absl::Hex(file_fingerprint),
        ", serving ", absl::Hex(fingerprint), ")"));
  }
  SessionSnapshot s;
  s.position = Get<int64_t>(in, 24);
  const int64_t bytes = Get<int64_t>(in, 32);
  const uint32_t pending = Get<uint32_t>(in, 40);
  const uint32_t owner = Get<uint32_t>(in, 44);
  if (bytes != state_bytes) {
    return absl::DataLossError(absl::StrCat("snapshot holds a state of ", bytes,
                                            " bytes; this model's is ", state_bytes));
  }
  if (s.position < 0 || s.position > kMaxPosition || pending > kMaxPending ||
      owner > kMaxOwnerBytes) {
    return absl::DataLossError("snapshot header fields are out of range");
  }
  const size_t payload = kIdBytes + size_t{pending} * 4 + owner + static_cast<size_t>(bytes);
  if (in.size() != kHeaderBytes + payload) {
    return absl::DataLossError(absl::StrCat("snapshot is ", in.size(), " bytes; its header says ",
                                            kHeaderBytes + payload, " (truncated or padded)"));
  }
  if (SnapshotCrc(in, version) != Get<uint32_t>(in, 48)) {
    return absl::DataLossError("snapshot checksum mismatch (the file is corrupt)");
  }
  size_t at = kHeaderBytes;
  s.session_id.assign(in.data() + at, strnlen(in.data() + at, kIdBytes));
  at += kIdBytes;
  if (!expected_id.empty() && s.session_id != expected_id) {
    return absl::DataLossError(absl::StrCat("snapshot holds session ", s.session_id,
                                            ", not ", expected_id));
  }
  s.pending.resize(pending);
  if (pending > 0) std::memcpy(s.pending.data(), in.data() + at, size_t{pending} * 4);
  at += size_t{pending} * 4;
  s.owner.assign(in.data() + at, owner);
  at += owner;
  s.state.assign(in.data() + at, in.data() + at + bytes);
  return s;
}

absl::Status WriteSnapshot(const std::string& path, const SessionSnapshot& snapshot,
                           uint64_t fingerprint) {
  return WriteFileAtomically(path, EncodeSnapshot(snapshot, fingerprint));
}

absl::StatusOr<SessionSnapshot> ReadSnapshot(const std::string& path, uint64_t fingerprint,
                                             int64_t state_bytes,
                                             const std::string& expected_id, FileId* file) {
  auto bytes = ReadSnapshotFile(path, state_bytes, file);
  if (!bytes.ok()) return bytes.status();
  auto snapshot = DecodeSnapshot(*bytes, fingerprint, state_bytes, expected_id);
  if (!snapshot.ok()) {
    return absl::Status(snapshot.status().code(),
                        absl::StrCat(path, ": ", snapshot.status().message()));
  }
  return snapshot;
}

std::optional<FileId> StatFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return Identity(st);
}

}  // namespace fwp::server
