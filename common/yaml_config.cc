#include "common/yaml_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file.h"

namespace strata {

absl::StatusOr<YamlConfig> YamlConfig::LoadFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

absl::StatusOr<YamlConfig> YamlConfig::Parse(absl::string_view text, std::string source_name) {
  try {
    YAML::Node root = YAML::Load(std::string(text));
    if (root.IsDefined() && !root.IsNull() && !root.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(source_name, ": the top level must be a mapping"));
    }
    return YamlConfig(std::move(root), std::move(source_name));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ":", e.mark.line + 1, ":", e.mark.column + 1,
                                                   ": invalid YAML: ", e.msg));
  }
}

absl::StatusOr<YAML::Node> YamlConfig::Find(absl::string_view dotted_path) const {
  // Walk with reset(): YAML::Node's operator= would overwrite the node's contents, and the const
  // operator[] does not insert missing keys.
  YAML::Node node;
  node.reset(root_);
  std::string walked;
  for (absl::string_view key : absl::StrSplit(dotted_path, '.')) {
    if (!node.IsDefined() || node.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
    if (!node.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ":", node.Mark().line + 1, ": '", walked,
                                                     "' must be a mapping to hold '", key, "'"));
    }
    const YAML::Node& parent = node;
    YAML::Node child = parent[std::string(key)];
    if (!child.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
    node.reset(child);
    absl::StrAppend(&walked, walked.empty() ? "" : ".", key);
  }
  return node;
}

absl::Status YamlConfig::TypeError(absl::string_view dotted_path, const YAML::Node& node,
                                   absl::string_view want) const {
  return absl::InvalidArgumentError(absl::StrCat(source_, ":", node.Mark().line + 1, ": '", dotted_path,
                                                 "' has the wrong type (want ", want, ")"));
}

}  // namespace strata
