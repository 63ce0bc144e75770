// SPDX-License-Identifier: MIT
// moa_device: one device of a ZeroMQ network of processes, the same as `moa device`, as a program
// of its own (what tests/network_processes.cpp starts, and what a deployment runs per host).
//
//   host A: moa_device keygen --out keys/a    (copy keys/a.pub to B, B's to A)
//           moa_device device --index 0 --peers tcp://A:5550,tcp://B:5550 --bind tcp://*:5550
//             --key keys/a.key --peers-keys keys/a.pub,keys/b.pub --clients-keys keys/clients
//   host B: the same with --index 1 and --key keys/b.key
//
//       +----------+   call / answer / refused / ping   +----------+
//       | device 0 | <--------------------------------> | device 1 |   ... no coordinator
//       +----------+                                    +----------+
//            ^ submit / result / stats / stop (clients)
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/common.hpp"
#include "cli/network_commands.hpp"
#include "cli/zmq_tsan.hpp"  // TSan: libzmq is not instrumented

int main(int argc, char** argv) {
  CLI::App app{"moa_device: one device of a ZeroMQ network of MoA devices"};
  app.require_subcommand(1);
  int exit_code = 0;
  moa::cli::add_device_command(app, exit_code);
  moa::cli::add_keygen_command(app, exit_code);  // a host that runs only moa_device makes its key
  return moa::cli::run_program(app, argc, argv, "moa_device", exit_code);
}
