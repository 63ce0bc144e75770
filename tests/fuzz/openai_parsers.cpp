// SPDX-License-Identifier: MIT
// libFuzzer target for the wire parsers of moa/backends/openai (clang -fsanitize=fuzzer,address):
// arbitrary bytes as a completion body, as an error body, and as an event stream fed in pieces
// whose sizes come from the input. Every outcome must be an answer or a moa::http_error whose
// message is valid UTF-8: any other exception, a crash or a sanitizer report is a bug.
// scripts/test.sh's `fuzz` stage runs it for a bounded time from a corpus of recorded server
// answers (tests/fixtures/openai).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <moa/backends/openai/protocol.hpp>

namespace {

// Every message made from a server's bytes is valid UTF-8 (a JSON dump would throw otherwise):
// what `moa run --format json` prints.
void require_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
  } catch (...) {
    std::abort();
  }
}

void completion(std::string_view data) {
  try {
    const auto r =
        moa::openai::parse_response(data, {.url = "fuzz", .request_id = {}, .status = 200});
    (void)r;
  } catch (const moa::http_error& e) {
    require_utf8(e.what());
  }
  try {
    const auto info =
        moa::openai::parse_error_info(data, {.url = "fuzz", .request_id = {}, .status = 400});
    require_utf8(moa::http_error(info).what());
  } catch (...) {
    std::abort();  // parse_error_info must never throw
  }
  for (std::size_t limit : {std::size_t{0}, std::size_t{3}, std::size_t{200}, data.size()})
    require_utf8(moa::openai::detail::snippet(data, limit));
}

void stream(std::string_view data, std::uint8_t step) {
  moa::openai::sse_parser sse;
  moa::openai::stream_accumulator acc;
  std::string text;
  auto on_token = [&text](std::string_view t) { text += t; };
  try {
    const std::size_t n = step == 0 ? data.size() : step;
    for (std::size_t i = 0; i < data.size(); i += n)
      sse.feed(data.substr(i, n), [&](std::string_view event) { acc.on_data(event, on_token); });
    const auto r = acc.finish();
    if (r.text != text) std::abort();  // the answer is exactly what was streamed
  } catch (const moa::http_error& e) {
    require_utf8(e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view data(reinterpret_cast<const char*>(bytes) + 1, size - 1);
  completion(data);
  stream(data, bytes[0]);
  return 0;
}
