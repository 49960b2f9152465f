#include "model/atomic_file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace fwp {

namespace {

// A name no other writer uses: processes sharing a directory may have the
// same pid (each container's first process is 1), and threads of one
// process may write the same path.
std::string TemporaryName(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  uint64_t salt = 0;
  if (::getrandom(&salt, sizeof salt, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof salt)) {
    salt = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  return absl::StrCat(path, ".tmp.", ::getpid(), ".",
                      absl::Hex(salt ^ counter.fetch_add(1), absl::kZeroPad16));
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes) {
  const std::string tmp = TemporaryName(path);
  auto fail = [&](const char* what) {
    std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot ", what, " ", path, ": ", why));
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {  // (nothing of ours to remove)
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return fail("write");
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return fail("fsync");
  }
  if (::close(fd) != 0) return fail("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename");
  return SyncDirectory(std::filesystem::path(path).parent_path().string());
}

absl::Status SyncDirectory(const std::string& dir) {
  const std::string name = dir.empty() ? std::string(".") : dir;
  int fd = ::open(name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  // Some file systems cannot open or fsync a directory (EINVAL); their
  // renames are as durable as they get.
  if (fd < 0) return absl::OkStatus();
  const bool synced = ::fsync(fd) == 0 || errno == EINVAL;
  const std::string why = std::strerror(errno);
  ::close(fd);
  if (!synced) return absl::InternalError(absl::StrCat("cannot fsync ", name, ": ", why));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string bytes(std::istreambuf_iterator<char>(in), {});
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path, " to its end"));
  return bytes;
}

}  // namespace fwp
