#!/usr/bin/env python3
"""The real-Xen suite's verdict: what the serial console printed against what the suite declares.

    verdict.py scenarios MANIFEST [--mode M] [--scenarios LIST]
        print the scenarios a run covers (validates LIST: exit 2 on an undeclared name)
    verdict.py judge MANIFEST LOG [--mode M] [--scenarios LIST] [--self-test VARIANTS]
                                  [--package] [--section NAME]
        compare LOG's PASS/FAIL lines with MANIFEST; exit 0 when the run is right, 1 otherwise
        (--section: only that section of a full run's log, one boot running every mode)

Modes: `xenplug` (every declared check must PASS), `reference` (Debian's scripts: the checks
flagged `known-bug` must FAIL, every other must PASS), `self-test` (each variant in VARIANTS
must FAIL the checks it names). In every mode a declared check that never printed is missing, a
printed check that is not declared is undeclared, and a check printed twice is a duplicate: each
of those fails the run.
"""

import argparse
import re
import sys

LINE = re.compile(r"^\[ *[0-9.]+\] (PASS|FAIL) (\S+)\s*$")
MODES = ("xenplug", "reference", "self-test")


class Manifest:
    def __init__(self, path):
        self.order = []  # scenario names in the order declared
        self.checks = {}  # scenario -> [(check, flags)]
        self.reference_scenarios = []
        self.opt_in = []  # run only when named in --scenarios
        for n, raw in enumerate(open(path, encoding="utf-8"), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "@reference-scenarios":
                self.reference_scenarios = words[1].split(",")
                continue
            if words[0] == "@opt-in-scenarios":
                self.opt_in = words[1].split(",")
                continue
            if len(words) < 2:
                sys.exit(f"{path}:{n}: expected SCENARIO CHECK [FLAG…]")
            scenario, check, flags = words[0], words[1], set(words[2:])
            bad = flags - {"xenplug", "reference", "known-bug", "package"}
            if bad:
                sys.exit(f"{path}:{n}: unknown flag {sorted(bad)[0]}")
            if scenario not in self.checks:
                self.order.append(scenario)
                self.checks[scenario] = []
            self.checks[scenario].append((check, flags))
        for s in self.reference_scenarios:
            if s not in self.checks:
                sys.exit(f"{path}: @reference-scenarios names {s}, which declares no checks")
        for s in self.opt_in:
            if s not in self.checks:
                sys.exit(f"{path}: @opt-in-scenarios names {s}, which declares no checks")

    package = False  # set when xenplug was installed from its Debian package

    def selected(self, mode, scenarios):
        """The scenarios a run covers: `install` always, then LIST or the mode's default (every
        scenario but the opt-in ones, or the reference scenarios)."""
        if scenarios:
            names = [s for s in scenarios.split(",") if s]
            unknown = [s for s in names if s not in self.checks or s == "install"]
            if unknown:
                raise KeyError(", ".join(unknown))
        elif mode == "reference":
            names = self.reference_scenarios
        else:
            names = [s for s in self.order if s != "install" and s not in self.opt_in]
        return ["install"] + [s for s in self.order if s in names and s != "install"]

    def expected(self, mode, scenarios):
        """{check: known_bug} for the checks a run of these scenarios in this mode prints."""
        want = {}
        for s in scenarios:
            for check, flags in self.checks[s]:
                if "xenplug" in flags and mode == "reference":
                    continue
                if "reference" in flags and mode != "reference":
                    continue
                if "package" in flags and not self.package:
                    continue
                want[check] = "known-bug" in flags
        return want


def read_log(path, section=None):
    """[(verdict, name)] in order, and whether the dom0 side reached its RESULT line.

    With a section (a full run: one boot, several modes), only the lines between its
    `E2E: SECTION-BEGIN <section>` and `E2E: SECTION-END <section>` markers count, and
    completed means its end marker printed."""
    results, completed = [], False
    inside = section is None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if section is not None:
                if re.search(rf"E2E: SECTION-BEGIN {re.escape(section)}( |$)", line):
                    inside = True
                    continue
                if re.search(rf"E2E: SECTION-END {re.escape(section)}( |$)", line):
                    inside = False
                    completed = True
                    continue
            if not inside:
                continue
            m = LINE.match(line)
            if m:
                results.append((m.group(1), m.group(2)))
            elif section is None and "E2E: RESULT" in line:
                completed = True
    return results, completed


def judge_plain(manifest, results, mode, scenarios):
    want = manifest.expected(mode, scenarios)
    seen, problems = {}, []
    for verdict, name in results:
        if name in seen:
            problems.append(f"FAIL duplicate: {name} printed more than once")
        seen[name] = verdict
    good = 0
    for check, known_bug in want.items():
        got = seen.get(check)
        expect = "FAIL" if (mode == "reference" and known_bug) else "PASS"
        if got is None:
            problems.append(f"FAIL missing: {check} (declared, never printed)")
        elif got != expect:
            why = "a known bug of Debian's scripts, which they no longer show" if expect == "FAIL" else ""
            problems.append(f"FAIL {check}: {got}, expected {expect}" + (f" ({why})" if why else ""))
        else:
            good += 1
    for name in seen:
        if name not in want:
            problems.append(f"FAIL undeclared: {name} (not in the manifest for this run)")
    bugs = sum(1 for kb in want.values() if kb) if mode == "reference" else 0
    return good, len(want), bugs, problems


def read_variants(path):
    variants = []
    for n, raw in enumerate(open(path, encoding="utf-8"), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) < 3:
            sys.exit(f"{path}:{n}: expected VARIANT SCENARIOS CHECK…")
        variants.append((words[0], words[1].split(","), words[2:]))
    return variants


def judge_self_test(manifest, results, variants):
    problems, lines = [], []
    by_variant = {}
    for verdict, name in results:
        if ":" in name:
            v, check = name.split(":", 1)
            by_variant.setdefault(v, {})[check] = verdict
    caught = 0
    for variant, scenarios, must_fail in variants:
        for s in scenarios:
            if s not in manifest.checks:
                problems.append(f"FAIL {variant}: scenario {s} is not in the manifest")
        declared = {c for s in scenarios for c, _ in manifest.checks.get(s, [])}
        got = by_variant.get(variant, {})
        missed = []
        for check in must_fail:
            if check not in declared:
                problems.append(f"FAIL {variant}: {check} is not a check of {','.join(scenarios)}")
            elif got.get(check) != "FAIL":
                missed.append(f"{check} ({got.get(check, 'never printed')})")
        if not got:
            problems.append(f"FAIL {variant}: printed no checks (did the variant run?)")
        elif missed:
            problems.append(f"FAIL {variant}: not caught by " + ", ".join(missed))
        else:
            caught += 1
            also = sorted(c for c, v in got.items() if v == "FAIL" and c not in must_fail)
            lines.append(f"caught {variant}: by " + ", ".join(must_fail)
                         + (f" (also failed: {', '.join(also)})" if also else ""))
    return caught, len(variants), lines, problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("scenarios", "judge"))
    ap.add_argument("manifest")
    ap.add_argument("log", nargs="?")
    ap.add_argument("--mode", choices=MODES, default="xenplug")
    ap.add_argument("--scenarios", default="")
    ap.add_argument("--self-test")
    ap.add_argument("--package", action="store_true",
                    help="xenplug was installed from its Debian package")
    ap.add_argument("--section", help="judge only this section of a full run's log "
                    "(its markers: E2E: SECTION-BEGIN/SECTION-END NAME)")
    a = ap.parse_args()
    m = Manifest(a.manifest)
    m.package = a.package
    if a.what == "scenarios":
        if a.mode == "self-test":
            names = sorted({s for _, ss, _ in read_variants(a.self_test) for s in ss})
            print(",".join(names))
            return 0
        try:
            print(",".join(m.selected(a.mode, a.scenarios)[1:]))
        except KeyError as e:
            known = ", ".join(s for s in m.order if s != "install")
            print(f"run: no such scenario: {e.args[0]} (declared: {known})", file=sys.stderr)
            return 2
        return 0
    results, completed = read_log(a.log, a.section)
    ok = True
    if not completed:
        if a.section:
            print(f"FAIL suite-completed (section {a.section} never ended: the dom0 side "
                  "crashed or timed out)")
        else:
            print("FAIL suite-completed (no E2E: RESULT line: the dom0 side crashed or timed out)")
        ok = False
    if a.mode == "self-test":
        caught, total, lines, problems = judge_self_test(m, results, read_variants(a.self_test))
        for line in lines + problems:
            print(line)
        print(f"== self-test: {caught} of {total} broken programs caught by the checks named for them")
        return 0 if ok and not problems and caught == total else 1
    try:
        scenarios = m.selected(a.mode, a.scenarios)
    except KeyError as e:
        print(f"run: no such scenario: {e.args[0]}", file=sys.stderr)
        return 2
    good, total, bugs, problems = judge_plain(m, results, a.mode, scenarios)
    for p in problems:
        print(p)
    extra = f" ({bugs} of them known bugs of Debian's scripts, failing as they must)" if bugs else ""
    verb = "as expected" if a.mode == "reference" else "passed"
    print(f"== {good} of {total} checks {verb}{extra}")
    return 0 if ok and not problems and good == total else 1


if __name__ == "__main__":
    sys.exit(main())
