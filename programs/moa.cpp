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
//
// Called moa_device (a link to this program, made by the build and by cmake --install), it is the
// program a deployment runs per host: only `device` and `keygen`, the same code as `moa device`
// and `moa keygen`. One program, not two builds of the same commands.
//
//   host A: moa_device keygen --out keys/a    (copy keys/a.pub to B, B's to A)
//           moa_device device --index 0 --peers tcp://A:5550,tcp://B:5550 --bind tcp://*:5550
//             --key keys/a.key --peers-keys keys/a.pub,keys/b.pub --clients-keys keys/clients
//   host B: the same with --index 1 and --key keys/b.key
#include <CLI/CLI.hpp>

#include <filesystem>
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

namespace {

std::string version_line(const char* program) {
  const auto v = moa::version();
  return std::string(program) + " " + std::to_string(v.major) + "." + std::to_string(v.minor) +
         "." + std::to_string(v.patch);
}

#if MOA_CLI_ZMQ
int device_program(int argc, char** argv) {
  CLI::App app{"moa_device: one device of a ZeroMQ network of MoA devices"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_line("moa_device"));
  int exit_code = 0;
  moa::cli::add_device_command(app, exit_code);
  moa::cli::add_keygen_command(app, exit_code);  // a host that runs only moa_device makes its key
  return moa::cli::run_program(app, argc, argv, "moa_device", exit_code);
}
#endif

}  // namespace

int main(int argc, char** argv) {
#if MOA_CLI_ZMQ
  if (argc > 0 && std::filesystem::path(argv[0]).filename() == "moa_device")
    return device_program(argc, argv);
#endif
  CLI::App app{"moa: run several LLMs together as a Mixture-of-Agents"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_line("moa"));
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
