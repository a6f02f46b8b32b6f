#include "engine/safetensors.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::engine {
namespace {

using ::testing::HasSubstr;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "strata_st_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A file with a hand-written header and `data_bytes` bytes of data.
  std::string WriteRaw(const std::string& name, const std::string& header, size_t data_bytes) {
    std::string bytes(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
    bytes += header;
    bytes.append(data_bytes, '\x01');
    std::string path = dir_ + "/" + name;
    EXPECT_TRUE(WriteFileAtomically(path, bytes).ok());
    return path;
  }

  std::string dir_;
};

TEST_F(SafetensorsTest, WriteThenReadRoundTripsEveryDtypeAligned) {
  std::vector<uint8_t> bf16(2 * 6), f32(4 * 3), i64(8 * 2), e4m3(5), i8(7);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = static_cast<uint8_t>(i);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = static_cast<uint8_t>(100 + i);
  for (size_t i = 0; i < i64.size(); ++i) i64[i] = static_cast<uint8_t>(200 + i);
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.Add("a.bf16", DType::kBF16, {2, 3}, bf16).ok());
  ASSERT_TRUE(writer.Add("b.e4m3", DType::kF8_E4M3, {5}, e4m3).ok());
  ASSERT_TRUE(writer.Add("c.f32", DType::kF32, {3}, f32).ok());
  ASSERT_TRUE(writer.Add("d.i64", DType::kI64, {1, 2}, i64).ok());
  ASSERT_TRUE(writer.Add("e.i8", DType::kI8, {7}, i8).ok());
  writer.SetMetadata("format", "pt");
  ASSERT_TRUE(writer.Write(dir_ + "/m.safetensors").ok());

  auto file = SafetensorsFile::Open(dir_ + "/m.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 5u);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const TensorInfo* info = (*file)->Find("a.bf16");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, DType::kBF16);
  EXPECT_EQ(info->shape, (std::vector<int64_t>{2, 3}));
  TensorView view = (*file)->View(*info);
  EXPECT_EQ(std::memcmp(view.data, bf16.data(), bf16.size()), 0);
  for (const TensorInfo& t : (*file)->tensors()) {
    uintptr_t addr = reinterpret_cast<uintptr_t>((*file)->View(t).data);
    EXPECT_EQ(addr % DTypeSize(t.dtype), 0u) << t.name << " is not aligned to its element size";
  }
  EXPECT_EQ(std::memcmp((*file)->View(*(*file)->Find("d.i64")).data, i64.data(), i64.size()), 0);
}

TEST_F(SafetensorsTest, WriterRefusesWrongByteCount) {
  std::vector<uint8_t> bytes(3);
  SafetensorsWriter writer;
  absl::Status status = writer.Add("x", DType::kBF16, {2}, bytes);
  EXPECT_THAT(status.message(), HasSubstr("x"));
  EXPECT_FALSE(status.ok());
}

TEST_F(SafetensorsTest, BadHeaderJsonIsRefusedNamingTheFile) {
  std::string path = WriteRaw("bad.safetensors", "{\"a\": {\"dtype\": ", 0);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr(path));
  EXPECT_THAT(file.status().message(), HasSubstr("JSON"));
}

TEST_F(SafetensorsTest, HeaderLengthPastEndIsRefused) {
  std::string path = dir_ + "/short.safetensors";
  std::string bytes(8, '\0');
  bytes[0] = 100;
  bytes += "{}";
  ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("past the end"));
}

TEST_F(SafetensorsTest, OffsetsPastTheEndAreRefusedNamingTheTensor) {
  std::string path = WriteRaw(
      "p.safetensors", R"({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}})", 6);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("tensor w"));
  EXPECT_THAT(file.status().message(), HasSubstr("past the end"));
}

TEST_F(SafetensorsTest, OverlappingTensorsAreRefused) {
  std::string path = WriteRaw("o.safetensors",
                              R"({"a": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]},
                                  "b": {"dtype": "I8", "shape": [4], "data_offsets": [2, 6]}})",
                              6);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("overlap"));
  EXPECT_THAT(file.status().message(), HasSubstr("a"));
}

