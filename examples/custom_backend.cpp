// SPDX-License-Identifier: MIT
// Plugging in your own backend: anything with generate(const moa::request&) -> moa::response.
//
//   prompt ─┬─> shouty ─┐
//           └─> echo   ─┴─> echo (aggregator) ─> answer
#include <moa/moa.hpp>

#include <cctype>
#include <iostream>
#include <string>

//! [custom_backend]
// A backend is a plain type: this one upper-cases the prompt. A real one would call a model.
struct shouty {
  moa::response generate(const moa::request& r) {
    std::string text(r.prompt());
    for (auto& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    moa::response out;
    out.text = text + "!";
    out.usage = {moa::estimate_tokens(r.prompt()), moa::estimate_tokens(out.text)};
    return out;
  }
  std::string_view name() const { return "shouty"; }  // optional: names it in traces
};

// This one reports how many references it was given (they arrive in a system message).
struct echo {
  moa::response generate(const moa::request& r) {
    moa::response out;
    out.text = "echo saw " + std::to_string(r.messages.size()) + " messages";
    return out;
  }
  std::string_view name() const { return "echo"; }
};
//! [custom_backend]

int main() {
  using t = moa::topology<moa::layers<1, moa::proposers<0, 1>>, moa::aggregator<1>>;
  auto pipeline = moa::make_pipeline<t>(shouty{}, echo{});
  const auto r = pipeline.run("hello moa");
  std::cout << r.trace << "answer: " << r.answer << '\n';
  return r.ok() ? 0 : 1;
}
