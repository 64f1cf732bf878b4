#!/usr/bin/env bash
# Packaging check: builds and packs nestjs-openai-production, installs the tarball into two small apps (an ESM app on
# Nest 12 and a CommonJS app on Nest 11, templates in test/packaging/apps/), builds and starts each one, and sends
# one POST /chat to it (answered through the library by the FakeOpenAIServer from the /testing subpath).
#
#   bash test/packaging/run.sh            (from any directory; npm's registry must be reachable)
#   KEEP_WORK=1 bash test/packaging/run.sh   keeps the temporary work directory for inspection
#   PACKAGING_EXTRA_DEPS="prom-client@^15" bash test/packaging/run.sh   installs extra packages in both apps
#
# The apps are installed in a temporary directory outside the repository on purpose: inside it, Node and tsc would
# also find the repository's own node_modules and hide a dependency missing from the package.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/test/packaging"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/nestjs-openai-packaging.XXXXXX")"

# What a user installs next to the package: the Nest packages, openai, rxjs, reflect-metadata (and the app's own
# typescript and @types/node). The rest of what the library needs at runtime (zod, gpt-tokenizer, @nestjs/throttler,
# prom-client) must come from the package's own dependencies / peerDependencies, so it is deliberately not listed.
COMMON_DEPS=(openai@7.59.0 rxjs@^7.8.1 reflect-metadata@^0.2.2 typescript@7.0.2 @types/node@^20.19.0)
# PACKAGING_EXTRA_DEPS="pkg@range ..." adds packages to both apps (to confirm a missing dependency is the only problem).
read -r -a EXTRA_DEPS <<<"${PACKAGING_EXTRA_DEPS:-}"
COMMON_DEPS+=(${EXTRA_DEPS[@]+"${EXTRA_DEPS[@]}"})
NEST12_DEPS=(@nestjs/common@^12 @nestjs/core@^12 @nestjs/platform-express@^12)
NEST11_DEPS=(@nestjs/common@^11 @nestjs/core@^11 @nestjs/platform-express@^11)

# children <pid>: the pids of a process's children (pgrep, else /proc on Linux).
children() {
  if command -v pgrep >/dev/null 2>&1; then
    pgrep -P "$1" 2>/dev/null || true
  elif [[ -d /proc ]]; then
    awk -v ppid="$1" '{ sub(/^.*\) /, ""); if ($2 == ppid) print FILENAME }' /proc/[0-9]*/stat 2>/dev/null |
      sed -E 's#^/proc/([0-9]+)/stat$#\1#' || true
  fi
}
descendants() {
  local child
  for child in $(children "$1"); do
    echo "$child"
    descendants "$child"
  done
}

# stop_job <pid>: SIGTERM to a background job and everything it started (e.g. npm's children), SIGKILL after 5 s.
stop_job() {
  local pid="$1" p alive
  kill -0 "$pid" 2>/dev/null || return 0
  local pids=("$pid" $(descendants "$pid"))
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 25); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && return 0
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

