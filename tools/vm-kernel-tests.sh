#!/bin/bash
# Runs the tests that need kernel features a host's kernel may lack (tc policing: cls_matchall
# and act_police) under Debian 12's own kernel in QEMU (tools/vm-test.sh, which boots the
# real-Xen suite's cached dom0 image: run `tests/xen-e2e/run build` or `all` first). Those tests
# are #[ignore]d in a plain `cargo test`; here they run with CI=1, so a missing prerequisite
# fails them. The step passes only if every named test is reported as run and passed ("test NAME
# ... ok" and "1 passed"): a renamed test, or one no longer #[ignore]d, runs zero tests under
# `--ignored --exact NAME`, which fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
# name of a test target (package:test) → the test function(s) to run in the VM
tests=(
  "xenplug-netlink:police police_is_installed_read_back_replaced_and_removed"
  "xenplug-vif:netns tap_rate_is_policed_at_ingress"
)
files=() cmds=() names=()
for t in "${tests[@]}"; do
  target=${t%% *} fns=${t#* }
  pkg=${target%%:*} test=${target#*:}
  exe=$(cargo test -q -p "$pkg" --test "$test" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
  [ -x "$exe" ] || { echo "vm-kernel-tests: no test binary for $target" >&2; exit 1; }
  files+=(-f "$exe")
  for fn in $fns; do
    cmds+=("$(basename "$exe") --ignored --exact $fn --test-threads=1 --color never")
    names+=("$fn")
  done
done
# Each command must pass; the first failure ends the run with its status.
script=$(printf '%s && ' "${cmds[@]}")
echo "vm-kernel-tests: ${cmds[*]}"
out=$(mktemp /tmp/xenplug-vm-kernel-tests.XXXXXX)
trap 'rm -f "$out"' EXIT
set +e
tools/vm-test.sh "${files[@]}" -- "${script}echo ALL-KERNEL-TESTS-PASSED" | tee "$out"
rc=${PIPESTATUS[0]}
set -e
missing=()
for fn in "${names[@]}"; do
  # Each command runs exactly one test: its own line, then a result with one passed.
  tr -d '\r' < "$out" | grep -A3 -E "^test $fn \.\.\. ok$" | grep -qE '^test result: ok\. 1 passed' ||
    missing+=("$fn")
done
if [ "$rc" != 0 ] || [ ${#missing[@]} -gt 0 ]; then
  echo "vm-kernel-tests: FAIL (status $rc; not run and passed: ${missing[*]:-none})" >&2
  exit 1
fi
echo "vm-kernel-tests: ${#names[@]} of ${#names[@]} tests ran and passed: ${names[*]}"
