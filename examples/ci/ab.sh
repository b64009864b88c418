#!/usr/bin/env bash
# Measure two versions of pie in one job on one machine, interleaved, and give `pie compare`'s verdict.
#
#   examples/ci/ab.sh [OPTIONS] BASE_REF HEAD_REF -- PIE_BENCH_ARGS...
#   examples/ci/ab.sh [OPTIONS] --servers 'BASE_START_COMMAND' 'HEAD_START_COMMAND' -- PIE_BENCH_ARGS...
#
# Refs: each ref gets a git worktree and its own environment. Then one untimed warm-up run per side,
# then base, head, base, head, ... (--runs timed runs per side), every run with the same arguments and
# seed, labelled `base` and `head` in one results store, then
#   pie compare label=base label=head --fail-on ... (base's pie: a change cannot judge itself)
# and the script exits with that exit code: 0 no rule fired, 3 a rule fired, 2 the comparison
# could not run. Interleaving is what makes the verdict hold on a shared runner: whatever else the
# machine does hits both sides alike, and both sides run on the same CPU (see examples/ci/README.md).
#
# Servers: instead of refs, two commands that each start an OpenAI-compatible server listening on
# 127.0.0.1:$PORT (ab.sh picks a free port for each and exports PORT). Both servers start, each is
# waited for (GET /v1/models), and the runs go to them interleaved through `pie bench --runner openai`
# (ab.sh adds -O base_url=...), using the `pie` on PATH (or --pie). Both servers stay up for the whole
# comparison, so the idle one costs both sides alike; on one GPU give each half its memory. Example:
#   examples/ci/ab.sh --servers \
#     'vllm serve facebook/opt-125m --port $PORT --gpu-memory-utilization 0.4' \
#     'vllm serve facebook/opt-125m --port $PORT --gpu-memory-utilization 0.4 --max-num-seqs 128' \
#     --fail-on output_throughput:-5% -- --runner openai --model opt-125m -O model_name=facebook/opt-125m \
#     --num-prompts 200 --request-rate 8
#
# Options:
#   --runs N             timed runs per side (default 5)
#   --fail-on RULE       a pie compare rule, e.g. output_throughput:-5% (repeatable)
#   --compare-arg ARG    any other pie compare argument, e.g. --compare-arg=--alpha=0.01 (repeatable)
#   --format FORMAT      pie compare's output: table, markdown or json (default table)
#   --seed N             the seed both sides get when the bench arguments name none (default 0)
#   --env venv|current   how each ref is installed (default venv):
#                          venv: python -m venv WORKDIR/env-SIDE, then the --install command in the
#                                ref's worktree with that venv first on PATH (what CI should use)
#                          current: nothing is installed; --python runs each worktree's own code
#                                (PYTHONPATH=worktree) with the packages it already has. For tests,
#                                and for refs whose dependencies are the same and installed
#   --install COMMAND    venv mode: the install command (default: python -m pip install -e .; editable
#                        so each run record names its ref's commit)
#   --system-site-packages  venv mode: the venvs see --python's packages (install torch once, outside;
#                        --python must then be an installed Python, not a venv's: a venv made from a
#                        venv sees the base installation's packages)
#   --python PYTHON      the interpreter for venvs and for --env current (default: python3)
#   --pie PIE            servers mode: the pie client command (default: pie)
#   --workdir DIR        worktrees, environments, logs and results (default: a new temporary folder;
#                        kept, and named on stderr, so the records can be uploaded or inspected)
#   --repo DIR           the git repository holding the refs (default: the one around the current folder)
#   --server-timeout S   servers mode: seconds to wait for each server to answer (default 600)
#   --keep-worktrees     leave the worktrees in place (default: removed at exit)
#
# Exit codes: pie compare's (0, 3, 2); 2 for bad usage or a ref that does not exist; 1 when a side's
# install, server or bench run fails (the message names the side and its log).
set -euo pipefail

die() { local code=$1; shift; echo "ab.sh: error: $*" >&2; exit "$code"; }
last_error() { { grep -i "error" "$1" || cat "$1"; } | grep -v "^ *$" | tail -1; }  # the log line that says most
say() { echo "ab.sh: $*" >&2; }

