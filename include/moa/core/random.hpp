// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The random engine moa uses for sampling (gossip peers, synthetic latencies, simulation).
///
/// Hand-written rather than std::mt19937_64 because simulations draw hundreds of millions of
/// numbers: xoshiro256** is several times faster, has a 32-byte state (cheap to give every
/// replication and every backend its own) and passes BigCrush. Seeding goes through splitmix64,
/// as its authors recommend, so nearby seeds give unrelated streams.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>

namespace moa {

namespace detail {
__extension__ using uint128 = unsigned __int128;  // __extension__: silences -Wpedantic
}  // namespace detail

/// @brief splitmix64: a one-word generator, used to seed and to hash.
constexpr std::uint64_t splitmix64(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// @brief Mixes two words into one well-distributed word (for deriving per-call seeds).
constexpr std::uint64_t mix_seed(std::uint64_t a, std::uint64_t b) noexcept {
  std::uint64_t s = a ^ (b * 0x9e3779b97f4a7c15ULL);
  return splitmix64(s);
}

/// @brief xoshiro256**: a UniformRandomBitGenerator for std::*_distribution and for moa's own
/// samplers.
class rng {
 public:
  using result_type = std::uint64_t;

  constexpr explicit rng(std::uint64_t seed = 0x5eed) noexcept {
    for (auto& w : s_) w = splitmix64(seed);
  }
  static constexpr result_type min() noexcept { return 0; }
  static constexpr result_type max() noexcept { return std::numeric_limits<result_type>::max(); }

  constexpr result_type operator()() noexcept {
    const std::uint64_t result = std::rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = std::rotl(s_[3], 45);
    return result;
  }

  /// Uniform in [0, 1), 53 random bits.
  constexpr double uniform() noexcept { return double((*this)() >> 11) * 0x1.0p-53; }

  /// Uniform integer in [0, n), n > 0, without modulo bias (Lemire's multiply-shift).
  constexpr std::uint64_t below(std::uint64_t n) noexcept {
    auto m = static_cast<detail::uint128>((*this)()) * n;
    auto low = static_cast<std::uint64_t>(m);
    if (low < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<detail::uint128>((*this)()) * n;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::uint64_t>(m >> 64);
  }

 private:
  std::uint64_t s_[4]{};
};

/// @brief Fills `out` with distinct indices drawn uniformly from [0, population) and returns how
/// many it wrote: min(out.size(), population). Floyd's algorithm: one draw per index, no
/// allocation, every subset equally likely (their order is not uniform).
constexpr std::size_t sample_distinct(rng& random, std::size_t population,
                                      std::span<std::uint32_t> out) noexcept {
  const std::size_t take = out.size() < population ? out.size() : population;
  std::size_t written = 0;
  // For j in [population - take, population): draw t in [0, j]; keep t unless already taken,
  // else keep j (which cannot have been taken yet).
  for (std::size_t j = population - take; j < population; ++j) {
    auto t = static_cast<std::uint32_t>(random.below(j + 1));
    for (std::size_t i = 0; i < written; ++i)
      if (out[i] == t) {
        t = static_cast<std::uint32_t>(j);
        break;
      }
    out[written++] = t;
  }
  return written;
}

}  // namespace moa
