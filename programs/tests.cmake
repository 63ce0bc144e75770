# SPDX-License-Identifier: MIT
# Tests of the programs: each runs `moa` or `moa_device` and checks what it prints.

add_test(NAME cli.run_table COMMAND moa_cli run "Why is the sky blue?" --layers 2 --proposers 3)
set_tests_properties(cli.run_table PROPERTIES
  PASS_REGULAR_EXPRESSION "answer: [a-z]+ answers [0-9a-f]+.*aggregator")
add_test(NAME cli.run_json COMMAND moa_cli run "hi" --format json --executor concurrent)
set_tests_properties(cli.run_json PROPERTIES PASS_REGULAR_EXPRESSION "\"status\": \"ok\"")
add_test(NAME cli.bad_option COMMAND moa_cli run "hi" --layers -1)
set_tests_properties(cli.bad_option PROPERTIES WILL_FAIL TRUE)
add_test(NAME cli.bad_aggregator COMMAND moa_cli run "hi" --proposers 2 --aggregator 5)
set_tests_properties(cli.bad_aggregator PROPERTIES
  PASS_REGULAR_EXPRESSION "the aggregator is backend 5, but only 2 backends are given")
add_test(NAME cli.search COMMAND moa_cli search --quiet)
set_tests_properties(cli.search PROPERTIES PASS_REGULAR_EXPRESSION "\"stop\": \"target\"")
# The LLM-judge utility on the synthetic bed: its planted judge rates each answer through the rubric
# request and parser, and the search still reaches the planted DAG (utility 1: target).
add_test(NAME cli.search_judge COMMAND moa_cli search --quiet --utility judge)
set_tests_properties(cli.search_judge PROPERTIES PASS_REGULAR_EXPRESSION
  "\"judge\": {[^}]*\"failed\": 0,[^}]*\"model\": \"planted\",[^}]*\"unrated\": 0[^}]*}.*\"stop\": \"target\",[^}]*\"utility\": 1\\.0")
add_test(NAME cli.stability COMMAND moa_cli stability)
set_tests_properties(cli.stability PROPERTIES PASS_REGULAR_EXPRESSION "verdict: STABLE")
add_test(NAME cli.stability_bad_fanout COMMAND moa_cli stability -k 4)
set_tests_properties(cli.stability_bad_fanout PROPERTIES
  PASS_REGULAR_EXPRESSION "larger than the 3 other devices")
add_test(NAME cli.simulate COMMAND moa_cli simulate -r 2 --horizon 2000)
set_tests_properties(cli.simulate PROPERTIES PASS_REGULAR_EXPRESSION "stable")
# The adaptive ramp (docs/ADAPTIVE.md), short: (2, 2) at half the limit, refusals past (1, 1)'s.
add_test(NAME cli.simulate_adaptive COMMAND moa_cli simulate --adaptive -n 4 --alpha 1 1 1 3
         --layouts 2x2,1x1 --ramp 0.5:3.5:3 --phase 5000)
set_tests_properties(cli.simulate_adaptive PROPERTIES PASS_REGULAR_EXPRESSION
  "0\\.50 +[0-9]+ +0 +1\\.000 +0\\.000 .*3\\.50 +[0-9]+ +[1-9][0-9]* ")
# The same policy live, then the simulator on the measured service times (docs/ADAPTIVE.md).
add_test(NAME cli.network_adaptive COMMAND moa_cli network --adaptive -n 4 --alpha-ms 1,1,1,3
         --latency exponential --layouts 2x2,1x1 --ramp 0.3:3.5:3 --phase 2000)
set_tests_properties(cli.network_adaptive PROPERTIES PASS_REGULAR_EXPRESSION
  "live ramp: n=4, [0-9]+ prompts, [1-9][0-9]* refused")
add_test(NAME cli.help COMMAND moa_cli run --help)
set_tests_properties(cli.help PROPERTIES PASS_REGULAR_EXPRESSION "--layers.*--executor")

