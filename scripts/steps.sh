# Shared step helpers of scripts/setup.sh and scripts/test_distro.sh (sourced,
# not run). The caller sets STEP_TAG (the prefix of every line it prints),
# STEP_RERUN (the command that retries after a failure), ROOT and LOGS, then
# sources this file: a failing command stops with the step's name, the tail
# of its log and what to do, and nothing half-done is marked as done.

CURRENT_STEP="start"
CURRENT_HINT=""
CURRENT_LOG=""

say() { printf '[%s] %s\n' "$STEP_TAG" "$*"; }

fail() {
  # fail MESSAGE [HINT]: stop with the step name and what to do.
  printf '\n[%s] ERROR in step "%s": %s\n' "$STEP_TAG" "$CURRENT_STEP" "$1" >&2
  if [[ -n "${2:-}" ]]; then printf '[%s] What to do: %s\n' "$STEP_TAG" "$2" >&2; fi
  exit 1
}

on_error() {
  local rc=$?
  trap - ERR
  printf '\n[%s] ERROR in step "%s" (exit code %s).\n' "$STEP_TAG" "$CURRENT_STEP" "$rc" >&2
  if [[ -n "$CURRENT_LOG" && -f "$CURRENT_LOG" ]]; then
    printf '[%s] Last lines of %s:\n' "$STEP_TAG" "$CURRENT_LOG" >&2
    tail -n 25 "$CURRENT_LOG" | sed 's/^/    /' >&2
  fi
  if [[ -n "$CURRENT_HINT" ]]; then printf '[%s] What to do: %s\n' "$STEP_TAG" "$CURRENT_HINT" >&2; fi
  printf '[%s] Nothing half-done is marked as done; fix the cause and run `%s` again.\n' "$STEP_TAG" \
    "$STEP_RERUN" >&2
  exit "$rc"
}
trap on_error ERR

step() {
  # step NAME HINT: name the step that runs next and what to do if it fails.
  CURRENT_STEP="$1"
  CURRENT_HINT="${2:-}"
  CURRENT_LOG=""
}

run_logged() {
  # run_logged LOGNAME CMD...: run quietly into $LOGS/LOGNAME.log; on failure
  # the ERR trap prints the log's tail.
  CURRENT_LOG="$LOGS/$1.log"
  shift
  "$@" >"$CURRENT_LOG" 2>&1
}

hash_files() {
  # sha256 over the names and contents of the given files (missing ones count).
  local f
  for f in "$@"; do
    printf '%s\n' "${f#"$ROOT"/}"
    if [[ -f "$f" ]]; then sha256sum <"$f"; else echo missing; fi
  done | sha256sum | cut -d' ' -f1
}