runs=5 format=table seed=0 env_mode=venv install_command="python -m pip install -e ." system_site=0
python_bin=${PYTHON:-python3} pie_client=pie workdir="" repo="" server_timeout=600 keep_worktrees=0
servers=0 rules=() compare_args=() refs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --fail-on) rules+=(--fail-on "${2:?--fail-on needs a rule}"); shift 2 ;;
    --fail-on=*) rules+=(--fail-on "${1#*=}"); shift ;;
    --compare-arg) compare_args+=("${2:?--compare-arg needs an argument}"); shift 2 ;;
    --compare-arg=*) compare_args+=("${1#*=}"); shift ;;
    --format) format=${2:?--format needs table, markdown or json}; shift 2 ;;
    --format=*) format=${1#*=}; shift ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    --seed=*) seed=${1#*=}; shift ;;
    --env) env_mode=${2:?--env needs venv or current}; shift 2 ;;
    --env=*) env_mode=${1#*=}; shift ;;
    --install) install_command=${2:?--install needs a command}; shift 2 ;;
    --system-site-packages) system_site=1; shift ;;
    --python) python_bin=${2:?--python needs an interpreter}; shift 2 ;;
    --pie) pie_client=${2:?--pie needs a command}; shift 2 ;;
    --workdir) workdir=${2:?--workdir needs a folder}; shift 2 ;;
    --repo) repo=${2:?--repo needs a folder}; shift 2 ;;
    --server-timeout) server_timeout=${2:?--server-timeout needs seconds}; shift 2 ;;
    --keep-worktrees) keep_worktrees=1; shift ;;
    --servers) servers=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die 2 "unknown option '$1' (hint: see examples/ci/ab.sh --help)" ;;
    *) refs+=("$1"); shift ;;
  esac
done
bench_args=("$@")
what="refs"; [ "$servers" = 1 ] && what="server start commands"
[ "${#refs[@]}" = 2 ] || die 2 "expected two $what before '--', got ${#refs[@]} (hint: ab.sh BASE HEAD -- PIE_BENCH_ARGS...)"
[[ "$runs" =~ ^[0-9]+$ ]] && [ "$runs" -ge 2 ] \
  || die 2 "--runs must be a whole number of at least 2, got '$runs' (hint: 2+ runs per side give a run-level test; 5 is the example's)"
[[ "$seed" =~ ^[0-9]+$ ]] || die 2 "--seed must be a whole number, got '$seed'"
[[ "$server_timeout" =~ ^[0-9]+$ ]] || die 2 "--server-timeout must be whole seconds, got '$server_timeout'"
case "$format" in table|markdown|json) ;; *) die 2 "unknown --format '$format' (hint: table, markdown or json)" ;; esac
case "$env_mode" in venv|current) ;; *) die 2 "unknown --env '$env_mode' (hint: venv or current)" ;; esac
has_seed=0
for arg in "${bench_args[@]+"${bench_args[@]}"}"; do
  case "$arg" in
    --seed|--seed=*) has_seed=1 ;;
    --label|--label=*|--results-dir|--results-dir=*)
      die 2 "ab.sh gives each run its --label and --results-dir; leave '$arg' out of the pie bench arguments" ;;
  esac
done
[ "$has_seed" = 1 ] || bench_args+=(--seed "$seed")

if [ -z "$workdir" ]; then workdir=$(mktemp -d "${TMPDIR:-/tmp}/pie-ab.XXXXXX"); fi
mkdir -p "$workdir/logs"
workdir=$(cd "$workdir" && pwd)
results="$workdir/results"
for store in "$results" "$workdir/warmup"; do
  [ -z "$(ls -A "$store" 2>/dev/null)" ] \
    || die 2 "$store already holds records, which pie compare would count (hint: give a new --workdir)"
done
say "working in $workdir (logs in logs/, records in results/)"