add_test(NAME cli.network COMMAND moa_cli network --prompts 300 --load 0.5)
set_tests_properties(cli.network PROPERTIES
  PASS_REGULAR_EXPRESSION "L\\(M/G/1\\).*300 submitted, 300 complete.*STABLE")

add_test(NAME cli.bench COMMAND moa_cli bench -l 2 -p 3 -n 200 --latency-ms 1 --latency-runs 3)
set_tests_properties(cli.bench PROPERTIES
  PASS_REGULAR_EXPRESSION "inline +7 .*concurrent +7 .*async +7 .*critical-path efficiency.*async")
add_test(NAME cli.bench_vote COMMAND moa_cli bench --path async --in-flight 500 -n 1000 --policy vote --latency-ms 0)
set_tests_properties(cli.bench_vote PROPERTIES PASS_REGULAR_EXPRESSION "policy vote.*async +13 +4 +500")

# `moa run --policy`: the synthetic models' hash answers never agree and never name an index,
# so vote breaks a 3-way tie by plan order and a judge's reply is an explicit, reported failure.
add_test(NAME cli.run_vote COMMAND moa_cli run "hi" --policy vote --format json)
set_tests_properties(cli.run_vote PROPERTIES
  PASS_REGULAR_EXPRESSION "\"policy\": \"majority_vote\".*\"status\": \"ok\"")
add_test(NAME cli.run_judge_nonsense COMMAND moa_cli run "hi" --policy judge)
set_tests_properties(cli.run_judge_nonsense PROPERTIES
  PASS_REGULAR_EXPRESSION "status: degraded.*names no answer between 1 and 3.*policy: judge_select")
add_test(NAME cli.run_sparse_keeps_all_on_nonsense COMMAND moa_cli run "hi" --policy sparse
  --moderate --layers 3)
set_tests_properties(cli.run_sparse_keeps_all_on_nonsense PROPERTIES
  PASS_REGULAR_EXPRESSION "status: ok.*policy: sparse \\(4 calls of its own, fell back\\).*kept every answer")
add_test(NAME cli.run_bad_judge COMMAND moa_cli run "hi" --policy judge --judge 7)
set_tests_properties(cli.run_bad_judge PROPERTIES
  PASS_REGULAR_EXPRESSION "--judge 7 names no backend: 3 are given")

# Against real llama-servers (label llama; skipped when the server is not built).
if(MOA_HAS_OPENAI)
  add_test(NAME cli.run_endpoint
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/with_llama.sh 1 bash -c
                   "exec $<TARGET_FILE:moa_cli> run hello --endpoint \"$MOA_ENDPOINTS\" --layers 1 --proposers 2 --max-tokens 8 --format json")
  set_tests_properties(cli.run_endpoint PROPERTIES LABELS llama SKIP_RETURN_CODE 77 TIMEOUT 120
    PASS_REGULAR_EXPRESSION "\"status\": \"ok\".*\"completion_tokens\": [1-9]")
  # A topology search over two real models, scored on a two-example dataset.
  add_test(NAME cli.search_endpoint
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/with_llama.sh 2 bash -c
                   "IFS=, read -r a b <<< \"$MOA_ENDPOINTS\"; exec $<TARGET_FILE:moa_cli> search --endpoint $a --endpoint $b --dataset ${PROJECT_SOURCE_DIR}/tests/fixtures/search_dataset.jsonl --max-tokens 4 --iterations 2 --particles 3 --patience 2 --quiet")
  set_tests_properties(cli.search_endpoint PROPERTIES LABELS llama SKIP_RETURN_CODE 77 TIMEOUT 180
    PASS_REGULAR_EXPRESSION "\"nodes\".*\"name\": \"alpha\".*\"stop\": \"(max_iterations|patience|target)\"")
  # The judge utility against a real server: alpha and beta searched, gamma (on the second server)
  # judging. Whether a small model's replies hold a [[rating]] is the model's business: the test
  # checks that the judge was called over HTTP and accounted for (exit 0, or 1 when it rated none).
  add_test(NAME cli.search_judge_endpoint
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/with_llama.sh 2 bash -c
                   "IFS=, read -r a b <<< \"$MOA_ENDPOINTS\"; $<TARGET_FILE:moa_cli> search --endpoint $a --endpoint $b --endpoint $b --utility judge --judge gamma --dataset ${PROJECT_SOURCE_DIR}/tests/fixtures/search_dataset.jsonl --max-tokens 4 --judge-max-tokens 32 --iterations 1 --particles 2 --patience 1 --quiet; rc=$?; [ $rc -le 1 ]")
  set_tests_properties(cli.search_judge_endpoint PROPERTIES LABELS llama SKIP_RETURN_CODE 77
    TIMEOUT 180 PASS_REGULAR_EXPRESSION
    "\"judge\": {[^}]*\"calls\": [1-9][0-9]*,[^}]*\"model\": \"gamma\",[^}]*\"tokens_out\": [1-9][^}]*}.*\"nodes\"")
