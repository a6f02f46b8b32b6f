// Request parsing and response shapes of the OpenAI wire format, without a server.
#include "router/openai.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/auth.h"
#include "router/generation.h"

namespace strata::router {
namespace {

using Json = nlohmann::json;

absl::StatusOr<ApiRequest> Completion(const std::string& body) {
  return ParseApiRequest(Endpoint::kCompletions, body);
}
absl::StatusOr<ApiRequest> Chat(const std::string& body) {
  return ParseApiRequest(Endpoint::kChatCompletions, body);
}

// The status must be a 400 naming `param`.
void ExpectBad(const absl::StatusOr<ApiRequest>& r, const std::string& param) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(HttpStatusFor(r.status().code()), 400) << r.status();
  EXPECT_EQ(ErrorParam(r.status()), param) << r.status();
}

TEST(OpenAiParseTest, CompletionFields) {
  auto r = Completion(R"({"model":"m","prompt":"hi","max_tokens":7,"temperature":0.5,"top_p":0.9,
      "top_k":40,"seed":-3,"stop":["a","b"],"n":1,"stream":true,
      "stream_options":{"include_usage":true},"logprobs":0,"ignore_eos":true,"user":"u",
      "presence_penalty":0,"metadata":{"x":1}})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(r->prompt, "hi");
  EXPECT_FALSE(r->prompt_ids.has_value());
  EXPECT_EQ(r->max_tokens, 7);
  EXPECT_FLOAT_EQ(r->sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r->sampling.top_p, 0.9f);
  EXPECT_EQ(r->sampling.top_k, 40);
  EXPECT_EQ(r->sampling.seed, static_cast<uint64_t>(int64_t{-3}));
  EXPECT_EQ(r->stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_TRUE(r->logprobs);
  EXPECT_TRUE(r->ignore_eos);
  EXPECT_EQ(r->user, "u");
}

TEST(OpenAiParseTest, PromptForms) {
  EXPECT_EQ(Completion(R"({"model":"m","prompt":["one"]})")->prompt, "one");
  EXPECT_EQ(*Completion(R"({"model":"m","prompt":[1,2,3]})")->prompt_ids,
            (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(*Completion(R"({"model":"m","prompt":[[4,5]]})")->prompt_ids,
            (std::vector<int32_t>{4, 5}));
  ExpectBad(Completion(R"({"model":"m","prompt":["a","b"]})"), "prompt");
  ExpectBad(Completion(R"({"model":"m","prompt":[]})"), "prompt");
  ExpectBad(Completion(R"({"model":"m","prompt":[1,-2]})"), "prompt");
  ExpectBad(Completion(R"({"model":"m","prompt":[1,"x"]})"), "prompt");
  ExpectBad(Completion(R"({"model":"m","prompt":7})"), "prompt");
  ExpectBad(Completion(R"({"model":"m"})"), "prompt");
  ExpectBad(Completion(R"({"model":"m","prompt":null})"), "prompt");
}

TEST(OpenAiParseTest, ChatMessages) {
  auto r = Chat(R"({"model":"m","messages":[{"role":"developer","content":"be brief"},
      {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
      {"role":"assistant","content":null},{"role":"user","content":"c"}],
      "max_completion_tokens":3,"max_tokens":9,"logprobs":true,"top_logprobs":0})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->messages.size(), 4u);
  EXPECT_EQ(r->messages[0].role, "system");
  EXPECT_EQ(r->messages[1].content, "ab");
  EXPECT_EQ(r->messages[2].content, "");
  EXPECT_EQ(r->max_tokens, 3) << "max_completion_tokens wins";
  EXPECT_TRUE(r->logprobs);

  ExpectBad(Chat(R"({"model":"m","messages":[]})"), "messages");
  ExpectBad(Chat(R"({"model":"m"})"), "messages");
  ExpectBad(Chat(R"({"model":"m","messages":[{"role":"wizard","content":"x"}]})"),
            "messages[0].role");
  ExpectBad(Chat(R"({"model":"m","messages":[{"content":"x"}]})"), "messages[0].role");
  ExpectBad(Chat(R"({"model":"m","messages":[{"role":"user"}]})"), "messages[0].content");
  ExpectBad(Chat(R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]})"),
            "messages[0].content[0]");
  ExpectBad(Chat(R"({"model":"m","messages":"hi"})"), "messages");
}

TEST(OpenAiParseTest, EveryBadFieldIsA400NamingIt) {
  const std::string base = R"("model":"m","prompt":"p")";
  auto bad = [&](const std::string& field, const std::string& param) {
    SCOPED_TRACE(field);
    ExpectBad(Completion("{" + base + "," + field + "}"), param);
  };
  bad(R"("n":2)", "n");
  bad(R"("n":"1")", "n");
  bad(R"("max_tokens":0)", "max_tokens");
  bad(R"("max_tokens":1.5)", "max_tokens");
  bad(R"("max_tokens":"many")", "max_tokens");
  bad(R"("max_tokens":18446744073709551615)", "max_tokens");
  bad(R"("temperature":2.5)", "temperature");
  bad(R"("temperature":-1)", "temperature");
  bad(R"("top_p":1.5)", "top_p");
  bad(R"("top_k":-2)", "top_k");
  bad(R"("seed":1.5)", "seed");
  bad(R"("stop":["a","b","c","d","e"])", "stop");
  bad(R"("stop":[1])", "stop");
  bad(R"("stream":"yes")", "stream");
  bad(R"("stream_options":{"include_usage":true})", "stream_options");
  bad(R"("stream":true,"stream_options":{"include_usage":1})", "stream_options.include_usage");
  bad(R"("logprobs":2)", "logprobs");
  bad(R"("logprobs":true)", "logprobs");
  bad(R"("echo":true)", "echo");
  bad(R"("best_of":3)", "best_of");
  bad(R"("frequency_penalty":0.5)", "frequency_penalty");
  bad(R"("logit_bias":{"50256":-100})", "logit_bias");
  bad(R"("ignore_eos":"no")", "ignore_eos");
  bad(R"("model":5)", "model");
  ExpectBad(Chat(R"({"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":2})"),
            "top_logprobs");
  ExpectBad(Chat(R"({"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":0})"),
            "logprobs");
  ExpectBad(Chat(R"({"model":"m","messages":[{"role":"user","content":"x"}],
                     "tools":[{"type":"function"}]})"),
            "tools");
  ExpectBad(Completion(R"({"prompt":"p"})"), "model");
}

