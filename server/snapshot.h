// Session snapshots: one session's state on disk, in a versioned binary format.
//
//   offset  size  field (little-endian)
//        0     8  magic "FWPSNAP\0"
//        8     4  version (2; version 1 is still read)
//       12     4  header bytes (64)
//       16     8  model fingerprint (ModelFingerprint of the serving model)
//       24     8  position: tokens fed into the state
//       32     8  state bytes (the model's slot size)
//       40     4  pending tokens (seen but not yet fed: usually 1, the last)
//       44     4  owner bytes (the bearer-token name that created it; may be 0)
//       48     4  CRC-32 (zlib) of the header's other bytes and everything
//                 after it (version 1: only what follows the header)
//       52    12  reserved, zero
//       64        session id (32 ASCII hex digits), pending ids (int32 each),
//                 owner, then the raw state (float32, StateLayout order)
//
// Written through WriteFileAtomically (temporary file, fsync, rename), so a
// crash never leaves a torn snapshot. Reading checks every field and the
// checksum and names what is wrong: another model's snapshot, a truncated or
// corrupt file, a file renamed to another session's name.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fwp::server {

struct SessionSnapshot {
  std::string session_id;
  std::string owner;
  int64_t position = 0;
  std::vector<int32_t> pending;
  std::vector<char> state;
};

inline constexpr char kSnapshotSuffix[] = ".fwps";
// The most pending tokens a snapshot holds.
inline constexpr uint32_t kMaxSnapshotPending = 1u << 24;

// A 64-bit fingerprint (FNV-1a) of a model directory's config.json and
// model.safetensors bytes: snapshots carry it, so a state is never loaded
// into a model it was not made by.
absl::StatusOr<uint64_t> ModelFingerprint(const std::string& model_dir);

std::string EncodeSnapshot(const SessionSnapshot& snapshot, uint64_t fingerprint);
// `expected_id` empty: any id; `state_bytes`: the serving model's slot size.
absl::StatusOr<SessionSnapshot> DecodeSnapshot(const std::string& bytes,
                                               uint64_t fingerprint,
                                               int64_t state_bytes,
                                               const std::string& expected_id);

absl::Status WriteSnapshot(const std::string& path, const SessionSnapshot& snapshot,
                           uint64_t fingerprint);
// A file's identity: another write (a new file renamed over it) or a touch
// changes it.
struct FileId {
  uint64_t device = 0, inode = 0;
  int64_t ctime_ns = 0, size = 0;
  bool operator==(const FileId&) const = default;
};
std::optional<FileId> StatFile(const std::string& path);

// `file` (may be null): the identity of the file the bytes were read from.
absl::StatusOr<SessionSnapshot> ReadSnapshot(const std::string& path,
                                             uint64_t fingerprint, int64_t state_bytes,
                                             const std::string& expected_id,
                                             FileId* file = nullptr);

}  // namespace fwp::server
