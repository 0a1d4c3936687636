#!/usr/bin/env bash
# Fault trials (see bench/faults.py): SIGKILL and --resume at random moments of a
# 2,000-shard job, an S3 outage mid-job, a full staging disk, hostile guests. Starts its own
# Garage (scripts/test-s3) for the S3 trial. CI runs this after the test suite.
# Arguments go to faults.py (e.g. --trials 3 --only kill guests).
source "$(dirname "$0")/lib.sh"
build_fanout
export FANOUT MISBEHAVE_WASM
MISBEHAVE_WASM=$(wasm_of "$ROOT/examples/misbehave")
wasm_of "$ROOT/examples/wordcount" >/dev/null
state=$(mktemp -d "${TMPDIR:-/tmp}/fanout-faults-s3.XXXXXX")
eval "$("$ROOT/scripts/test-s3" start "$state")"
# The S3 trial restarts Garage itself, under a new PID: stop whatever serves this state.
cleanups+=("pkill -KILL -f '$state/garage.toml' || true" "rm -rf '$state'")
python3 "$ROOT/bench/faults.py" "$@"