TEST(OpenAiParseTest, MalformedBodies) {
  for (const char* body : {"", "{", "{\"model\":", "[1,2]", "\"text\"", "{\"model\":\"m\",}"}) {
    auto r = Completion(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(HttpStatusFor(r.status().code()), 400);
    EXPECT_EQ(ErrorParam(r.status()), "");
  }
}

TEST(OpenAiParseTest, NullMeansDefault) {
  auto r = Completion(R"({"model":"m","prompt":"p","max_tokens":null,"stop":null,"n":null,
                          "temperature":null,"stream_options":null})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->max_tokens.has_value());
  EXPECT_TRUE(r->stop.empty());
}

// A key given twice keeps its last value, as scalar fields always did: repeating "prompt" cannot
// leave both a text prompt and ids, nor repeating "stop" more than 4 stop sequences (found by
// tests/fuzz/openai_request_fuzzer).
TEST(OpenAiParseTest, RepeatedKeysKeepTheLastValue) {
  auto r = Completion(R"({"model":"m","prompt":[1,2],"prompt":"text"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt, "text");
  EXPECT_FALSE(r->prompt_ids.has_value());
  r = Completion(R"({"model":"m","prompt":"text","prompt":[3]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt, "");
  EXPECT_EQ(*r->prompt_ids, (std::vector<int32_t>{3}));
  r = Completion(R"({"model":"m","prompt":"p","stop":["1","2","3","4"],"stop":["5","6","7","8"],
                     "stop":"9"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stop, (std::vector<std::string>{"9"}));
  r = Chat(R"({"model":"m","messages":[{"role":"user","content":"a"}],
               "messages":[{"role":"user","content":"b"}]})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->messages.size(), 1u);
  EXPECT_EQ(r->messages[0].content, "b");
}

// The router forwards a client's traceparent to the workers (gRPC metadata, a proto3 string) only
// in W3C's form; anything else is replaced by a new one (found by the openai_request fuzzer).
TEST(TraceparentTest, OnlyW3CFormIsForwarded) {
  const std::string good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  EXPECT_EQ(TraceparentFor(good), good);
  for (const std::string& bad : std::vector<std::string>{
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba=02b7-01",     // not hex
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",     // uppercase
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     // version ff
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",     // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",     // zero parent id
           "00-4bf92f3577b34da6a3ce929d0e0e473\x80-00f067aa0ba902b7-01",  // not UTF-8
       }) {
    const std::string out = TraceparentFor(bad);
    EXPECT_NE(out, bad);
    EXPECT_EQ(out.size(), 55u);
    EXPECT_EQ(out.substr(0, 3), "00-");
  }
}

TEST(OpenAiErrorTest, StatusMapping) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 500);
  const Json j = Json::parse(ErrorJson(ApiErrorFromStatus(
      WithCode(WithParam(absl::InvalidArgumentError("bad"), "stop"), "too_many"))));
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "stop");
  EXPECT_EQ(j["error"]["code"], "too_many");
  const Json e = Json::parse(ErrorJson({.http_status = 503, .message = "busy \xff"}));
  EXPECT_EQ(e["error"]["type"], "server_error");
  EXPECT_TRUE(e["error"]["param"].is_null());
  EXPECT_TRUE(e["error"]["code"].is_null());
  EXPECT_EQ(ErrorTypeFor(401), "authentication_error");
  EXPECT_EQ(ErrorTypeFor(404), "not_found_error");
  EXPECT_EQ(ErrorTypeFor(429), "rate_limit_error");
  EXPECT_EQ(ErrorTypeFor(413), "invalid_request_error");
}

TEST(AuthTest, BearerKeysMapToTenantsAndEverythingElseIsRefused) {
  ApiKeys keys(std::vector<ApiKey>{{.key = "sk-alpha", .tenant = "alpha"},
                                   {.key = "sk-beta", .tenant = "beta"}});
  EXPECT_EQ(*keys.Authenticate("Bearer sk-alpha"), "alpha");
  EXPECT_EQ(*keys.Authenticate("bearer  sk-beta "), "beta");
  for (const char* header : {"", "sk-alpha", "Basic sk-alpha", "Bearer sk-alph", "Bearer sk-alphaa",
                             "Bearer ", "Bearer SK-ALPHA"}) {
    absl::StatusOr<std::string> t = keys.Authenticate(header);
    ASSERT_FALSE(t.ok()) << header;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(t.status().message().find("sk-"), absl::string_view::npos) << "never echo keys";
  }
  ApiKeys open(std::vector<ApiKey>{});
  EXPECT_FALSE(open.enabled());
  EXPECT_EQ(*open.Authenticate(""), "default");
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("ab", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abcd", "abc"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

}  // namespace
}  // namespace strata::router
