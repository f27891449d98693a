#!/usr/bin/env python3
"""The hotplug benchmark's table: summarize.py SERIAL_LOG… (one per xenstored).

Reads the "BENCH:" lines dom0-bench printed and prints, per xenstored, background, size and NIC
script, the medians over the rounds of Debian's scripts and xenplug's side by side: xl create and
xl destroy wall time, the time libxl waited on hotplug scripts (the union of the scripts'
intervals), the ratio of those waits, the share of xl create spent in xenplug's scripts, and how
much of the scripts' work overlapped (sum of their times / union: 1.0 means fully serialised).
Then the guest agents' figures. Markdown on stdout.
"""
import re
import statistics
import sys
from collections import defaultdict

KV = re.compile(r"(\w+)=(\S+)")


def ratio(a, b):
    return f"{a / b:.0f}×" if b else "–"


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    rows = defaultdict(lambda: defaultdict(list))
    agents = defaultdict(dict)
    info = {}
    floors = {}
    errors = []
    for path in sys.argv[1:]:
        xs = "?"
        for line in open(path, encoding="utf-8", errors="replace"):
            if "BENCH: xenstored=" in line:
                d = dict(KV.findall(line))
                xs = d.get("xenstored") or "?"
                info[xs] = d
            elif "BENCH: impl=" in line:
                d = dict(KV.findall(line))
                key = (xs, int(d["background"]), int(d["n"]), d["nic"])
                if (d.get("create_rc") != "0" or d.get("destroy_rc") != "0"
                        or d.get("script_failures", "0") != "0" or d.get("scripts_killed", "0") != "0"):
                    errors.append(f"{xs} {line.split('BENCH: ', 1)[1].strip()}")
                rows[key][d["impl"]].append(d)
            elif "BENCH: floor=" in line:
                d = dict(KV.findall(line))
                floors.setdefault(xs, []).append(d)
            elif "BENCH: agent=" in line:
                d = dict(KV.findall(line))
                agents[xs][d["agent"]] = d
            elif "BENCH: guest rss" in line or "BENCH: guest binary" in line:
                for k, v in KV.findall(line):
                    agents[xs]["guest-" + k] = v
            elif "BENCH-ERR:" in line:
                errors.append(f"{xs} {line.split('BENCH-ERR: ', 1)[1].strip()}")

    def m(impl_rows, field):
        return med([float(r[field]) for r in impl_rows])

    def fails(impl_rows):
        return sum(1 for r in impl_rows if r.get("create_rc") != "0")

    print("| xenstored | other domains | disks + NICs | NIC script | xl create, Debian / xenplug (ms) "
          "| waiting on scripts in create, Debian / xenplug (ms) | ratio | xenplug scripts' share of create "
          "| xl destroy, Debian / xenplug (ms) | waiting on scripts in destroy, Debian / xenplug (ms) | ratio "
          "| overlap of adds, Debian / xenplug | failed creates, Debian / xenplug |")
    print("|" + "---|" * 13)
    for key in sorted(rows):
        xs, bg, n, nic = key
        deb, xp = rows[key].get("debian", []), rows[key].get("xenplug", [])
        if not deb or not xp:
            continue
        c_d, c_x = m(deb, "create_ms"), m(xp, "create_ms")
        w_d, w_x = m(deb, "wait_add_ms"), m(xp, "wait_add_ms")
        d_d, d_x = m(deb, "destroy_ms"), m(xp, "destroy_ms")
        r_d, r_x = m(deb, "wait_remove_ms"), m(xp, "wait_remove_ms")
        ov_d = m(deb, "sum_add_ms") / w_d if w_d else float("nan")
        ov_x = m(xp, "sum_add_ms") / w_x if w_x else float("nan")
        print(f"| {xs} | {bg} | {n} + {n} | vif-{nic} | {c_d:.0f} / {c_x:.0f} | {w_d:.0f} / {w_x:.1f} "
              f"| {ratio(w_d, w_x)} | {100 * w_x / c_x:.1f} % | {d_d:.0f} / {d_x:.0f} | {r_d:.0f} / {r_x:.1f} "
              f"| {ratio(r_d, r_x)} | {ov_d:.1f} / {ov_x:.1f} | {fails(deb)} of {len(deb)} / {fails(xp)} of {len(xp)} |")
    print()
    print(f"rounds per cell: {min((len(v) for r in rows.values() for v in r.values()), default=0)} "
          "(medians); Debian's and xenplug's runs alternate which goes first")
    for xs, fl in floors.items():
        print()
        print(f"Starting a script in this dom0 ({xs}): alone (median of 5) / 64 at once (wall), ms: "
              + "; ".join(f"{d['floor']} {d['alone_ms']} / {d.get('concurrent64_ms', '–')}" for d in fl))
    for xs, a in agents.items():
        print()
        print(f"Guest agents ({xs} in dom0), one guest, one channel each:")
        print()
        print("| agent | first answer after unpause (ms) | guest-ping median / p99 (ms) | RSS (KiB) | binary (bytes) |")
        print("|---|---|---|---|---|")
        for name, rss, binary in (("agent", "guest-agent_kb", "guest-agent"), ("qemu-ga", "guest-qemu_ga_kb", "guest-qemu_ga")):
            d = a.get(name, {})
            print(f"| {'xenplug-agent' if name == 'agent' else 'qemu-ga (Debian 12)'} | {d.get('first_answer_ms', '–')} "
                  f"| {d.get('ping_median_ms', '–')} / {d.get('ping_p99_ms', '–')} | {a.get(rss, '–')} | {a.get(binary, '–')} |")
    if errors:
        print()
        print("Failed operations (not in the medians' favour: they count as measured):")
        for e in errors[:20]:
            print("- " + e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
