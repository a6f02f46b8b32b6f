// Writing NumPy .npy files (format 1.0), so tensors the engine dumps (`--dump-layers`) can be
// compared with any other implementation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace strata::engine {

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape, const float* data);
absl::Status WriteNpyI64(const std::string& path, const std::vector<int64_t>& shape, const int64_t* data);

}  // namespace strata::engine
