// SPDX-License-Identifier: MIT
// Tests of moa/core (messages, the backend concept, any_backend, random) and the synthetic backend.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <stop_token>
#include <string>
#include <vector>

#include <moa/backends/synthetic.hpp>
#include <moa/backends/tunable_synthetic.hpp>
#include <moa/core/backend.hpp>
#include <moa/core/random.hpp>
#include <moa/core/workload.hpp>
#include <moa/version.hpp>

namespace {

struct member_backend {
  moa::response generate(const moa::request& r) {
    ++calls;
    return {.text = "member:" + std::string(r.prompt())};
  }
  int calls = 0;
};

}  // namespace

namespace adl_ns {
struct free_backend {};
inline moa::response generate(free_backend&, const moa::request& r) {
  moa::response out;
  out.text = "adl:" + std::string(r.prompt());
  return out;
}
inline std::string_view backend_name(const free_backend&) {
  return "free";
}
}  // namespace adl_ns

TEST_CASE("Core.request_and_usage") {
  auto r = moa::make_request("hello");
  REQUIRE(r.messages.size() == 1);
  CHECK(r.messages[0].role == moa::role::user);
  CHECK(r.prompt() == "hello");
  r.messages.push_back({moa::role::assistant, "hi"});
  CHECK(r.prompt() == "hello");  // the last *user* message
  moa::usage a{3, 4}, b{1, 1};
  CHECK((a + b).total() == 9);
  CHECK(moa::version().major * 10000 + moa::version().minor * 100 + moa::version().patch ==
        MOA_VERSION);
}

TEST_CASE("Backend.customisation_points") {
  member_backend m;
  CHECK(moa::generate(m, moa::make_request("x")).text == "member:x");
  adl_ns::free_backend f;
  CHECK(moa::generate(f, moa::make_request("y")).text == "adl:y");
  CHECK(moa::backend_name(f, "fallback") == "free");
  CHECK(moa::backend_name(m, "fallback") == "fallback");

  // A reference_wrapper calls through to the referenced object.
  auto ref = std::ref(m);
  moa::generate(ref, moa::make_request("z"));
  CHECK(m.calls == 2);

  // Streaming falls back to one token for a backend without generate_stream.
  std::vector<std::string> tokens;
  auto sink = [&](std::string_view t) { tokens.emplace_back(t); };
  auto resp = moa::generate_stream(m, moa::make_request("w"), moa::token_callback(sink));
  CHECK(tokens == std::vector<std::string>{"member:w"});
  CHECK(resp.text == "member:w");
}

TEST_CASE("Backend.any_backend") {
  moa::any_backend a(moa::synthetic_backend({.name = "syn"}));
  CHECK(a.name() == "syn");
  CHECK(a.streams());
  CHECK(a.target<moa::synthetic_backend>() != nullptr);
  CHECK(a.target<member_backend>() == nullptr);
  moa::any_backend b(member_backend{});
  CHECK_FALSE(b.streams());
  CHECK(b.name().empty());
  CHECK(b.generate(moa::make_request("q")).text == "member:q");
  moa::backend_ref ref(b, "wrapped");
  CHECK(ref.name() == "wrapped");
  CHECK_FALSE(ref.streams());  // any_backend reports what it wraps, not its own interface
  CHECK(ref.generate(moa::make_request("r")).text == "member:r");
}

TEST_CASE("Random.reproducible_and_uniform") {
  moa::rng a(7), b(7), c(8);
  CHECK(a() == b());
  CHECK(a() != c());
  // below(n) is uniform: chi-square over 10 bins, 100k draws; the 99.9% quantile for 9 degrees
  // of freedom is 27.9.
  moa::rng r(1);
  std::vector<int> bins(10, 0);
  const int draws = 100000;
  for (int i = 0; i < draws; ++i) ++bins[r.below(10)];
  double chi2 = 0;
  for (int n : bins) chi2 += (n - draws / 10.0) * (n - draws / 10.0) / (draws / 10.0);
  CHECK(chi2 < 27.9);
  for (int i = 0; i < 1000; ++i) {
    const double u = r.uniform();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
  }
}

TEST_CASE("Synthetic.deterministic_answers") {
  moa::synthetic_backend a({.name = "a"}), a2({.name = "a"}), b({.name = "b"});
  const auto req = moa::make_request("Why is the sky blue?");
  const auto r1 = a.generate(req);
  CHECK(r1.text == moa::synthetic_answer("a", moa::request_hash(req)));
  CHECK(r1.text == a2.generate(req).text);
  CHECK(r1.text != b.generate(req).text);
  CHECK(r1.text != a.generate(moa::make_request("other")).text);
  CHECK(r1.usage.prompt_tokens == 5);
  CHECK(r1.usage.completion_tokens == 3);
  CHECK(r1.model == "a");
  CHECK(a.calls() == 2);

  std::string streamed;
  int pieces = 0;
  auto sink = [&](std::string_view t) {
    streamed += t;
    ++pieces;
  };
  const auto r2 = a.generate_stream(req, moa::token_callback(sink));
  CHECK(streamed == r2.text);
  CHECK(pieces == 3);
}

