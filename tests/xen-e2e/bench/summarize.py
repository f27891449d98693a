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


def field_med(rows, field):
    """The median of a BENCH line field over rows (rows without it, or with nan, left out)."""
    return med([float(r[field]) for r in rows if r.get(field, "nan") != "nan"])


def cpu_table(rows, info, fails):
    """CPU time the scripts used, per cell (logs whose wrapper measured it)."""
    m = field_med
    cells = []
    for key in sorted(rows):
        deb, xp = rows[key].get("debian", []), rows[key].get("xenplug", [])
        have = [r for r in deb + xp if r.get("cpu_add_ms", "nan") != "nan"]
        if have and xp:
            cells.append((key, deb, xp))
    if not cells:
        return
    print()
    print("CPU time the scripts used (user + system; each script with the children it waited for, "
          "a killed script's not counted), medians over the rounds, ms; and xenplug's scripts' CPU "
          "against what dom0's vCPUs could give during xl create (vCPUs × its wall time):")
    print()
    print("| xenstored | other domains | disks + NICs | NIC script | CPU in create's scripts, Debian / xenplug "
          "| ratio | xenplug's share of dom0's CPU in create | CPU in destroy's scripts, Debian / xenplug | ratio |")
    print("|" + "---|" * 9)
    for (xs, bg, n, nic), deb, xp in cells:
        deb_ok = [r for r in deb if r.get("create_rc") == "0"]
        xp_ok = [r for r in xp if r.get("create_rc") == "0"]
        a_d, a_x = m(deb, "cpu_add_ms"), m(xp, "cpu_add_ms")
        r_d, r_x = m(deb_ok, "cpu_remove_ms"), m(xp_ok, "cpu_remove_ms")
        vcpus = int(info.get(xs, {}).get("vcpus", "0") or 0)
        share = f"{100 * a_x / (vcpus * m(xp, 'create_ms')):.1f} % of {vcpus} vCPUs" if vcpus else "–"
        lb = "≥ " if deb and fails(deb) else ""

        def f(x):
            return "–" if x != x else f"{x:.0f}"
        print(f"| {xs} | {bg} | {n} + {n} | vif-{nic} | {f(a_d)} / {f(a_x)} "
              f"| {lb + ratio(a_d, a_x) if deb and a_d == a_d else '–'} | {share} "
              f"| {f(r_d)} / {f(r_x)} | {ratio(r_d, r_x) if deb_ok and xp_ok and r_d == r_d else '–'} |")