server_pids=() worktrees=()
cleanup() {
  local pid
  for pid in "${server_pids[@]+"${server_pids[@]}"}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${server_pids[@]+"${server_pids[@]}"}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [ "$keep_worktrees" = 0 ]; then
    local tree
    for tree in "${worktrees[@]+"${worktrees[@]}"}"; do
      git -C "$repo" worktree remove --force "$tree" 2>/dev/null || true
    done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

declare -A pie_command_of side_description
sides=(base head)

prepare_ref() {  # side ref: a worktree, an environment, and the command that runs its pie
  local side=$1 ref=$2 sha tree log
  sha=$(git -C "$repo" rev-parse --verify --quiet "$ref^{commit}") \
    || die 2 "$side ref '$ref' is not a commit in $repo (hint: fetch it first, e.g. actions/checkout with fetch-depth: 0)"
  side_description[$side]="$side (ref $ref, ${sha:0:12})"
  tree="$workdir/$side"
  rm -rf "$tree"
  git -C "$repo" worktree add --detach --quiet "$tree" "$sha" >"$workdir/logs/worktree-$side.log" 2>&1 \
    || die 1 "could not make a worktree for ${side_description[$side]}: $(tail -1 "$workdir/logs/worktree-$side.log")"
  worktrees+=("$tree")
  log="$workdir/logs/install-$side.log"
  if [ "$env_mode" = venv ]; then
    local venv="$workdir/env-$side" venv_flags=()
    [ "$system_site" = 1 ] && venv_flags+=(--system-site-packages)
    say "installing ${side_description[$side]} into $venv"
    { "$python_bin" -m venv "${venv_flags[@]+"${venv_flags[@]}"}" "$venv" \
        && (cd "$tree" && PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv" bash -c "$install_command") \
        && "$venv/bin/pie" --help; } >"$log" 2>&1 \
      || die 1 "installing ${side_description[$side]} failed: $(last_error "$log") (full log: $log)"
    pie_command_of[$side]=$(printf '%q' "$venv/bin/pie")
  else
    # -c puts the current folder first on sys.path; drop it, so a checkout there cannot shadow the worktree
    local launch='import sys; sys.path.remove(""); sys.argv[0] = "pie"; from pie_cli.app import main; main()'
    local probe='import importlib.util, os, sys; sys.path.remove("")
print("\n".join(sorted({os.path.dirname(os.path.dirname(os.path.realpath(importlib.util.find_spec(name).origin)))
                        for name in ("pie_cli", "pie_core", "runners", "results", "profiler", "planner")})))'
    local found
    found=$(PYTHONPATH="$tree" "$python_bin" -c "$probe" 2>"$log") \
      || die 1 "${side_description[$side]}: $python_bin cannot find pie's packages: $(tail -1 "$log") (full log: $log)"
    [ "$found" = "$(cd "$tree" && pwd -P)" ] \
      || die 1 "${side_description[$side]}: $python_bin imports pie from $(echo $found), not only from the worktree (hint: use --env venv)"
    pie_command_of[$side]=$(printf '%q ' env "PYTHONPATH=$tree" "$python_bin" -c "$launch")
  fi
}

start_server() {  # side command: start it on a free port in its own process group, wait until it answers
  local side=$1 command=$2 port log
  port=$(free_port)
  log="$workdir/logs/server-$side.log"
  side_description[$side]="$side server (port $port)"
  say "starting the ${side_description[$side]}: $command"
  command -v setsid >/dev/null || die 2 "servers mode needs setsid (util-linux) to stop each server's processes"
  PORT=$port setsid bash -c "$command" >"$log" 2>&1 &
  server_pids+=($!)
  local pid=$! deadline=$((SECONDS + server_timeout))
  until "$python_bin" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
      "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die 1 "the ${side_description[$side]} exited before it answered: $(tail -1 "$log") (full log: $log)"
    [ "$SECONDS" -lt "$deadline" ] || die 1 "the ${side_description[$side]} did not answer GET /v1/models within ${server_timeout}s (full log: $log)"
    sleep 1
  done
  pie_command_of[$side]="$pie_client"
  server_url[$side]="http://127.0.0.1:$port"
}

declare -A server_url
if [ "$servers" = 1 ]; then
  repo=${repo:-$PWD}
  start_server base "${refs[0]}"
  start_server head "${refs[1]}"
else
  repo=$(git -C "${repo:-$PWD}" rev-parse --show-toplevel 2>/dev/null) \
    || die 2 "'${repo:-$PWD}' is not in a git repository (hint: run from a checkout, or pass --repo)"
  prepare_ref base "${refs[0]}"
  prepare_ref head "${refs[1]}"
fi

bench() {  # side label store log: one pie bench run; a failure names the side and its log
  local side=$1 label=$2 store=$3 log=$4 extra=() code=0
  [ "$servers" = 1 ] && extra+=(-O "base_url=${server_url[$side]}")
  eval "${pie_command_of[$side]}" bench '"${bench_args[@]}"' '"${extra[@]+"${extra[@]}"}"' \
    --label '"$label"' --results-dir '"$store"' >"$log" 2>&1 || code=$?
  [ "$code" = 0 ] || die "$([ "$code" = 2 ] && echo 2 || echo 1)" \
    "pie bench failed for ${side_description[$side]} (exit $code): $(tail -1 "$log") (full log: $log)"
}

for side in "${sides[@]}"; do
  say "warm-up (untimed): ${side_description[$side]}"
  bench "$side" "warmup-$side" "$workdir/warmup" "$workdir/logs/warmup-$side.log"
done
for run in $(seq "$runs"); do
  for side in "${sides[@]}"; do
    started=$SECONDS
    bench "$side" "$side" "$results" "$workdir/logs/$side-$run.log"
    say "$side run $run/$runs done ($((SECONDS - started)) s)"
  done
done

code=0
eval "${pie_command_of[base]}" compare label=base label=head --results-dir '"$results"' --format '"$format"' \
  '"${rules[@]+"${rules[@]}"}"' '"${compare_args[@]+"${compare_args[@]}"}"' || code=$?
say "pie compare exited $code (records: $results)"
exit "$code"