TEST_CASE("Synthetic.latency_distributions") {
  using namespace std::chrono;
  moa::rng random(3);
  CHECK(moa::latency_model::constant(milliseconds(5)).sample(random) == milliseconds(5));
  CHECK(moa::latency_model::zero().sample(random) == nanoseconds(0));
  // Sample means within 5 standard errors (the standard deviation of an exponential is its
  // mean; of this lognormal, mean * sqrt(exp(sigma^2) - 1)).
  const int n = 40000;
  const double mean = 1e6;
  for (const auto& [model, sd] :
       {std::pair{moa::latency_model::exponential(nanoseconds(1000000)), mean},
        std::pair{moa::latency_model::lognormal(nanoseconds(1000000), 0.5),
                  mean * std::sqrt(std::exp(0.25) - 1)}}) {
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += static_cast<double>(model.sample(random).count());
    CHECK(std::abs(sum / n - mean) < 5 * sd / std::sqrt(double(n)));
  }
  CHECK_THROWS_WITH_AS(moa::latency_model::constant(nanoseconds(-1)),
                       "moa::latency_model: a latency cannot be negative", moa::invalid_argument);
  CHECK_THROWS_AS(moa::latency_model::lognormal(nanoseconds(0), 0.5), moa::invalid_argument);
}

TEST_CASE("Workload.exponential_ziggurat_is_exact") {
  // The ziggurat against the exponential's CDF: a Kolmogorov-Smirnov distance over 200,000
  // draws, whose 99.9% critical value is 1.95 / sqrt(n); and the first two moments.
  moa::rng random(17);
  const int n = 200000;
  std::vector<double> x(n);
  for (auto& v : x) v = moa::detail::standard_exponential(random);
  std::sort(x.begin(), x.end());
  double ks = 0, sum = 0, squares = 0;
  for (int i = 0; i < n; ++i) {
    const double f = -std::expm1(-x[std::size_t(i)]);
    ks = std::max({ks, f - double(i) / n, double(i + 1) / n - f});
    sum += x[std::size_t(i)];
    squares += x[std::size_t(i)] * x[std::size_t(i)];
  }
  CHECK(ks < 1.95 / std::sqrt(double(n)));
  CHECK(std::abs(sum / n - 1) < 5 / std::sqrt(double(n)));     // sd 1
  CHECK(std::abs(squares / n - 2) < 5 * std::sqrt(20.0 / n));  // Var[X^2] = 20
  CHECK(x.front() >= 0);
  CHECK(x.back() > 10);  // the tail (x > 7.7) is reached: P = 1 - (1 - e^-10)^n = 0.99
}

TEST_CASE("Workload.service_models") {
  moa::rng random(5);
  // One sampler for every model; sample means within 5 standard errors.
  const int n = 50000;
  for (const auto& m :
       {moa::service_model::exponential(2), moa::service_model::lognormal(2, 0.5),
        moa::service_model::constant(2), moa::service_model::empirical({1, 2, 3})}) {
    double sum = 0;
    for (int i = 0; i < n; ++i) sum += m.sample(random);
    const double sd = std::sqrt(m.second_moment() - m.mean() * m.mean());
    CHECK(std::abs(sum / n - m.mean()) <= 5 * sd / std::sqrt(double(n)) + 1e-12);
  }
  CHECK(moa::service_model::exponential(1).third_moment() == doctest::Approx(6));
  CHECK(moa::service_model::empirical({1, 2}).scaled(2).third_moment() == doctest::Approx(36));
  // Sigma is capped where the model stops being simulable (near 38 every draw underflows to 0).
  CHECK_THROWS_WITH_AS(moa::service_model::lognormal(1, 40), doctest::Contains("[0, 4]"),
                       moa::invalid_argument);
  CHECK_THROWS_AS(moa::service_model::lognormal(1, std::nan("")), moa::invalid_argument);
  CHECK_THROWS_AS(moa::service_model::exponential(-1), moa::invalid_argument);
  CHECK_THROWS_AS(moa::service_model::constant(HUGE_VAL), moa::invalid_argument);
  CHECK_THROWS_AS(moa::service_model::empirical({1, -1}), moa::invalid_argument);
  const auto wide = moa::service_model::lognormal(1, 4);
  int zeros = 0;
  for (int i = 0; i < 1000; ++i) zeros += wide.sample(random) == 0;
  CHECK(zeros == 0);
}

