#include "engine/backend.h"

namespace strata::engine {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(Backend& backend, int64_t bytes) {
  absl::StatusOr<void*> p = backend.Allocate(bytes);
  if (!p.ok()) return p.status();
  DeviceBuffer b;
  b.backend_ = &backend;
  b.ptr_ = *p;
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Reset();
    backend_ = std::exchange(o.backend_, nullptr);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (ptr_ != nullptr) backend_->Free(ptr_);
  backend_ = nullptr;
  ptr_ = nullptr;
  bytes_ = 0;
}

}  // namespace strata::engine
