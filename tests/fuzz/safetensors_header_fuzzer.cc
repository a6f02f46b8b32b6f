// Fuzzes the safetensors reader (engine/safetensors.h). The first byte picks the input's role:
//   even: a whole .safetensors file (8-byte length, JSON header, data) for SafetensorsFile::Open;
//   odd:  a model.safetensors.index.json for TensorStore::Open, next to two valid shards.
//
// Besides ASan and UBSan, it checks what the loader relies on once a file is accepted: every
// tensor's bytes lie inside the data section, which they cover exactly without overlapping, its
// byte size is its element count (which fits int64) times its dtype's size, and Find() and View()
// agree with the list.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/file.h"
#include "engine/safetensors.h"

namespace {

using strata::engine::SafetensorsFile;
using strata::engine::TensorInfo;
using strata::engine::TensorStore;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "safetensors_header_fuzzer: %s\n", what.c_str());
  std::abort();
}

void WriteOrDie(const std::string& path, const void* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ::write(fd, data, size) != static_cast<ssize_t>(size) || ::close(fd) != 0) {
    Fail("cannot write " + path);
  }
}

// A private folder for the files the inputs become.
const std::string& Dir() {
  static const std::string* dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                          "/strata-safetensors-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) Fail("mkdtemp failed");
    auto* d = new std::string(pattern);
    std::atexit([] {
      for (const char* name : {"model.safetensors", "a.safetensors", "b.safetensors",
                               "model.safetensors.index.json"}) {
        ::unlink((*dir + "/" + name).c_str());
      }
      ::rmdir(dir->c_str());
    });
    return d;
  }();
  return *dir;
}

// Shards that TensorStore fuzzing pairs with the index: "x" (F32 [2]) in a, "y" (U8 [3]) in b.
void WriteShards(const std::string& dir) {
  static bool written = false;
  if (written) return;
  const float x[2] = {1.0f, 2.0f};
  const uint8_t y[3] = {1, 2, 3};
  strata::engine::SafetensorsWriter a, b;
  if (!a.Add("x", strata::engine::DType::kF32, {2}, {reinterpret_cast<const uint8_t*>(x), 8})
           .ok() ||
      !a.Write(dir + "/a.safetensors").ok() ||
      !b.Add("y", strata::engine::DType::kU8, {3}, {y, 3}).ok() ||
      !b.Write(dir + "/b.safetensors").ok()) {
    Fail("cannot write the shards");
  }
  written = true;
}

void CheckFile(const SafetensorsFile& file) {
  const uint64_t data_size = file.file_size() - file.data_start();
  if (file.data_start() < 8 || file.data_start() > file.file_size()) Fail("data section misplaced");
  std::vector<const TensorInfo*> order;
  for (const TensorInfo& t : file.tensors()) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      Fail("tensor " + t.name + " runs past the data section");
    }
    // NumElements multiplies in int64, left to right: no partial product may overflow.
    int64_t elements = 1;
    for (int64_t d : t.shape) {
      if (d < 0) Fail("tensor " + t.name + " has a negative dimension");
      if (__builtin_mul_overflow(elements, d, &elements)) {
        Fail("tensor " + t.name + " has a shape whose element count overflows int64");
      }
    }
    uint64_t bytes = 0;
    if (strata::engine::NumElements(t.shape) != elements ||
        __builtin_mul_overflow(static_cast<uint64_t>(elements), DTypeSize(t.dtype), &bytes) ||
        bytes != t.nbytes) {
      Fail("tensor " + t.name + "'s byte size does not match its dtype and shape");
    }
    if (file.Find(t.name) != &t) Fail("Find(" + t.name + ") is not its entry");
    const strata::engine::TensorView view = file.View(t);
    if (view.data != file.mapped().data() + file.data_start() + t.offset) Fail("View misplaced");
    if (t.nbytes > 0) {
      // Touch both ends: a view outside the mapping faults here rather than in the model.
      volatile uint8_t first = view.data[0], last = view.data[t.nbytes - 1];
      (void)first;
      (void)last;
    }
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  uint64_t cursor = 0;
  for (const TensorInfo* t : order) {
    if (t->offset != cursor) Fail("tensor " + t->name + " overlaps another or leaves a hole");
    cursor += t->nbytes;
  }
  if (cursor != data_size) Fail("the tensors do not cover the data section");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string& dir = Dir();
  if (data[0] % 2 == 0) {
    const std::string path = dir + "/model.safetensors";
    WriteOrDie(path, data + 1, size - 1);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    if (file.ok()) CheckFile(**file);
    return 0;
  }
  WriteShards(dir);
  WriteOrDie(dir + "/model.safetensors.index.json", data + 1, size - 1);
  ::unlink((dir + "/model.safetensors").c_str());  // only a and b are shards
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir);
  if (!store.ok()) return 0;
  for (const std::string& name : (*store)->Names()) {
    const strata::engine::TensorView view = (*store)->Find(name);
    if (view.data == nullptr || view.info == nullptr || view.info->name != name) {
      Fail("TensorStore lists " + name + " but cannot find it");
    }
  }
  for (const auto& file : (*store)->files()) CheckFile(*file);
  return 0;
}
