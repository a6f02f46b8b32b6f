#include "engine/npy.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file.h"
#include "common/status.h"

namespace strata::engine {
namespace {

absl::Status WriteNpy(const std::string& path, const char* descr, const std::vector<int64_t>& shape,
                      const void* data, size_t element_bytes) {
  std::string shape_text = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) shape_text += ",";
  std::string header = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", shape_text, "), }");
  // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string prefix("\x93NUMPY\x01\x00", 8);
  prefix.push_back(static_cast<char>(header.size() & 0xFF));
  prefix.push_back(static_cast<char>(header.size() >> 8));
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  STRATA_ASSIGN_OR_RETURN(auto out, AtomicFileWriter::Create(path));
  STRATA_RETURN_IF_ERROR(out->Append(prefix.data(), prefix.size()));
  STRATA_RETURN_IF_ERROR(out->Append(header.data(), header.size()));
  STRATA_RETURN_IF_ERROR(out->Append(data, count * element_bytes));
  return out->Commit();
}

}  // namespace

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  return WriteNpy(path, "<f4", shape, data, 4);
}

absl::Status WriteNpyI64(const std::string& path, const std::vector<int64_t>& shape, const int64_t* data) {
  return WriteNpy(path, "<i8", shape, data, 8);
}

}  // namespace strata::engine
