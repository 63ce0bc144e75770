// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// The exception policy of moa: every library exception derives from moa::error, itself a
/// std::runtime_error, and is thrown through MOA_THROW so there is one place to change it.
///
/// moa needs exceptions: a backend that throws is a failed call that the failure policy records
/// and routes around, which cannot be expressed without catching. -fno-exceptions is therefore
/// not supported (see docs/ARCHITECTURE.md).

#include <stdexcept>
#include <string>

#define MOA_THROW(...) throw __VA_ARGS__

namespace moa {

/// @brief Base of every exception thrown by moa.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// @brief A topology (layers, proposers, aggregator, gossip fan-out, DAG) is malformed.
/// Thrown for runtime-built topologies; compile-time topologies are rejected by the compiler.
class topology_error : public error {
 public:
  using error::error;
};

/// @brief A backend failed to produce an answer. Backends may throw it (or anything derived from
/// std::exception); the executor records the message in the trace.
class backend_error : public error {
 public:
  using error::error;
};

/// @brief A call or a run passed its deadline.
class timeout_error : public error {
 public:
  using error::error;
};

/// @brief A run was cancelled through its std::stop_token.
class cancelled_error : public error {
 public:
  using error::error;
};

/// @brief A value given to moa is out of its domain (a negative latency, a zero thread count, ...).
class invalid_argument : public error {
 public:
  using error::error;
};

/// @brief result::value() on a run that did not produce an answer. what() names the failed calls.
class run_error : public error {
 public:
  using error::error;
};

}  // namespace moa
