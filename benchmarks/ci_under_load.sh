#!/usr/bin/env bash
# The test suite on a loaded machine (issue 25): 4 busy processes share the cores with
# `.ci/run` for its whole run; prints the wall time and the load seen. Run it from a fresh
# clone: `bash benchmarks/ci_under_load.sh` (extra arguments go to pytest).
set -uo pipefail
cd "$(dirname "$0")/.."
busy=()
for _ in 1 2 3 4; do
  python3 -c "while True: pass" &
  busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
start=$(date +%s)
bash .ci/run "$@"
rc=$?
echo "ci under load: rc=$rc, $(( $(date +%s) - start )) s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc
