// Loading YAML configuration files (cluster and service configs) with errors that name the file,
// the key path and the line, and typed lookups with defaults.
#pragma once

#include <string>
#include "absl/strings/string_view.h"
#include <type_traits>

#include "absl/status/statusor.h"
#include "yaml-cpp/yaml.h"

namespace strata {

template <typename T>
constexpr absl::string_view YamlTypeName() {
  if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_integral_v<T>) return "an integer";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else if constexpr (std::is_same_v<T, std::string>) return "a string";
  else return "a value of another type";
}

// A parsed YAML document plus where it came from, for error messages.
class YamlConfig {
 public:
  static absl::StatusOr<YamlConfig> LoadFile(const std::string& path);
  static absl::StatusOr<YamlConfig> Parse(absl::string_view text, std::string source_name);

  const YAML::Node& root() const { return root_; }
  const std::string& source() const { return source_; }

  // Value at a dotted path ("router.http.port"); `fallback` if the key is absent; an error naming
  // the file, path and line if present with the wrong type.
  template <typename T>
  absl::StatusOr<T> Get(absl::string_view dotted_path, T fallback) const;

 private:
  YamlConfig(YAML::Node root, std::string source) : root_(std::move(root)), source_(std::move(source)) {}
  absl::StatusOr<YAML::Node> Find(absl::string_view dotted_path) const;
  absl::Status TypeError(absl::string_view dotted_path, const YAML::Node& node, absl::string_view want) const;

  YAML::Node root_;
  std::string source_;
};

template <typename T>
absl::StatusOr<T> YamlConfig::Get(absl::string_view dotted_path, T fallback) const {
  absl::StatusOr<YAML::Node> node = Find(dotted_path);
  if (!node.ok()) return node.status();
  if (!node->IsDefined() || node->IsNull()) return fallback;
  try {
    return node->as<T>();
  } catch (const YAML::Exception&) {
    return TypeError(dotted_path, *node, YamlTypeName<T>());
  }
}

}  // namespace strata
