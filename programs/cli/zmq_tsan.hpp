// SPDX-License-Identifier: MIT
#pragma once

// Include from exactly one file of a program that links libzmq (it defines a function).
// libzmq is not built with ThreadSanitizer: the synchronisation inside its I/O threads is
// invisible to TSan, which then reports races inside libzmq (eventfd/epoll) that are not there.
// Our own data never crosses threads through ZeroMQ without a mutex (see moa/net/zmq_device.hpp).
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
extern "C" const char* __tsan_default_suppressions() {
  // CURVE: libzmq's I/O thread decrypts a message with libsodium (also uninstrumented) into the
  // buffer it then hands over through its own lock-free pipe.
  return "called_from_lib:libzmq.so.5\nrace:libzmq.so.5\nrace:libsodium.so.23\n";
}
// A device's second SIGTERM/SIGINT exits at once (_exit) by design, with its threads running;
// TSan's _exit hook would report them as leaked and turn the documented exit code into 66.
extern "C" const char* __tsan_default_options() {
  return "report_thread_leaks=0";
}
#endif
#endif