TEST_CASE("Workload.poisson_arrivals_superpose_the_users") {
  // Rates 1, 0, 3: user 1 is silent, user 2 sends three quarters of the prompts, gaps are
  // exponential at the total rate 4.
  const std::vector<double> lambda{1, 0, 3};
  const std::size_t n = 40000;
  const auto a = moa::poisson_arrivals(lambda, n, 9);
  REQUIRE(a.size() == n);
  std::size_t per_user[3] = {0, 0, 0};
  for (std::size_t i = 0; i < n; ++i) {
    ++per_user[a[i].origin];
    if (i > 0) CHECK(a[i].time >= a[i - 1].time);
  }
  CHECK(per_user[1] == 0);
  const double share = double(per_user[2]) / double(n);
  CHECK(std::abs(share - 0.75) < 5 * std::sqrt(0.75 * 0.25 / double(n)));
  CHECK(std::abs(a.back().time / double(n) - 0.25) < 5 * 0.25 / std::sqrt(double(n)));
  moa::check_trace(a, 3);
  CHECK_THROWS_WITH_AS(moa::check_trace(a, 2), doctest::Contains("born at device 2"),
                       moa::invalid_argument);
  CHECK_THROWS_WITH_AS(moa::poisson_arrivals(std::vector<double>{0, 0}, 1, 1),
                       doctest::Contains("every lambda is zero"), moa::invalid_argument);
  CHECK_THROWS_AS(moa::poisson_arrivals(std::vector<double>{1, std::nan("")}, 1, 1),
                  moa::invalid_argument);
  // Checked before anything is allocated.
  CHECK_THROWS_AS(moa::poisson_arrivals(lambda, std::size_t{1} << 40, 1), moa::invalid_argument);
}

TEST_CASE("Synthetic.injected_failures") {
  moa::synthetic_backend flaky({.name = "flaky", .error_rate = 0.3, .seed = 11});
  const int n = 4000;
  int failures = 0;
  for (int i = 0; i < n; ++i) {
    try {
      flaky.generate(moa::make_request("prompt " + std::to_string(i)));
    } catch (const moa::backend_error& e) {
      ++failures;
      REQUIRE(std::string(e.what()).find("flaky") != std::string::npos);
    }
  }
  // Binomial(4000, 0.3): standard deviation 29; allow 5 of them.
  CHECK(std::abs(failures - 0.3 * n) < 5 * std::sqrt(n * 0.3 * 0.7));
  CHECK_THROWS_WITH_AS(moa::synthetic_backend({.error_rate = 1.5}),
                       doctest::Contains("error_rate and timeout_rate are fractions"),
                       moa::invalid_argument);
}

TEST_CASE("Synthetic.honours_deadline_and_stop") {
  using namespace std::chrono;
  moa::synthetic_backend slow(
      {.name = "slow", .latency = moa::latency_model::constant(seconds(30))});
  auto req = moa::make_request("x");
  req.deadline = moa::clock::now() + milliseconds(5);
  CHECK_THROWS_AS(slow.generate(req), moa::timeout_error);

  std::stop_source source;
  source.request_stop();
  auto req2 = moa::make_request("y");
  req2.stop = source.get_token();
  CHECK_THROWS_AS(slow.generate(req2), moa::cancelled_error);

  moa::synthetic_backend hang({.name = "hang", .timeout_rate = 1.0});
  auto req3 = moa::make_request("z");
  req3.deadline = moa::clock::now() + milliseconds(2);
  CHECK_THROWS_AS(hang.generate(req3), moa::timeout_error);
}

TEST_CASE("Synthetic.records_requests_and_plants_answers") {
  moa::synthetic_backend rec({.name = "rec", .record = true, .answer = [](const moa::request& r) {
                                return r.prompt() == "empty" ? std::string() : std::string("42");
                              }});
  CHECK(rec.generate(moa::make_request("q1")).text == "42");
  CHECK(rec.generate(moa::make_request("empty")).text.empty());
  const auto log = rec.received();
  REQUIRE(log.size() == 2);
  CHECK(log[0].prompt() == "q1");
  auto copy = rec;  // copies share the log
  copy.generate(moa::make_request("q3"));
  CHECK(rec.received().size() == 3);
}

TEST_CASE("Synthetic.tunable_parameters_reach_the_answer") {
  Eigen::VectorXd start(2);
  start << 1.0, 2.0;
  moa::tunable_synthetic_backend tuned(
      {.name = "tuned",
       .parameters = start,
       .tuned_answer = [](const moa::request&, const Eigen::VectorXd& p) {
         return p.sum() > 2.5 ? std::string("right") : std::string("wrong");
       }});
  CHECK(tuned.parameters() == start);
  CHECK(tuned.generate(moa::make_request("q")).text == "right");
  tuned.set_parameters(Eigen::VectorXd::Zero(2));
  CHECK(tuned.generate(moa::make_request("q")).text == "wrong");
  auto copy = tuned;  // parameters are per copy
  copy.set_parameters(start);
  CHECK(tuned.parameters().isZero());
  CHECK(copy.generate(moa::make_request("q")).text == "right");
}