endif()

# Networks of moa_device processes on 127.0.0.1.
if(MOA_DEVICE_PROGRAM)
  find_package(doctest 2.4 REQUIRED CONFIG)
  add_executable(moa_network_process_tests ${PROJECT_SOURCE_DIR}/tests/network_processes.cpp)
  # moa::queueing: the adaptive layout policy (moa/net/adaptive.hpp) the devices run, and the
  # roster's DAG layouts (Eigen).
  target_link_libraries(moa_network_process_tests PRIVATE moa::moa moa::queueing moa_doctest_main
                        cppzmq nlohmann_json::nlohmann_json)
  target_include_directories(moa_network_process_tests PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_definitions(moa_network_process_tests PRIVATE
    MOA_DEVICE_PROGRAM="${MOA_DEVICE_PROGRAM}"
    MOA_TEST_LOG_DIR="${CMAKE_CURRENT_BINARY_DIR}")
  if(MOA_HAS_SERVE)  # moa_device --metrics
    target_compile_definitions(moa_network_process_tests PRIVATE MOA_DEVICE_METRICS=1)
  endif()
  if(TARGET moa_cli)  # `moa device`, for the signal tests
    target_compile_definitions(moa_network_process_tests PRIVATE
      MOA_CLI_PROGRAM="$<TARGET_FILE:moa_cli>")
    add_dependencies(moa_network_process_tests moa_cli)
  endif()
  add_test(NAME network.processes COMMAND moa_network_process_tests)
  set_tests_properties(network.processes PROPERTIES TIMEOUT 180 LABELS network)
  if(MOA_HAS_OPENAI)
    add_test(NAME network.processes_llama
             COMMAND bash ${PROJECT_SOURCE_DIR}/tests/with_llama.sh 3
                     $<TARGET_FILE:moa_network_process_tests> --no-skip
                     -tc=Network.processes_serve_real_models)
    set_tests_properties(network.processes_llama PROPERTIES LABELS "network;llama"
                         SKIP_RETURN_CODE 77 TIMEOUT 180
                         FAIL_REGULAR_EXPRESSION "test cases: +0 [|]")  # the filter must match
  endif()
  # moa/net/zmq*.hpp and the roster's device backend compile on their own (the generic header
  # test excludes them).
  set(_zmq_header_tus)
  foreach(_h moa/net/zmq_wire.hpp moa/net/zmq_security.hpp moa/net/zmq_device.hpp
             moa/net/zmq_client.hpp moa/config/roster_device.hpp)
    string(MAKE_C_IDENTIFIER ${_h} _id)
    set(_tu ${CMAKE_CURRENT_BINARY_DIR}/headers/${_id}.cpp)
    file(CONFIGURE OUTPUT ${_tu} CONTENT "#include <${_h}>\n#include <${_h}>\n")
    list(APPEND _zmq_header_tus ${_tu})
  endforeach()
  add_library(moa_zmq_header_test OBJECT ${_zmq_header_tus})
  target_link_libraries(moa_zmq_header_test PRIVATE moa::moa moa::queueing moa_dev_settings
                        cppzmq nlohmann_json::nlohmann_json)
endif()

# `moa eval` (docs/EVAL.md): layouts of the synthetic roster on the example arithmetic set, where
# the planted answers make the 3-model vote right on 11 of 12 items and its members on 8-9.
set(_eval_data ${PROJECT_SOURCE_DIR}/examples/data)
add_test(NAME cli.eval COMMAND moa_cli eval --roster ${_eval_data}/roster_synthetic.json
         --dataset ${_eval_data}/arithmetic.jsonl --score number --bootstrap 500)
set_tests_properties(cli.eval PROPERTIES PASS_REGULAR_EXPRESSION
  "12 items, scorer number.*alpha +12 +0\\.750 .*beta +12 +0\\.667 .*moa-vote +12 +0\\.917 +\\[0\\.[0-9]+, 1\\.000\\] +630 +252 .* 4\\.00 ")
add_test(NAME cli.eval_bad_dataset COMMAND moa_cli eval --roster ${_eval_data}/roster_synthetic.json
         --dataset ${_eval_data}/arithmetic.jsonl --format csv)
set_tests_properties(cli.eval_bad_dataset PROPERTIES
  PASS_REGULAR_EXPRESSION "arithmetic\\.jsonl:1: a quote inside an unquoted field")
# `moa eval` killed with SIGKILL mid-run, then rerun: every item once, the torn last line dropped
# and redone, the report equal to an uninterrupted run's (tests/eval_kill_resume.sh).
add_test(NAME cli.eval_kill_resume
         COMMAND bash ${PROJECT_SOURCE_DIR}/tests/eval_kill_resume.sh $<TARGET_FILE:moa_cli>)
set_tests_properties(cli.eval_kill_resume PROPERTIES TIMEOUT 300
  PASS_REGULAR_EXPRESSION "eval_kill_resume: passed")
add_test(NAME cli.eval_no_gnuplot COMMAND ${CMAKE_COMMAND} -E env PATH=/nonexistent
         $<TARGET_FILE:moa_cli> eval --roster ${_eval_data}/roster_synthetic.json
         --dataset ${_eval_data}/arithmetic.jsonl --score number --plot never.svg)
set_tests_properties(cli.eval_no_gnuplot PROPERTIES
  PASS_REGULAR_EXPRESSION "--plot: needs gnuplot, which is not on PATH")
find_program(MOA_GNUPLOT gnuplot)
if(MOA_GNUPLOT)
  # The sweep's picture: an SVG holding every series of both panels and the limit; the data file
  # marks the point past the limit as missing.
  add_test(NAME cli.simulate_plot COMMAND bash -c
    "set -e; f=${CMAKE_CURRENT_BINARY_DIR}/simulate_sweep.svg; rm -f $f $f.dat $f.gp
     $<TARGET_FILE:moa_cli> simulate -n 4 -m 2 -k 2 --lambda 0.1 -r 2 --horizon 2000 --sweep 0.2:1.2:4 --plot $f >/dev/null
     head -c 200 $f | grep -q '<svg'
     for s in 'simulated mean' 'M/G/1 per device' 'simulated p50' 'simulated p95' 'simulated p99' 'analytic estimate' 'analytic lower bound' 'analytic upper bound' 'stability limit'; do grep -q \"$s\" $f || { echo \"missing series: $s\"; exit 1; }; done
     test $(grep -vc '^#' $f.dat) = 4
     tail -n 1 $f.dat | grep -q '? ? ? ? ? ? ? ? ? ? ?'
     echo simulate_plot ok")
  set_tests_properties(cli.simulate_plot PROPERTIES PASS_REGULAR_EXPRESSION "simulate_plot ok")
  add_test(NAME cli.simulate_plot_needs_sweep COMMAND moa_cli simulate --plot never.svg)
  set_tests_properties(cli.simulate_plot_needs_sweep PROPERTIES WILL_FAIL TRUE)
  add_test(NAME cli.eval_plot COMMAND moa_cli eval --roster ${_eval_data}/roster_synthetic.json
           --dataset ${_eval_data}/capitals.csv --format csv --score choice --bootstrap 200
           --plot ${CMAKE_CURRENT_BINARY_DIR}/eval_frontier.svg)
  set_tests_properties(cli.eval_plot PROPERTIES
    PASS_REGULAR_EXPRESSION "6 items, scorer choice.*wrote .*eval_frontier\\.svg")
endif()
if(MOA_HAS_OPENAI)
  # Two real llama-servers: each alone and the 2-layer MoA over both, on the arithmetic set; a
  # second run on the same results file resumes and calls no server.
  add_test(NAME cli.eval_endpoint
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/with_llama.sh 2 bash -c
                   "IFS=, read -r a b <<< \"$MOA_ENDPOINTS\"; f=${CMAKE_CURRENT_BINARY_DIR}/eval_endpoint.jsonl; rm -f $f; for run in 1 2; do $<TARGET_FILE:moa_cli> eval --endpoint $a --endpoint $b --dataset ${_eval_data}/arithmetic.jsonl --score number --max-tokens 8 --in-flight 4 --results $f --bootstrap 200 || exit; done")
  set_tests_properties(cli.eval_endpoint PROPERTIES LABELS llama SKIP_RETURN_CODE 77 TIMEOUT 300
    PASS_REGULAR_EXPRESSION "12 items, scorer number \\(0 records resumed, 36 run\\).*alpha +12 .*beta +12 .*moa +12 +[0-9.]+ +\\[[0-9.]+, [0-9.]+\\] +[1-9][0-9]* +[1-9][0-9]* .* 5\\.00 .*\\(36 records resumed, 0 run\\)")
endif()
# `moa search --joint`: roles and weights alternated on tunable planted models (docs/SWARM.md).
# Rosters in moa run and moa search: the layout's policy runs unless a flag given beats it; flags
# that a roster replaces are refused.
set(_q "A box holds 12 eggs. How many eggs are in 7 boxes?")
add_test(NAME cli.run_roster COMMAND moa_cli run ${_q} --roster ${_eval_data}/roster_synthetic.json
         --layout moa-vote --format json)
set_tests_properties(cli.run_roster PROPERTIES PASS_REGULAR_EXPRESSION
  "\"policy\": \"majority_vote\".*\"answer\": \"Working it through, the answer is 84\\.\".*\"status\": \"ok\"")
add_test(NAME cli.run_roster_flag_wins COMMAND moa_cli run ${_q}
         --roster ${_eval_data}/roster_synthetic.json --layout moa-vote --policy synthesis --format json)
set_tests_properties(cli.run_roster_flag_wins PROPERTIES PASS_REGULAR_EXPRESSION
  "\"aggregation\": null.*\"role\": \"aggregator\"")
add_test(NAME cli.run_roster_conflict COMMAND moa_cli run hi
         --roster ${_eval_data}/roster_synthetic.json --layers 3)
set_tests_properties(cli.run_roster_conflict PROPERTIES WILL_FAIL TRUE)
add_test(NAME cli.run_roster_unknown_layout COMMAND moa_cli run hi
         --roster ${_eval_data}/roster_synthetic.json --layout nope)
set_tests_properties(cli.run_roster_unknown_layout PROPERTIES
  PASS_REGULAR_EXPRESSION "no layout or model named \"nope\"")
if(MOA_HAS_OPENAI)
  # $OPENAI_BASE_URL is honoured as the OpenAI clients do: the run calls it (here: nothing listens)
  # rather than answering from the synthetic models.
  add_test(NAME cli.run_openai_base_url COMMAND ${CMAKE_COMMAND} -E env OPENAI_BASE_URL=http://127.0.0.1:9/v1
           $<TARGET_FILE:moa_cli> run hi --layers 0 --proposers 1 --http-timeout-ms 5000)
  set_tests_properties(cli.run_openai_base_url PROPERTIES PASS_REGULAR_EXPRESSION
    "status: failed.*127\\.0\\.0\\.1:9")
  add_test(NAME cli.search_roster COMMAND moa_cli search --quiet --iterations 3 --particles 2
           --roster ${_eval_data}/roster_synthetic.json --dataset ${_eval_data}/arithmetic.jsonl)
  set_tests_properties(cli.search_roster PROPERTIES PASS_REGULAR_EXPRESSION
    "\"name\": \"(alpha|beta|gamma)\"")
  # --utility judge over a roster: the judge (gamma) is not a node. A synthetic model is no judge
  # (its replies hold no rating): the judge's failures are reported and the run exits 1, not 0.
  add_test(NAME cli.search_judge_roster COMMAND moa_cli search --quiet --iterations 2 --particles 2
           --roster ${_eval_data}/roster_synthetic.json --dataset ${_eval_data}/arithmetic.jsonl
           --utility judge --judge gamma)
  set_tests_properties(cli.search_judge_roster PROPERTIES
    PASS_REGULAR_EXPRESSION "\"model\": \"gamma\".*\"nodes\".*\"name\": \"beta\".*the judge rated none of its [0-9]+ answers"
    FAIL_REGULAR_EXPRESSION "\"name\": \"gamma\"")
endif()
add_test(NAME cli.search_joint COMMAND moa_cli search --joint --models 4 --rounds 3 --iterations 30)
set_tests_properties(cli.search_joint PROPERTIES PASS_REGULAR_EXPRESSION
  "round 1: role step [0-9.]+, weight step [0-9.]+, best sampled assignment [0-9.]+, all-time best.*\"parameters\".*\"rounds\": [1-3]")
# `moa replay`: the Distributed MoA table from the made-up measured times of examples/data.
add_test(NAME cli.replay COMMAND moa_cli replay --times ${_eval_data}/measured_times.json
         --prompts 30 --rate 0.01)
set_tests_properties(cli.replay PROPERTIES PASS_REGULAR_EXPRESSION
  "transient replay of 30 prompts.*\n0 +0 +1 +[0-9.]+.*\n2 +3 +9 +[0-9.]+.*avg queue size: per device, the time average")
add_test(NAME cli.replay_bad_config COMMAND moa_cli replay --times ${_eval_data}/measured_times.json --config 3:1)
set_tests_properties(cli.replay_bad_config PROPERTIES
  PASS_REGULAR_EXPRESSION "M = 3 layers, but 2 were measured")

# Bad input never crashes, never lies: every subcommand over a generated corpus of bad arguments
# and config files (tests/cli_corpus.sh prints the cases per class), in two halves that ctest runs
# side by side. In the ASan stage, and in the plain stage when ASan is not run (TSan skips it: its
# runs are single-threaded argument and file checks).
set(_corpus_programs $<TARGET_FILE:moa_cli>)
if(MOA_DEVICE_PROGRAM)
  list(APPEND _corpus_programs ${MOA_DEVICE_PROGRAM})
endif()
foreach(_part commands devices)
  add_test(NAME cli.bad_input_corpus_${_part}
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/cli_corpus.sh ${_corpus_programs})
  set_tests_properties(cli.bad_input_corpus_${_part} PROPERTIES TIMEOUT 1800 LABELS corpus
    ENVIRONMENT MOA_CORPUS_PART=${_part}
    PASS_REGULAR_EXPRESSION "cli_corpus: all [0-9]+ cases ended in a documented exit code")
endforeach()

# The async path's critical path counts a call from when it starts running: on one scheduler
# thread (and the calling thread, which helps its own run), four 5 ms proposers wait for each
# other: three rounds of 5 ms against two on the critical path, so the makespan is about 1.5
# critical paths (the trace's dispatch-to-answer durations would call it 1.0). At least 1.3.
add_test(NAME cli.bench_async_critical_path COMMAND moa_cli bench --path async --threads 1 -l 1
         -p 4 -n 10 --latency-ms 5 --latency-runs 3)
set_tests_properties(cli.bench_async_critical_path PROPERTIES
  PASS_REGULAR_EXPRESSION "critical-path efficiency.*async +(1\\.[3-9]|[2-9]\\.)")

# A prompt from a file or stdin (-), bounded; the argument and --prompt-file exclude each other.
add_test(NAME cli.run_prompt_stdin COMMAND bash -c
         "head -c 200000 /dev/zero | tr '\\\\0' x | $<TARGET_FILE:moa_cli> run --prompt-file - --format json")
set_tests_properties(cli.run_prompt_stdin PROPERTIES
  PASS_REGULAR_EXPRESSION "\"prompt_tokens\": 1,.*\"status\": \"ok\"")
add_test(NAME cli.run_prompt_too_large COMMAND bash -c
         "$<TARGET_FILE:moa_cli> run --prompt-file /dev/zero; test $? -eq 2")

# Uniform gossip is analysed in O(n): a network far beyond the dense limit answers.
add_test(NAME cli.stability_large_uniform COMMAND moa_cli stability -n 200000 -m 2 -k 2
         --lambda 0.1 --format json)
set_tests_properties(cli.stability_large_uniform PROPERTIES
  PASS_REGULAR_EXPRESSION "\"stable\": true")
add_test(NAME cli.stability_large_graph_refused COMMAND bash -c
         "printf '{\"adjacency\": [[0]]}' > ${CMAKE_CURRENT_BINARY_DIR}/big_graph.json; $<TARGET_FILE:moa_cli> stability -n 2000 --config ${CMAKE_CURRENT_BINARY_DIR}/big_graph.json")
set_tests_properties(cli.stability_large_graph_refused PROPERTIES
  PASS_REGULAR_EXPRESSION "a graph is analysed as an n x n matrix, for at most 1024 devices")

# A device network as a roster model (kind "device"): `moa run` and `moa serve` through a keyed
# device, a stranger's key refused (tests/serve_device.sh).
if(MOA_HAS_SERVE AND MOA_DEVICE_PROGRAM)
  add_test(NAME cli.serve_device_network
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/serve_device.sh $<TARGET_FILE:moa_cli>)
  set_tests_properties(cli.serve_device_network PROPERTIES TIMEOUT 120 LABELS network
    PASS_REGULAR_EXPRESSION "serve_device: all passed")
endif()

# `moa serve --adaptive` with the synthetic models, driven with curl: the first request at the
# largest layout, the second refused (429 over_capacity, Retry-After), both counted in /metrics.
if(MOA_HAS_SERVE)
  add_test(NAME cli.serve_adaptive
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/serve_adaptive.sh $<TARGET_FILE:moa_cli>)
  set_tests_properties(cli.serve_adaptive PROPERTIES TIMEOUT 60
    PASS_REGULAR_EXPRESSION "serve_adaptive: all passed")
endif()

# `moa serve` in front of two real llama-servers, driven with curl (docs/SERVE.md).
if(MOA_HAS_OPENAI AND MOA_HAS_SERVE)
  add_test(NAME cli.serve_endpoint
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/with_llama.sh 2
                   bash ${PROJECT_SOURCE_DIR}/tests/serve_llama.sh $<TARGET_FILE:moa_cli>)
  set_tests_properties(cli.serve_endpoint PROPERTIES LABELS llama SKIP_RETURN_CODE 77 TIMEOUT 180
    PASS_REGULAR_EXPRESSION "serve_llama: all passed")
endif()
