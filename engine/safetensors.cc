#include "engine/safetensors.h"

#include <dirent.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"
#include "simdjson.h"

namespace strata::engine {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100 << 20;  // as the reference implementation

struct DTypeEntry {
  DType dtype;
  absl::string_view name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kBool, "BOOL", 1},      {DType::kU8, "U8", 1},     {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},        {DType::kI32, "I32", 4},   {DType::kI64, "I64", 8},
    {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2}, {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},        {DType::kF8_E4M3, "F8_E4M3", 1},
    {DType::kF8_E8M0, "F8_E8M0", 1},
};

absl::Status Corrupt(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("safetensors file ", path, ": ", what));
}

std::string JoinPath(const std::string& dir, absl::string_view name) {
  if (dir.empty() || dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

}  // namespace

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "'"));
}

absl::string_view DTypeName(DType dtype) { return kDTypes[static_cast<int>(dtype)].name; }
size_t DTypeSize(DType dtype) { return kDTypes[static_cast<int>(dtype)].size; }

std::string ShapeString(absl::Span<const int64_t> shape) { return absl::StrCat("[", absl::StrJoin(shape, ","), "]"); }

int64_t NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- SafetensorsFile -------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  STRATA_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile(std::move(mapped)));
  STRATA_RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

absl::Status SafetensorsFile::ParseHeader() {
  const std::string& path = file_.path();
  if (file_.size() < 8) return Corrupt(path, absl::StrCat("only ", file_.size(), " bytes, too short for a header"));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file_.data()[i];
  if (header_len > kMaxHeaderBytes) return Corrupt(path, absl::StrCat("header length ", header_len, " is too large"));
  if (header_len > file_.size() - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " runs past the end of the file (",
                                      file_.size(), " bytes)"));
  }
  data_start_ = 8 + header_len;
  const uint64_t data_size = file_.size() - data_start_;

  simdjson::padded_string header(reinterpret_cast<const char*>(file_.data() + 8), header_len);
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto err = parser.parse(header).get(root); err) {
    return Corrupt(path, absl::StrCat("header is not valid JSON: ", simdjson::error_message(err)));
  }
  simdjson::dom::object object;
  if (root.get(object)) return Corrupt(path, "header is not a JSON object");

  for (auto [key, value] : object) {
    std::string name(key);
    if (name == "__metadata__") {
      simdjson::dom::object meta;
      if (value.get(meta)) return Corrupt(path, "__metadata__ is not an object");
      for (auto [mk, mv] : meta) {
        std::string_view s;
        if (mv.get(s)) return Corrupt(path, absl::StrCat("__metadata__ value of '", ToAbsl(mk), "' is not a string"));
        metadata_[std::string(mk)] = std::string(s);
      }
      continue;
    }
    auto bad = [&](absl::string_view what) { return Corrupt(path, absl::StrCat("tensor ", name, ": ", what)); };
    simdjson::dom::object entry;
    if (value.get(entry)) return bad("entry is not an object");
    std::string_view dtype_json;
    if (entry["dtype"].get(dtype_json)) return bad("missing or non-string 'dtype'");
    absl::string_view dtype_name = ToAbsl(dtype_json);
    absl::StatusOr<DType> dtype = ParseDType(dtype_name);
    if (!dtype.ok()) return bad(dtype.status().message());
    TensorInfo info{.name = name, .dtype = *dtype};
    simdjson::dom::array shape, offsets;
    if (entry["shape"].get(shape)) return bad("missing or non-array 'shape'");
    uint64_t elements = 1;
    bool overflow = false;
    for (auto d : shape) {
      int64_t dim;
      if (d.get(dim) || dim < 0) return bad("shape holds something other than non-negative integers");
      info.shape.push_back(dim);
      // Every partial product must fit int64, as NumElements multiplies ([2^62, 4, 0] holds no
      // bytes but would overflow it).
      constexpr auto kMaxElements = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
      if (dim != 0 && elements > kMaxElements / static_cast<uint64_t>(dim)) overflow = true;
      elements *= static_cast<uint64_t>(dim);
    }
    if (entry["data_offsets"].get(offsets) || offsets.size() != 2) return bad("'data_offsets' is not [begin, end]");
    uint64_t begin, end;
    if (offsets.at(0).get(begin) || offsets.at(1).get(end)) return bad("'data_offsets' are not non-negative integers");
    if (begin > end) return bad(absl::StrCat("data_offsets [", begin, ",", end, "] end before they begin"));
    if (end > data_size) {
      return bad(absl::StrCat("data_offsets [", begin, ",", end, "] run past the end of the data (", data_size,
                              " bytes)"));
    }
    if (overflow || elements > std::numeric_limits<uint64_t>::max() / DTypeSize(*dtype)) {
      return bad("shape is too large");
    }
    uint64_t want = elements * DTypeSize(*dtype);
    if (end - begin != want) {
      return bad(absl::StrCat("holds ", end - begin, " bytes but ", dtype_name, " ", ShapeString(info.shape),
                              " needs ", want));
    }
    info.offset = begin;
    info.nbytes = end - begin;
    if (by_name_.contains(name)) return bad("appears twice in the header");
    by_name_[name] = tensors_.size();
    tensors_.push_back(std::move(info));
  }

  // The data section must be covered exactly: no overlaps, no holes.
  std::vector<const TensorInfo*> order;
  order.reserve(tensors_.size());
  for (const auto& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->nbytes < b->nbytes;
  });
  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : order) {
    if (t->offset < cursor) {
      return Corrupt(path, absl::StrCat("tensors ", previous->name, " and ", t->name, " overlap (bytes ", t->offset,
                                        "..", cursor, ")"));
    }
    if (t->offset > cursor) {
      return Corrupt(path, absl::StrCat("bytes ", cursor, "..", t->offset, " before tensor ", t->name,
                                        " belong to no tensor"));
    }
    cursor = t->offset + t->nbytes;
    previous = t;
  }
  if (cursor != data_size) {
    return Corrupt(path, absl::StrCat("bytes ", cursor, "..", data_size, " at the end belong to no tensor"));
  }
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

