#include "common/file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace strata {
namespace {

std::string TempDir() {
  std::string tmpl = ::testing::TempDir() + "strata_file_test_XXXXXX";
  char* made = ::mkdtemp(tmpl.data());
  EXPECT_NE(made, nullptr);
  return tmpl;
}

TEST(FileTest, WriteThenMapRoundTrips) {
  std::string dir = TempDir();
  std::string path = dir + "/a.bin";
  ASSERT_TRUE(WriteFileAtomically(path, "hello world").ok());
  absl::StatusOr<MappedFile> mapped = MappedFile::Open(path);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(mapped->data()), mapped->size()), "hello world");
  mapped->Prefault(0, mapped->size());
  absl::StatusOr<std::string> read = ReadFile(path);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, "hello world");
  std::filesystem::remove_all(dir);
}

TEST(FileTest, MissingFileIsNotFoundAndNamesThePath) {
  absl::StatusOr<MappedFile> mapped = MappedFile::Open("/nonexistent/strata/x.bin");
  ASSERT_FALSE(mapped.ok());
  EXPECT_TRUE(absl::IsNotFound(mapped.status()));
  EXPECT_NE(mapped.status().message().find("/nonexistent/strata/x.bin"), std::string::npos);
}

TEST(FileTest, EmptyFileMapsToNothing) {
  std::string dir = TempDir();
  ASSERT_TRUE(WriteFileAtomically(dir + "/empty", "").ok());
  absl::StatusOr<MappedFile> mapped = MappedFile::Open(dir + "/empty");
  ASSERT_TRUE(mapped.ok());
  EXPECT_EQ(mapped->size(), 0u);
  std::filesystem::remove_all(dir);
}

TEST(FileTest, UncommittedWriterLeavesNothingBehind) {
  std::string dir = TempDir();
  {
    auto writer = AtomicFileWriter::Create(dir + "/out");
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Append("partial", 7).ok());
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/out"));
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace strata
