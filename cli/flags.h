// The command line of every fwp program.
//
//   int main(int argc, char** argv) {
//     fwp::ParseFlags(argc, argv, "fwp-train: train a model ...");
//
// --help lists the program's own flags (absl's default lists only flags
// defined in a file named after the program, which none of ours is),
// --helpfull every flag, and --some-flag is accepted for --some_flag.
// No program takes positional arguments: one (`--prompt The jury said`
// leaves "jury" and "said") ends the program with a message and status 2.
// The program name is returned.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fwp {

std::vector<std::string> ParseFlags(int argc, char** argv, std::string_view usage);

// argv with "--some-flag[=v]" spelled "--some_flag[=v]"; "--" ends the flags.
std::vector<std::string> UnderscoreFlagNames(int argc, char** argv);

// Every value of a flag that may be given several times (--set a=1 --set
// b=2,c=3; one dash or two, as absl takes), in order, each split at
// commas; `args` is UnderscoreFlagNames' output. absl would keep only the
// last occurrence of a list flag. `parsed` is absl's value of the flag: when
// the occurrences found do not end with it (it came from a --flagfile, say),
// the flag is refused rather than half applied.
absl::StatusOr<std::vector<std::string>> RepeatedFlagValues(
    const std::vector<std::string>& args, std::string_view name,
    const std::vector<std::string>& parsed);

// Whether `args` (UnderscoreFlagNames' output) sets --name (or -name,
// --noname for a bool), before any "--".
bool FlagGiven(const std::vector<std::string>& args, std::string_view name);

// Whether --help shows the flags defined in `file` (ours, not a library's).
bool IsOurFlagFile(std::string_view file);

// main(argc, argv) with the last net under a program's size checks: an
// allocation that still fails (a model, batch or data too big for this
// machine) ends with "<program>: out of memory: ..." and exit 1, not abort().
int RunMain(const char* program, int (*main)(int, char**), int argc, char** argv);

}  // namespace fwp
