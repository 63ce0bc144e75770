// SPDX-License-Identifier: MIT
// The moa program: the library's main job from the command line.
//
//   moa run "prompt"        a layered MoA on embedded synthetic models
//   moa search              a DAG topology search (Heterogeneous Swarms) on synthetic models
//   moa stability           is a gossip network stable? loads, margins, queue/latency estimates
//   moa simulate            discrete-event simulation of a gossip network (one run or a sweep)
//   moa serve               an OpenAI-compatible server whose models are MoA layouts
//   moa device / keygen / submit   a ZeroMQ network of devices: a device, its keys, a client
//
// Every subcommand has --help. Exit codes: 0 success, 1 the work ran but gave no answer (or
// failed), 2 bad input (an option, a config file, an output path); never a signal.
#include <CLI/CLI.hpp>

#include <iostream>

#include <moa/moa.hpp>

#include "cli/bench_command.hpp"
#include "cli/eval_command.hpp"
#include "cli/network_commands.hpp"
#include "cli/queueing_commands.hpp"
#include "cli/replay_command.hpp"
#include "cli/run_command.hpp"
#include "cli/search_command.hpp"
#if MOA_CLI_ZMQ
#include "cli/submit_command.hpp"
#include "cli/zmq_tsan.hpp"  // TSan: libzmq is not instrumented
#endif
#if MOA_CLI_SERVE
#include "cli/serve_command.hpp"
#endif

int main(int argc, char** argv) {
  CLI::App app{"moa: run several LLMs together as a Mixture-of-Agents"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] {
    const auto v = moa::version();
    return "moa " + std::to_string(v.major) + "." + std::to_string(v.minor) + "." +
           std::to_string(v.patch);
  }());
  int exit_code = 0;
  moa::cli::add_run_command(app, exit_code);
  moa::cli::add_search_command(app);
  moa::cli::add_stability_command(app);
  moa::cli::add_simulate_command(app);
  moa::cli::add_bench_command(app, exit_code);
  moa::cli::add_eval_command(app, exit_code);
  moa::cli::add_replay_command(app);
  moa::cli::add_network_command(app, exit_code);
#if MOA_CLI_SERVE
  moa::cli::add_serve_command(app, exit_code);
#endif
#if MOA_CLI_ZMQ
  moa::cli::add_device_command(app, exit_code);
  moa::cli::add_keygen_command(app, exit_code);
  moa::cli::add_submit_command(app, exit_code);
#endif
  return moa::cli::run_program(app, argc, argv, "moa", exit_code);
}
