// safetensors checkpoints: a zero-copy reader (mmap) for single files and for sharded checkpoints
// described by model.safetensors.index.json, and a writer. Every malformed input — bad header
// JSON, offsets overlapping, leaving holes or running past the end, a byte size that does not
// match dtype × shape, a missing shard — is refused with a message naming the file and tensor.
//
// Threading: readers are immutable after Open() and safe to share between threads. The writer is
// single-threaded.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/file.h"

namespace strata::engine {

enum class DType : uint8_t { kBool, kU8, kI8, kI16, kI32, kI64, kF16, kBF16, kF32, kF64, kF8_E4M3, kF8_E8M0 };

absl::StatusOr<DType> ParseDType(absl::string_view name);  // "BF16", "F8_E4M3", ...
absl::string_view DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

// "[4096, 7168]"
std::string ShapeString(absl::Span<const int64_t> shape);
int64_t NumElements(absl::Span<const int64_t> shape);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // within the file's data section
  uint64_t nbytes = 0;
};

// A tensor's bytes inside a mapped file, plus its description. Valid while the reader lives.
struct TensorView {
  const TensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  const std::string* file = nullptr;  // the shard it lives in, for error messages

  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data);
  }
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* Find(absl::string_view name) const;
  TensorView View(const TensorInfo& info) const;
  size_t file_size() const { return file_.size(); }
  // Offset of the data section in the file.
  size_t data_start() const { return data_start_; }
  const MappedFile& mapped() const { return file_; }

 private:
  explicit SafetensorsFile(MappedFile file) : file_(std::move(file)) {}
  absl::Status ParseHeader();

  MappedFile file_;
  size_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint folder: the shards named by model.safetensors.index.json, or every
// *.safetensors file when there is no index.
class TensorStore {
 public:
  static absl::StatusOr<std::unique_ptr<TensorStore>> Open(const std::string& dir);

  // nullptr data if absent.
  TensorView Find(absl::string_view name) const;
  std::vector<std::string> Names() const;  // sorted
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  uint64_t total_bytes() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, std::pair<size_t, const TensorInfo*>> index_;
};

// Builds one safetensors file. Tensors are laid out widest dtype first so that every tensor is
// aligned to its element size (the header is padded to a multiple of 8 bytes).
class SafetensorsWriter {
 public:
  // Copies nothing: `data` must stay valid until Write() returns.
  absl::Status Add(std::string name, DType dtype, std::vector<int64_t> shape, absl::Span<const uint8_t> data);
  void SetMetadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  absl::Status Write(const std::string& path) const;
  uint64_t data_bytes() const { return data_bytes_; }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    TensorInfo info;
    absl::Span<const uint8_t> data;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_bytes_ = 0;
};

// Writes model.safetensors.index.json for shards already written into `dir`.
// `weight_map`: tensor name -> shard file name.
absl::Status WriteSafetensorsIndex(const std::string& dir, uint64_t total_size,
                                   const std::map<std::string, std::string>& weight_map);

inline constexpr absl::string_view kSafetensorsIndexName = "model.safetensors.index.json";

}  // namespace strata::engine
