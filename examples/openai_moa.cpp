// SPDX-License-Identifier: MIT
// A 2-layer Mixture-of-Agents over OpenAI-compatible endpoints (llama.cpp's llama-server, vLLM,
// Ollama, hosted services):
//
//          layer 1              layer 2          aggregator
//   prompt -> [e0] [e1] [e2] -> [e0] [e1] [e2] -> [e0] -> answer (streamed)
//
// Endpoints come from the command line or from MOA_ENDPOINTS (comma-separated base URLs); with
// fewer than three, the endpoints are reused in turn. API keys come from the variable named by
// --api-key-env (default OPENAI_API_KEY), never from the command line.
//
//   openai_moa [--endpoint URL]... [--model NAME] [--api-key-env VAR] [--max-tokens N]
//              [--budget TOKENS] [prompt]
//   MOA_ENDPOINTS=http://127.0.0.1:8080/v1,http://127.0.0.1:8081/v1 openai_moa "Why is the sky
//   blue?"
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <moa/backends/openai.hpp>
#include <moa/moa.hpp>

int main(int argc, char** argv) {
  std::vector<std::string> endpoints;
  std::string model, key_env = "OPENAI_API_KEY", prompt = "Why is the sky blue?";
  int max_tokens = 64;
  std::size_t budget = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "openai_moa: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--endpoint")
      endpoints.push_back(value());
    else if (a == "--model")
      model = value();
    else if (a == "--api-key-env")
      key_env = value();
    else if (a == "--max-tokens")
      max_tokens = std::stoi(value());
    else if (a == "--budget")
      budget = std::stoul(value());
    else
      prompt = std::string(a);
  }
  if (endpoints.empty())
    if (const char* env = std::getenv("MOA_ENDPOINTS")) {
      std::string_view list = env;
      while (!list.empty()) {
        const auto comma = list.find(',');
        if (auto e = list.substr(0, comma); !e.empty()) endpoints.emplace_back(e);
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
      }
    }
  if (endpoints.empty()) {
    std::cerr << "openai_moa: give endpoints with --endpoint URL (repeatable) or MOA_ENDPOINTS\n";
    return 2;
  }

  std::vector<moa::any_backend> backends;
  for (std::size_t i = 0; i < 3; ++i) {
    moa::openai_options o;
    o.base_url = endpoints[i % endpoints.size()];
    o.model = model;
    o.api_key_env = key_env;
    o.name = "e" + std::to_string(i);
    backends.emplace_back(moa::openai_backend(o));
  }
  moa::runtime_pipeline pipe(std::move(backends),
                             {.layers = {{0, 1, 2}, {0, 1, 2}}, .aggregator = 0});

  auto req = moa::make_request(prompt);
  req.sampling.max_tokens = max_tokens;
  req.sampling.seed = 1;
  moa::aggregation_prompt agg;
  agg.token_budget = budget;
  moa::run_options opt;
  opt.prompt = &agg;
  opt.quorum = 2;
  opt.on_token = [](std::string_view t) { std::cout << t << std::flush; };
  std::cout << "answer: ";
  const moa::result r = pipe.run(moa::concurrent_executor(3), req, opt);
  std::cout << "\nstatus: " << moa::to_string(r.status) << '\n';
  if (!r.error.empty()) std::cout << "error: " << r.error << '\n';
  std::cout << '\n' << r.trace << '\n';
  const auto usage = moa::openai::summarize_usage(r);
  for (const auto& m : usage.per_model)
    std::cout << "usage " << m.model << ": " << m.usage.prompt_tokens << " in, "
              << m.usage.completion_tokens << " out in " << m.calls << " calls\n";
  std::cout << "usage total: " << usage.total.prompt_tokens << " in, "
            << usage.total.completion_tokens << " out\n";
  return r.has_answer() ? 0 : 1;
}
