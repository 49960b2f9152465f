// Whole files: writes that a crash cannot tear (the bytes go to a temporary
// file in the same directory, which is fsynced and renamed over `path`, and
// the directory is fsynced so the rename itself is durable), and reads.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fwp {

absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes);

// fsyncs the directory `dir` (empty: the current one), so that the renames
// and creations in it so far survive a crash.
absl::Status SyncDirectory(const std::string& dir);

// The bytes of a file: NotFound when it cannot be opened, Internal when it
// cannot be read to its end.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace fwp
