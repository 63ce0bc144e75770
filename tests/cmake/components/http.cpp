// SPDX-License-Identifier: MIT
// moa::http: the HTTP backend links (libcurl, nlohmann-json) and reports a refused connection
// as a typed error.
#include <moa/backends/openai.hpp>
#include <moa/moa.hpp>

#include <iostream>

int main() {
  moa::openai_backend b({.base_url = "http://127.0.0.1:1/v1",  // nothing listens on port 1
                         .retry = {.max_attempts = 1},
                         .connect_timeout = std::chrono::milliseconds(2000)});
  try {
    (void)b.generate(moa::make_request("ping"));
  } catch (const moa::error& e) {
    std::cout << "http: refused (" << e.what() << ")\n";
    return 0;
  }
  std::cout << "http: answered, which nothing on port 1 should\n";
  return 1;
}
