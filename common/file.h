// Files: read-only memory maps (zero-copy access to checkpoints and tokenizer data), whole-file
// reads, and atomic writes (write to a temporary, fsync, rename) so a crash never leaves a
// half-written file under the final name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata {

// A read-only, private memory map of a whole file. Movable, not copyable; unmaps on destruction.
// Thread-safe for concurrent reads.
class MappedFile {
 public:
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Touches every page of [offset, offset + length) so later reads do not fault (used to load
  // checkpoints in parallel up front rather than on the first forward pass).
  void Prefault(size_t offset, size_t length) const;

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  void Reset();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `contents` to `path` atomically (temporary file in the same folder, then rename).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// An output file written in pieces and published atomically by Commit(); if destroyed
// without Commit() the temporary file is removed.
class AtomicFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(const std::string& path);
  ~AtomicFileWriter();

  absl::Status Append(const void* data, size_t size);
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string tmp_path, int fd)
      : path_(std::move(path)), tmp_path_(std::move(tmp_path)), fd_(fd) {}

  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
};

}  // namespace strata