TensorView SafetensorsFile::View(const TensorInfo& info) const {
  return TensorView{&info, file_.data() + data_start_ + info.offset, &file_.path()};
}

// ---- TensorStore -----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::Open(const std::string& dir) {
  auto store = std::make_unique<TensorStore>();
  const std::string index_path = JoinPath(dir, kSafetensorsIndexName);
  absl::StatusOr<std::string> index_text = ReadFile(index_path);
  std::vector<std::string> shard_names;
  // Expected location of each tensor according to the index (empty without an index).
  std::map<std::string, std::string> weight_map;
  if (index_text.ok()) {
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    simdjson::padded_string padded(*index_text);
    if (auto err = parser.parse(padded).get(root); err) {
      return absl::DataLossError(
          absl::StrCat(index_path, ": not valid JSON: ", simdjson::error_message(err)));
    }
    simdjson::dom::object map;
    if (root["weight_map"].get(map)) return absl::DataLossError(absl::StrCat(index_path, ": no 'weight_map' object"));
    for (auto [name, file] : map) {
      std::string_view file_name;
      if (file.get(file_name)) {
        return absl::DataLossError(absl::StrCat(index_path, ": weight_map entry ", ToAbsl(name), " is not a file name"));
      }
      if (file_name.find('/') != std::string_view::npos || file_name == ".." || file_name.empty()) {
        return absl::DataLossError(absl::StrCat(index_path, ": weight_map entry ", ToAbsl(name), " names '",
                                                ToAbsl(file_name), "', not a file in ", dir));
      }
      weight_map[std::string(name)] = std::string(file_name);
    }
    for (const auto& [name, file] : weight_map) {
      if (std::find(shard_names.begin(), shard_names.end(), file) == shard_names.end()) shard_names.push_back(file);
    }
    std::sort(shard_names.begin(), shard_names.end());
  } else if (absl::IsNotFound(index_text.status())) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return absl::NotFoundError(absl::StrCat("checkpoint folder ", dir, " cannot be opened"));
    while (dirent* e = ::readdir(d)) {
      absl::string_view n = e->d_name;
      if (n.size() > 12 && n.substr(n.size() - 12) == ".safetensors") shard_names.emplace_back(n);
    }
    ::closedir(d);
    std::sort(shard_names.begin(), shard_names.end());
    if (shard_names.empty()) {
      return absl::NotFoundError(absl::StrCat("checkpoint folder ", dir, " has no ", kSafetensorsIndexName,
                                              " and no *.safetensors file"));
    }
  } else {
    return index_text.status();
  }

  for (const std::string& shard : shard_names) {
    const std::string path = JoinPath(dir, shard);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    if (!file.ok()) {
      if (absl::IsNotFound(file.status()) && !weight_map.empty()) {
        auto named = std::find_if(weight_map.begin(), weight_map.end(),
                                  [&](const auto& kv) { return kv.second == shard; });
        return absl::NotFoundError(absl::StrCat("checkpoint ", dir, ": shard ", shard, " (holding ", named->first,
                                                " among others) is missing"));
      }
      return file.status();
    }
    const size_t file_index = store->files_.size();
    for (const TensorInfo& info : (*file)->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(info.name);
        if (it == weight_map.end()) {
          return absl::DataLossError(absl::StrCat(path, ": tensor ", info.name, " is not listed in ", index_path));
        }
        if (it->second != shard) {
          return absl::DataLossError(absl::StrCat(path, ": tensor ", info.name, " is listed in ", index_path,
                                                  " as living in ", it->second));
        }
      }
      auto [it, inserted] = store->index_.try_emplace(info.name, file_index, &info);
      if (!inserted) {
        return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": tensor ", info.name, " is in both ",
                                                store->files_[it->second.first]->path(), " and ", path));
      }
    }
    store->files_.push_back(std::move(*file));
  }
  for (const auto& [name, shard] : weight_map) {
    if (!store->index_.contains(name)) {
      return absl::DataLossError(absl::StrCat(index_path, " lists tensor ", name, " in ", shard,
                                              ", but that shard does not hold it"));
    }
  }
  return store;
}

