#include "cli/flags.h"

#include <gtest/gtest.h>

namespace fwp {
namespace {

TEST(Flags, DashedFlagNamesAreUnderscoredAndNothingElse) {
  const char* argv[] = {"fwp-x",        "--max-steps=10", "--phi", "dpfp-2",   "-v-x",
                        "--out=a-b/c-d", "plain-word",     "--",    "--not-me"};
  std::vector<char*> args;
  for (const char* a : argv) args.push_back(const_cast<char*>(a));
  const auto got = UnderscoreFlagNames(static_cast<int>(args.size()), args.data());
  const std::vector<std::string> want = {"fwp-x", "--max_steps=10", "--phi",   "dpfp-2",  "-v-x",
                                         "--out=a-b/c-d", "plain-word", "--", "--not-me"};
  EXPECT_EQ(got, want);
}

TEST(Flags, RepeatedFlagValuesKeepsEveryOccurrenceInOrder) {
  // Both spellings, lists split at commas, an empty --set= adds nothing, a
  // longer flag name is another flag, and "--" ends the flags.
  const std::vector<std::string> args = {"fwp-x", "--set=a=1,b=2", "--setx=no", "--set", "c=3",
                                         "--set=", "--", "--set=d=4"};
  const std::vector<std::string> want = {"a=1", "b=2", "c=3"};
  EXPECT_EQ(RepeatedFlagValues(args, "set"), want);
  EXPECT_TRUE(RepeatedFlagValues({"fwp-x", "--sets=a=1"}, "set").empty());
}

TEST(Flags, HelpShowsOurFilesNotTheLibraries) {
  EXPECT_TRUE(IsOurFlagFile("work/main/train/retrieval_main.cc"));
  EXPECT_TRUE(IsOurFlagFile("/src/fwp/clients/client_common.cc"));
  EXPECT_FALSE(IsOurFlagFile("absl/flags/parse.cc"));
  EXPECT_FALSE(IsOurFlagFile("/usr/include/absl/log/flags.cc"));
}

}  // namespace
}  // namespace fwp