def main():
    rows = defaultdict(lambda: defaultdict(list))
    # Per xenstored: per agent, one dict per guest; per guest, the RSS and binary lines.
    agents = defaultdict(lambda: defaultdict(list))
    info = {}
    cmdlines = {}
    floors = {}
    per_script = defaultdict(dict)
    locks = defaultdict(dict)
    errors = []
    for path in sys.argv[1:]:
        xs = "?"
        for line in open(path, encoding="utf-8", errors="replace"):
            if "BENCH: xenstored=" in line:
                d = dict(KV.findall(line))
                xs = d.get("xenstored") or "?"
                info[xs] = d
            elif "BENCH: xen-cmdline " in line:
                cmdlines[xs] = line.split("BENCH: xen-cmdline ", 1)[1].strip()
            elif "BENCH: impl=" in line:
                d = dict(KV.findall(line))
                key = (xs, int(d["background"]), int(d["n"]), d["nic"])
                if (d.get("create_rc") != "0" or d.get("destroy_rc") != "0"
                        or d.get("script_failures", "0") != "0" or d.get("scripts_killed", "0") != "0"):
                    errors.append(f"{xs} {line.split('BENCH: ', 1)[1].strip()}")
                rows[key][d["impl"]].append(d)
            elif "BENCH-SCRIPTS:" in line:
                d = dict(KV.findall(line.split("(count", 1)[0]))
                key = (xs, int(d["background"]), int(d["n"]), d["nic"], d["impl"])
                for name, _count, median, longest, cpu in re.findall(
                        r"(\S+/\S+)=(\d+):([\d.]+):([\d.]+)(?::([\d.]+))?", line):
                    per_script[key].setdefault(name, []).append(
                        (float(median), float(longest), float(cpu) if cpu else None))
            elif "BENCH-LOCKS:" in line:
                head, _, tail = line.partition("(count")
                d = dict(KV.findall(head))
                key = (xs, int(d["background"]), int(d["n"]), d["nic"])
                for name, count, held, longest, waited in re.findall(
                        r"(\S+)=(\d+):([\d.]+):([\d.]+):([\d.]+)", tail.partition(")")[2]):
                    locks[key].setdefault(name, []).append((int(count), float(held), float(longest), float(waited)))
            elif "BENCH: floor=" in line:
                d = dict(KV.findall(line))
                floors.setdefault(xs, []).append(d)
            elif "BENCH-ERR:" not in line and re.search(r"BENCH: (order=\S+ )?agent=", line):
                d = dict(KV.findall(line))
                agents[xs][d["agent"]].append(d)
            elif re.search(r"BENCH: (order=\S+ )?guest (rss|binary) ", line):
                for k, v in KV.findall(line):
                    if k != "order":
                        agents[xs]["guest-" + k].append({"v": v})
            elif "BENCH-ERR:" in line:
                errors.append(f"{xs} {line.split('BENCH-ERR: ', 1)[1].strip()}")

    m = field_med

    def fails(impl_rows):
        return sum(1 for r in impl_rows if r.get("create_rc") != "0")

    for xs in sorted(info):
        d = info[xs]
        print(f"Rig ({xs}): Xen {d.get('xen', '?')}, dom0 kernel {d.get('kernel', '?')}, Xen's command "
              f"line: `{cmdlines.get(xs, 'not recorded (a log from before 2026-12-07)')}`")
    if info:
        print()
    print("| xenstored | other domains | disks + NICs | NIC script | rounds, Debian / xenplug "
          "| xl create, Debian / xenplug (ms) | waiting on scripts in create, Debian / xenplug (ms) | ratio "
          "| xenplug scripts' share of create | xl destroy, Debian / xenplug (ms) "
          "| waiting on scripts in destroy, Debian / xenplug (ms) | ratio "
          "| overlap of adds, Debian / xenplug | failed creates, Debian / xenplug |")
    print("|" + "---|" * 14)

    def fmt(x, nd=0):
        return "–" if x != x else f"{x:.{nd}f}"

    for key in sorted(rows):
        xs, bg, n, nic = key
        deb, xp = rows[key].get("debian", []), rows[key].get("xenplug", [])
        c_d, c_x = m(deb, "create_ms"), m(xp, "create_ms")
        w_d, w_x = m(deb, "wait_add_ms"), m(xp, "wait_add_ms")
        # xl destroy only means something after a create that worked (a failed create already
        # tore the domain down, running the remove scripts itself).
        deb_ok = [r for r in deb if r.get("create_rc") == "0"]
        xp_ok = [r for r in xp if r.get("create_rc") == "0"]
        d_d, d_x = m(deb_ok, "destroy_ms"), m(xp_ok, "destroy_ms")
        r_d, r_x = m(deb_ok, "wait_remove_ms"), m(xp_ok, "wait_remove_ms")
        ov_d = m(deb, "sum_add_ms") / w_d if w_d else float("nan")
        ov_x = m(xp, "sum_add_ms") / w_x if w_x else float("nan")
        # A failed create's script time is cut short by libxl's timeout: a lower bound.
        lb = "≥ " if deb and fails(deb) else ""
        share = f"{100 * w_x / c_x:.1f} %" if xp else "–"
        print(f"| {xs} | {bg} | {n} + {n} | vif-{nic} | {len(deb)} / {len(xp)} | {fmt(c_d)} / {fmt(c_x)} "
              f"| {fmt(w_d)} / {fmt(w_x, 1)} | {lb if deb and xp else ''}{ratio(w_d, w_x) if deb and xp else '–'} "
              f"| {share} | {fmt(d_d)} / {fmt(d_x)} | {fmt(r_d)} / {fmt(r_x, 1)} "
              f"| {ratio(r_d, r_x) if deb_ok and xp_ok else '–'} | {fmt(ov_d, 1)} / {fmt(ov_x, 1)} "
              f"| {fails(deb)} of {len(deb)} / {fails(xp)} of {len(xp)} |")
    print()
    print("Medians over the rounds; Debian's and xenplug's runs alternate which goes first. A Debian "
          "create that failed (libxl killed its scripts at the hotplug timeout) counts with the time "
          "it took to fail, so its ratio is a lower bound (≥).")
    cpu_table(rows, info, fails)
    if per_script:
        print()
        print("Per script and action (median over the cell's rounds of each round's median, ms; "
              "longest run in brackets; then, where the wrapper measured it, the median CPU time, ms):")
        print()
        print("| xenstored | other domains | disks + NICs | NIC script | implementation | scripts |")
        print("|---|---|---|---|---|---|")
        for key in sorted(per_script):
            xs, bg, n, nic, impl = key
            cells = []
            for name in sorted(per_script[key]):
                meds = [v[0] for v in per_script[key][name]]
                mx = max(v[1] for v in per_script[key][name])
                cpus = [v[2] for v in per_script[key][name] if v[2] is not None]
                cells.append(f"{name} {med(meds):.0f} ({mx:.0f})" + (f", CPU {med(cpus):.1f}" if cpus else ""))
            print(f"| {xs} | {bg} | {n} + {n} | vif-{nic} | {impl} | {'; '.join(cells)} |")
    if locks:
        print()
        print("xenplug's locks (from the scripts' debug log; wall-clock hold times, a preempted "
              "holder's time included): holds per round (median), held median / longest, longest wait, ms:")
        print()
        print("| xenstored | other domains | disks + NICs | NIC script | locks |")
        print("|---|---|---|---|---|")
        for key in sorted(locks):
            xs, bg, n, nic = key
            cells = []
            for name in sorted(locks[key]):
                v = locks[key][name]
                cells.append(f"{name}: {med([c for c, *_ in v]):.0f} holds, held {med([h for _, h, _, _ in v]):.1f} / "
                             f"{max(x for *_, x, _ in v):.1f}, waited ≤ {max(w for *_, w in v):.1f}")
            print(f"| {xs} | {bg} | {n} + {n} | vif-{nic} | {'; '.join(cells)} |")
    for xs, fl in floors.items():
        print()
        if not all("alone_wall_ms" in d for d in fl):
            # Older logs: /bin/true ran without the wrapper, alone_ms was the command's wall time.
            print(f"Starting a script in this dom0 ({xs}): alone (median of 5) / 64 at once (wall), ms: "
                  + "; ".join(f"{d['floor']} {d['alone_ms']} / {d.get('concurrent64_ms', '–')}" for d in fl))
            continue
        cpu = all(d.get("alone_cpu_ms", "?") != "?" for d in fl)
        print(f"Starting a script in this dom0 ({xs}), through the timing wrapper: alone, the script's own "
              "run / the whole command (median of 5), and 64 at once (wall), ms"
              + ("; the script's own CPU time alone (median of 5), ms" if cpu else "") + ": "
              + "; ".join(f"{d['floor']} {d['alone_ms']} / {d.get('alone_wall_ms', '–')} / {d.get('concurrent64_ms', '–')}"
                          + (f", CPU {d['alone_cpu_ms']}" if cpu else "")
                          for d in fl))
    for xs, a in agents.items():
        guests = max(len(a.get("agent", [])), len(a.get("qemu-ga", [])))
        # Which agent the guest's init started first, as the lines say (older logs: not said).
        firsts = defaultdict(int)
        for d in a.get("agent", []):
            if "order" in d:
                firsts[d["order"]] += 1
        said = ", ".join(f"{k} in {v}" for k, v in sorted(firsts.items()))
        print()
        print(f"Guest agents ({xs} in dom0), each on its own channel of the same guest; median over "
              f"{guests} guest(s)" + (f" (started {said})" if said else "") + ":")
        print()
        print("| agent | answered | first answer after unpause (ms) | guest-ping median / p99 (ms) "
              "| RSS (KiB; anonymous / mapped files where measured) | binary (bytes) |")
        print("|---|---|---|---|---|---|")
        for name, rss, binary in (("agent", "guest-agent_kb", "guest-agent"), ("qemu-ga", "guest-qemu_ga_kb", "guest-qemu_ga")):
            runs = a.get(name, [])
            ok = [d for d in runs if "first_answer_ms" in d]

            def mf(field, rows=ok):
                vals = [float(d[field]) for d in rows if field in d and d[field] != "?"]
                return f"{med(vals):.{1 if field.startswith('ping') else 0}f}" if vals else "–"

            sizes = {d["v"] for d in a.get(binary, [])}
            # Anonymous / mapped files' pages (RssFile + RssShmem: the guest's root is a tmpfs).
            anon = a.get(rss.replace("_kb", "_anon_kb"), [])
            files = [{"v": float(f["v"]) + float(s["v"])}
                     for f, s in zip(a.get(rss.replace("_kb", "_file_kb"), []), a.get(rss.replace("_kb", "_shmem_kb"), []))]
            parts = f" ({mf('v', anon)} / {mf('v', files)})" if anon and files else ""
            print(f"| {'xenplug-agent' if name == 'agent' else 'qemu-ga (Debian 12)'} | {len(ok)} of {len(runs)} "
                  f"| {mf('first_answer_ms')} | {mf('ping_median_ms')} / {mf('ping_p99_ms')} "
                  f"| {mf('v', a.get(rss, []))}{parts} | {', '.join(sorted(sizes)) or '–'} |")
    if errors:
        print()
        print("Failed operations (not in the medians' favour: they count as measured):")
        seen = {}
        for e in errors:
            seen[e] = seen.get(e, 0) + 1
        for e, k in list(seen.items())[:20]:
            print("- " + e + (f" (×{k})" if k > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
