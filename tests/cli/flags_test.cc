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
  // Both spellings with one dash or two, lists split at commas, an empty
  // --set= adds nothing, a longer flag name is another flag, "--" ends the
  // flags; absl's value of the flag (its last occurrence) ends the list.
  const std::vector<std::string> args = {"fwp-x", "--set=a=1,b=2", "--setx=no", "-set", "c=3",
                                         "--set=",  "-set=d=4",     "--",        "--set=e=5"};
  const std::vector<std::string> want = {"a=1", "b=2", "c=3", "d=4"};
  auto got = RepeatedFlagValues(args, "set", {"d=4"});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  auto none = RepeatedFlagValues({"fwp-x", "--sets=a=1"}, "set", {});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  // Set where the scan cannot see it (a --flagfile): refused, not half applied.
  auto hidden = RepeatedFlagValues({"fwp-x", "--flagfile=f"}, "set", {"n_layers=2"});
  ASSERT_FALSE(hidden.ok());
  EXPECT_NE(hidden.status().message().find("--flagfile"), std::string::npos) << hidden.status();
}

TEST(Flags, FlagGivenSeesEverySpellingBeforeTheEnd) {
  const std::vector<std::string> args = {"fwp-x", "-vocab=3", "--nokeep_best", "--text", "x",
                                         "--", "--corpus"};
  EXPECT_TRUE(FlagGiven(args, "vocab"));
  EXPECT_TRUE(FlagGiven(args, "keep_best"));
  EXPECT_TRUE(FlagGiven(args, "text"));
  EXPECT_FALSE(FlagGiven(args, "corpus"));
  EXPECT_FALSE(FlagGiven(args, "x"));
  EXPECT_FALSE(FlagGiven(args, "voc"));
}

TEST(Flags, HelpShowsOurFilesNotTheLibraries) {
  EXPECT_TRUE(IsOurFlagFile("work/main/train/retrieval_main.cc"));
  EXPECT_TRUE(IsOurFlagFile("/src/fwp/clients/client_common.cc"));
  EXPECT_FALSE(IsOurFlagFile("absl/flags/parse.cc"));
  EXPECT_FALSE(IsOurFlagFile("/usr/include/absl/log/flags.cc"));
}

}  // namespace
}  // namespace fwp