TEST_F(SafetensorsTest, SizeNotMatchingDtypeTimesShapeIsRefused) {
  std::string path = WriteRaw(
      "s.safetensors", R"({"layers.3.attn.wkv.scale": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})",
      20);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("layers.3.attn.wkv.scale"));
  EXPECT_THAT(file.status().message(), HasSubstr("needs 24"));
}

// An empty tensor's element count is 0, but NumElements multiplies the shape in int64 from the
// left, so a shape whose partial products overflow it is refused (found by
// tests/fuzz/safetensors_header_fuzzer's checks); an ordinary empty tensor is fine.
TEST_F(SafetensorsTest, ShapesOverflowingInt64AreRefusedEvenWhenEmpty) {
  std::string path = WriteRaw(
      "o.safetensors",
      R"({"t": {"dtype": "U8", "shape": [9223372036854775807, 2, 0], "data_offsets": [0, 0]}})", 0);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("too large"));

  path = WriteRaw("e.safetensors",
                  R"({"t": {"dtype": "U8", "shape": [0, 9223372036854775807], "data_offsets": [0, 0]}})",
                  0);
  file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(NumElements((*file)->tensors()[0].shape), 0);
}

TEST_F(SafetensorsTest, HolesAndUnknownDtypesAreRefused) {
  std::string hole = WriteRaw("h.safetensors", R"({"a": {"dtype": "I8", "shape": [2], "data_offsets": [2, 4]}})", 4);
  auto file = SafetensorsFile::Open(hole);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("belong to no tensor"));

  std::string dtype = WriteRaw("d.safetensors", R"({"a": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 2]}})", 2);
  file = SafetensorsFile::Open(dtype);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("Q4_K"));
}

TEST_F(SafetensorsTest, ShardedCheckpointThroughTheIndex) {
  std::vector<uint8_t> a(8, 1), b(4, 2);
  SafetensorsWriter w1, w2;
  ASSERT_TRUE(w1.Add("a", DType::kF32, {2}, a).ok());
  ASSERT_TRUE(w2.Add("b", DType::kBF16, {2}, b).ok());
  ASSERT_TRUE(w1.Write(dir_ + "/model-00001-of-00002.safetensors").ok());
  ASSERT_TRUE(w2.Write(dir_ + "/model-00002-of-00002.safetensors").ok());
  ASSERT_TRUE(WriteSafetensorsIndex(dir_, 12,
                                    {{"a", "model-00001-of-00002.safetensors"},
                                     {"b", "model-00002-of-00002.safetensors"}})
                  .ok());
  auto store = TensorStore::Open(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Names(), (std::vector<std::string>{"a", "b"}));
  TensorView view = (*store)->Find("b");
  ASSERT_NE(view.data, nullptr);
  EXPECT_EQ(view.data[0], 2);
  EXPECT_THAT(*view.file, HasSubstr("00002"));
  EXPECT_EQ((*store)->Find("c").data, nullptr);

  // A missing shard is named, with a tensor it should hold.
  std::filesystem::remove(dir_ + "/model-00002-of-00002.safetensors");
  store = TensorStore::Open(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_THAT(store.status().message(), HasSubstr("missing"));
}

TEST_F(SafetensorsTest, IndexAndShardsMustAgree) {
  std::vector<uint8_t> a(8, 1);
  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("a", DType::kF32, {2}, a).ok());
  ASSERT_TRUE(w.Write(dir_ + "/s1.safetensors").ok());
  ASSERT_TRUE(WriteSafetensorsIndex(dir_, 8, {{"a", "s1.safetensors"}, {"ghost", "s1.safetensors"}}).ok());
  auto store = TensorStore::Open(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr("ghost"));

  ASSERT_TRUE(WriteFileAtomically(dir_ + "/model.safetensors.index.json", "{\"weight_map\": [").ok());
  store = TensorStore::Open(dir_);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr("model.safetensors.index.json"));
}

TEST_F(SafetensorsTest, SingleFileWithoutIndex) {
  std::vector<uint8_t> a(2, 7);
  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("only", DType::kI8, {2}, a).ok());
  ASSERT_TRUE(w.Write(dir_ + "/model.safetensors").ok());
  auto store = TensorStore::Open(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Find("only").data[1], 7);
}

}  // namespace
}  // namespace strata::engine
