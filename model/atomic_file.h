// Whole-file writes that a crash cannot tear: the bytes go to a temporary file
// in the same directory, which is fsynced and renamed over `path`, and the
// directory is fsynced so the rename itself is durable.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace fwp {

absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes);

}  // namespace fwp
