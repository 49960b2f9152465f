#include "cli/flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <utility>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"

namespace fwp {

std::vector<std::string> UnderscoreFlagNames(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    for (size_t j = 2; j < a.size() && a[j] != '='; ++j) {
      if (a[j] == '-') a[j] = '_';
    }
  }
  return args;
}

namespace {

// The flag name and "=value" part of a flag argument ("--a=1" → "a", "=1"),
// or an empty name when `arg` is no flag (or is "--" itself).
std::pair<std::string_view, std::string_view> FlagParts(std::string_view arg) {
  const size_t dashes = arg.rfind("--", 0) == 0 ? 2 : arg.rfind("-", 0) == 0 ? 1 : 0;
  if (dashes == 0) return {};
  std::string_view flag = arg.substr(dashes);
  const size_t equals = flag.find('=');
  if (equals == std::string_view::npos) return {flag, {}};
  return {flag.substr(0, equals), flag.substr(equals)};
}

}  // namespace

absl::StatusOr<std::vector<std::string>> RepeatedFlagValues(
    const std::vector<std::string>& args, std::string_view name,
    const std::vector<std::string>& parsed) {
  std::vector<std::string> values;
  auto split = [&](std::string_view list) {
    for (size_t begin = 0;;) {
      const size_t comma = list.find(',', begin);
      std::string_view piece = list.substr(begin, comma - begin);
      if (!piece.empty()) values.emplace_back(piece);
      if (comma == std::string_view::npos) break;
      begin = comma + 1;
    }
  };
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--") break;
    const auto [flag, value] = FlagParts(args[i]);
    if (flag != name) continue;
    if (!value.empty()) {
      split(value.substr(1));
    } else if (i + 1 < args.size()) {
      split(args[++i]);
    }
  }
  std::vector<std::string> last;
  for (const std::string& v : parsed) {
    if (!v.empty()) last.push_back(v);
  }
  if (values.size() < last.size() ||
      !std::equal(last.rbegin(), last.rend(), values.rbegin())) {
    const std::string flag(name);
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, " is given where it cannot be read in order (a --flagfile?): give every "
        "--", flag, " on the command line"));
  }
  return values;
}

bool FlagGiven(const std::vector<std::string>& args, std::string_view name) {
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--") break;
    const std::string_view flag = FlagParts(args[i]).first;
    if (flag == name || (flag.size() == name.size() + 2 && flag.rfind("no", 0) == 0 &&
                         flag.substr(2) == name)) {
      return true;
    }
  }
  return false;
}

bool IsOurFlagFile(std::string_view file) {
  // Flags are named by their source path as compiled; libraries' live under
  // their own include roots.
  return file.find("absl/") == std::string_view::npos &&
         file.find("/usr/") == std::string_view::npos;
}

int RunMain(const char* program, int (*main)(int, char**), int argc, char** argv) {
  try {
    return main(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "%s: out of memory: the model, batch or data does not fit this machine\n",
                 program);
    return 1;
  }
}

std::vector<std::string> ParseFlags(int argc, char** argv, std::string_view usage) {
  absl::FlagsUsageConfig config;
  config.contains_helpshort_flags = [](absl::string_view f) { return IsOurFlagFile(std::string_view(f.data(), f.size())); };
  config.contains_help_flags = [](absl::string_view f) { return IsOurFlagFile(std::string_view(f.data(), f.size())); };
  // "Flags from train/train_main.cc", not the build machine's whole path.
  config.normalize_filename = [](absl::string_view f) {
    if (!IsOurFlagFile(std::string_view(f.data(), f.size()))) return std::string(f);
    const size_t last = f.rfind('/');
    const size_t dir = last == absl::string_view::npos || last == 0 ? absl::string_view::npos
                                                                     : f.rfind('/', last - 1);
    return std::string(dir == absl::string_view::npos ? f : f.substr(dir + 1));
  };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(absl::string_view(usage.data(), usage.size()));
  std::vector<std::string> args = UnderscoreFlagNames(argc, argv);
  std::vector<char*> pointers;
  for (std::string& a : args) pointers.push_back(a.data());
  const std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(pointers.size()), pointers.data());
  if (rest.size() > 1) {
    const std::string program = std::filesystem::path(rest[0]).filename().string();
    std::string words;
    for (size_t i = 1; i < rest.size(); ++i) absl::StrAppend(&words, i > 1 ? " " : "", rest[i]);
    std::fprintf(stderr,
                 "%s: unexpected argument%s '%s': flags are --name=value, and a value with "
                 "spaces needs quotes (--prompt \"The jury said\"); --help lists them\n",
                 program.c_str(), rest.size() > 2 ? "s" : "", words.c_str());
    std::exit(2);
  }
  return std::vector<std::string>(rest.begin(), rest.end());
}

}  // namespace fwp