JOB_PIDS=()
cleanup() {
  local pid
  for pid in ${JOB_PIDS[@]+"${JOB_PIDS[@]}"}; do
    stop_job "$pid"
  done
  # Two node_modules trees (~270 MB, ~24k files) can take a minute to delete on a busy disk: do it in the background.
  if [[ "${KEEP_WORK:-}" != 1 ]]; then
    rm -rf "$WORK" </dev/null >/dev/null 2>&1 &
    disown 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PASSED=0
FAILED=0
pass() {
  PASSED=$((PASSED + 1))
  echo "PASS $*"
}
fail() {
  FAILED=$((FAILED + 1))
  echo "FAIL $*"
}

free_port() {
  node -e 'const s = require("node:net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# Lines of an app's output that are warnings: Node's process warnings (ExperimentalWarning, DeprecationWarning, ...)
# and Nest's WARN log lines. They are reported, not hidden.
print_warnings() {
  local log="$1" line
  while IFS= read -r line; do
    echo "  warning: $line"
  done < <(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '\(node:[0-9]+\)|Warning:|[[:space:]]WARN[[:space:]]' || true)
}

# npm's warnings from an install log, one line each (EBADENGINE blocks condensed to package and required engine).
print_npm_warnings() {
  local log="$1" line
  while IFS= read -r line; do
    echo "  npm warning: $line"
  done < <(
    { grep -E '^npm warn EBADENGINE +(package|required):' "$log" || true; } | sed -E 's/^npm warn EBADENGINE +//' |
      paste -d' ' - - | sed -E 's/^/EBADENGINE /; s/,$//'
    grep -E '^npm warn ' "$log" | grep -v 'EBADENGINE' || true
  )
}

# ---------------------------------------------------------------------------------------------------------------------
# 1. Build and pack
# ---------------------------------------------------------------------------------------------------------------------
START=$SECONDS
mkdir -p "$WORK/pack"
KEPT=""
[[ "${KEEP_WORK:-}" == 1 ]] && KEPT=", kept"
echo "building and packing $ROOT (work directory $WORK$KEPT)"
# No build first: `npm pack` on a clean clone must build dist/ itself (prepack), so what is published is what was tested.
if ! (cd "$ROOT" && rm -rf dist && npm pack --pack-destination "$WORK/pack") >"$WORK/pack.log" 2>&1; then
  fail "build/pack"
  tail -n 40 "$WORK/pack.log" | sed 's/^/  | /'
  echo "0 passed, 1 failed"
  exit 1
fi
shopt -s nullglob
TARBALLS=("$WORK"/pack/*.tgz)
shopt -u nullglob
if [[ ${#TARBALLS[@]} -ne 1 ]]; then
  fail "build/pack: expected one tarball in $WORK/pack, found ${#TARBALLS[@]}"
  echo "0 passed, 1 failed"
  exit 1
fi
TARBALL="${TARBALLS[0]}"

# What users install: only dist/, package.json, README and LICENSE; the entry points must be there.
FILES="$(tar -tzf "$TARBALL" | sed 's#^package/##' | sort)"
UNEXPECTED="$(grep -vE '^(dist/.+|package\.json|README(\.md)?|LICENSE(\.md|\.txt)?)$' <<<"$FILES" || true)"
MISSING=""
for f in package.json dist/index.js dist/index.d.ts dist/testing/index.js dist/testing/index.d.ts; do
  grep -qxF "$f" <<<"$FILES" || MISSING+=" $f"
done
SUMMARY="$(awk -F/ '{ top = (NF > 1 ? $1 "/" : $1); n[top]++ } END { for (t in n) printf "%s %d, ", t, n[t] }' <<<"$FILES")"
SUMMARY="${SUMMARY%, }"
if [[ -z "$UNEXPECTED" && -z "$MISSING" ]]; then
  pass "tarball $(basename "$TARBALL") ($(wc -l <<<"$FILES") files: $SUMMARY)"
else
  fail "tarball $(basename "$TARBALL") ($SUMMARY)"
  [[ -n "$MISSING" ]] && echo "  missing:$MISSING"
  [[ -n "$UNEXPECTED" ]] && sed 's/^/  unexpected: /' <<<"$UNEXPECTED"
fi

# ---------------------------------------------------------------------------------------------------------------------
# 2. The apps
# ---------------------------------------------------------------------------------------------------------------------
# install_app <name> <deps...>: copies apps/<name> to the work directory, then installs the tarball and the deps and
# builds the app, in the background (both apps install at the same time). Sets INSTALL_PID.
install_app() {
  local name="$1"
  shift
  local dir="$WORK/$name"
  cp -R "$HERE/apps/$name" "$dir"
  rm -rf "$dir/node_modules" "$dir/dist" "$dir/package-lock.json"
  (cd "$dir" && npm install --no-audit --no-fund "$TARBALL" "$@" && npm run build) >"$WORK/$name.log" 2>&1 &
  INSTALL_PID=$!
  JOB_PIDS+=("$INSTALL_PID")
}

# check_app <name> <install pid>: waits for the install, starts dist/main.js on a free port, checks one POST /chat,
# stops the app. Prints PASS/FAIL, then the warnings seen in the app's output and in npm's.
check_app() {
  local name="$1" install_pid="$2"
  local dir="$WORK/$name" log="$WORK/$name.log" applog="$WORK/$name.app.log" port pid rc
  rc=0
  wait "$install_pid" || rc=$?
  if [[ $rc -ne 0 ]]; then
    fail "$name (npm install or build failed)"
    tail -n 40 "$log" | sed 's/^/  | /'
    print_npm_warnings "$log"
    return 0
  fi

  port="$(free_port)"
  (cd "$dir" && PORT="$port" exec node dist/main.js) >"$applog" 2>&1 &
  pid=$!
  JOB_PIDS+=("$pid")

  rc=0
  node "$HERE/check.mjs" "$port" "$pid" >>"$log" 2>&1 || rc=$?
  stop_job "$pid"
  wait "$pid" 2>/dev/null || true

  if [[ $rc -eq 0 ]]; then
    pass "$name"
  else
    fail "$name ($(tail -n 1 "$log"))"
    echo "  app log (last 40 lines):"
    tail -n 40 "$applog" | sed 's/\x1b\[[0-9;]*m//g; s/^/  | /'
  fi
  print_warnings "$applog"
  print_npm_warnings "$log"
}

install_app esm-nest12 "${COMMON_DEPS[@]}" "${NEST12_DEPS[@]}"
ESM_INSTALL=$INSTALL_PID
install_app cjs-nest11 "${COMMON_DEPS[@]}" "${NEST11_DEPS[@]}"
CJS_INSTALL=$INSTALL_PID
check_app esm-nest12 "$ESM_INSTALL"
check_app cjs-nest11 "$CJS_INSTALL"

echo "took $((SECONDS - START)) s"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
