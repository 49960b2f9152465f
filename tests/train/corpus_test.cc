#include "train/corpus.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "train/brown.h"

namespace fwp {
namespace {

std::string Fresh(const std::string& name) {
  const std::string path = ::testing::TempDir() + name;
  std::filesystem::remove_all(path);
  return path;
}

TEST(Corpus, AFileIsSplitIntoDocumentsAtBlankLines) {
  const std::string path = Fresh("fwp_corpus.txt");
  std::ofstream(path) << "\n\nfirst line\nsecond line\n\n \t\nthird\n\n\n  \nlast, no newline";
  auto docs = ReadTextCorpus(path);
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_EQ(docs->size(), 3u);
  EXPECT_EQ((*docs)[0].text, "first line\nsecond line\n");
  EXPECT_EQ((*docs)[0].name, path + ":3");
  EXPECT_EQ((*docs)[1].text, "third\n");
  EXPECT_EQ((*docs)[1].name, path + ":7");
  EXPECT_EQ((*docs)[2].text, "last, no newline\n");
}

TEST(Corpus, ADirectoryIsOneDocumentPerFileInNameOrder) {
  const std::string dir = Fresh("fwp_corpus_dir");
  std::filesystem::create_directories(dir + "/b_sub");
  std::ofstream(dir + "/c.txt") << "see\n\nsea";  // blank lines stay inside a file's document
  std::ofstream(dir + "/a.md") << "ay";
  std::ofstream(dir + "/b_sub/x") << "sub";
  std::ofstream(dir + "/empty") << " \n\n";
  std::filesystem::create_directories(dir + "/.git");
  std::ofstream(dir + "/.git/HEAD") << "ref: main";
  std::ofstream(dir + "/.#c.txt") << "an editor's lock";
  std::filesystem::create_symlink(dir + "/gone", dir + "/dangling");
  auto docs = ReadTextCorpus(dir);
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_EQ(docs->size(), 3u);
  EXPECT_EQ((*docs)[0].text, "ay");
  EXPECT_EQ((*docs)[1].text, "sub");
  EXPECT_EQ((*docs)[1].name, dir + "/b_sub/x");
  EXPECT_EQ((*docs)[2].text, "see\n\nsea");
}

TEST(Corpus, RefusesPathsWithoutText) {
  const std::string missing = Fresh("fwp_corpus_missing");
  auto none = ReadTextCorpus(missing);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("neither a file nor a directory"), std::string::npos);
  const std::string blank = Fresh("fwp_corpus_blank.txt");
  std::ofstream(blank) << "\n  \n\t\n";
  auto empty = ReadTextCorpus(blank);
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("holds no text"), std::string::npos) << empty.status();
  const std::string dir = Fresh("fwp_corpus_empty_dir");
  std::filesystem::create_directories(dir);
  EXPECT_FALSE(ReadTextCorpus(dir).ok());
}

TEST(Corpus, SplitsNinetyFiveFiveByPosition) {
  std::vector<Document> docs;
  for (int i = 0; i < 45; ++i) docs.push_back({absl::StrCat("d", i), absl::StrCat(i)});
  auto split = SplitCorpus(docs, "test corpus");
  ASSERT_TRUE(split.ok()) << split.status();
  ASSERT_EQ(split->valid.size(), 2u);
  ASSERT_EQ(split->test.size(), 2u);
  EXPECT_EQ(split->train.size(), 41u);
  EXPECT_EQ(split->valid[0].name, "d18");
  EXPECT_EQ(split->valid[1].name, "d38");
  EXPECT_EQ(split->test[0].name, "d19");
  EXPECT_EQ(split->test[1].name, "d39");
  EXPECT_EQ(split->train[18].name, "d20");
  docs.resize(19);
  auto small = SplitCorpus(docs, "test corpus");
  ASSERT_FALSE(small.ok());
  EXPECT_NE(small.status().message().find("test corpus holds 19 documents"), std::string::npos)
      << small.status();
}

TEST(Corpus, BrownTagsAreStrippedAndDocumentsReadInNameOrder) {
  auto text = StripBrownTags(
      "\n\tThe/at jury/nn said/vbd ``/`` it/pps did/dod n't/* ''/'' ./.\n"
      "\t(/( Atlanta/np-tl )/) ,/, it's/pps+bez 50/cd %/nn\n",
      "ca01");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "The jury said \"it didn't\".\n(Atlanta), it's 50%\n");
  EXPECT_FALSE(StripBrownTags("no tags here\n", "ca02").ok());

  const std::string dir = Fresh("fwp_brown");
  std::filesystem::create_directories(dir);
  for (int i = 19; i >= 0; --i) {
    std::ofstream(absl::StrCat(dir, "/c", std::string(1, char('a' + i % 3)), i < 10 ? "0" : "", i))
        << "Word/nn " << i << "/cd ./.\n";
  }
  std::ofstream(dir + "/README") << "not a document";
  auto docs = ReadBrownCorpus(dir);
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_EQ(docs->size(), 20u);
  for (size_t i = 1; i < docs->size(); ++i) EXPECT_LT((*docs)[i - 1].name, (*docs)[i].name);
  EXPECT_EQ((*docs)[0].name, "ca00");
  EXPECT_EQ((*docs)[0].text, "Word 0.\n");
  std::filesystem::remove(dir + "/ca00");
  auto fewer = ReadBrownCorpus(dir);
  ASSERT_FALSE(fewer.ok());
  EXPECT_NE(fewer.status().message().find("holds 19 Brown documents"), std::string::npos)
      << fewer.status();
}

}  // namespace
}  // namespace fwp