TensorView TensorStore::Find(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return TensorView{};
  return files_[it->second.first]->View(*it->second.second);
}

std::vector<std::string> TensorStore::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, _] : index_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

uint64_t TensorStore::total_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files_) total += f->file_size();
  return total;
}

// ---- SafetensorsWriter -----------------------------------------------------------------------

absl::Status SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                                    absl::Span<const uint8_t> data) {
  uint64_t want = static_cast<uint64_t>(NumElements(shape)) * DTypeSize(dtype);
  if (data.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": ", data.size(), " bytes given, ", DTypeName(dtype),
                                                   " ", ShapeString(shape), " needs ", want));
  }
  if (name == "__metadata__") return absl::InvalidArgumentError("a tensor cannot be named __metadata__");
  for (const Entry& e : entries_) {
    if (e.info.name == name) return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " added twice"));
  }
  data_bytes_ += want;
  entries_.push_back(Entry{TensorInfo{std::move(name), dtype, std::move(shape), 0, want}, data});
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  std::vector<const Entry*> order;
  for (const Entry& e : entries_) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    size_t sa = DTypeSize(a->info.dtype), sb = DTypeSize(b->info.dtype);
    return sa != sb ? sa > sb : a->info.name < b->info.name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const Entry* e : order) {
    header[e->info.name] = {{"dtype", DTypeName(e->info.dtype)},
                            {"shape", e->info.shape},
                            {"data_offsets", {offset, offset + e->info.nbytes}}};
    offset += e->info.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out, AtomicFileWriter::Create(path));
  STRATA_RETURN_IF_ERROR(out->Append(len, sizeof(len)));
  STRATA_RETURN_IF_ERROR(out->Append(text.data(), text.size()));
  for (const Entry* e : order) STRATA_RETURN_IF_ERROR(out->Append(e->data.data(), e->data.size()));
  return out->Commit();
}

absl::Status WriteSafetensorsIndex(const std::string& dir, uint64_t total_size,
                                   const std::map<std::string, std::string>& weight_map) {
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  return WriteFileAtomically(JoinPath(dir, kSafetensorsIndexName), index.dump(2) + "\n");
}

}  // namespace strata::engine
