#!/usr/bin/env python3
"""Helpers of scenarios/98-cloud-template (not a scenario: the driver runs only NN-name files).

    cloud-template.py row LIST_JSON VM FIELD
        FIELD of VM's agent-channel row in `xenplug-peer list --json` (the newest domain of that
        name); `deliveries` is counters.deliveries. Prints nothing when there is no such row.
    cloud-template.py match LIST_JSON VM FIELD=VALUE…
        exit 0 if every FIELD of that row has VALUE (as `row` prints it; VALUE empty: no such
        field), 1 otherwise: one call for a condition polled by the scenario.
    cloud-template.py events PEER_LOG DOMID
        the daemon's events for DOMID, one "UPTIME EVENT" line each (PEER_LOG: its stderr with
        dom0's uptime in front of every line)
    cloud-template.py discovery PEER_LOG XSWATCH_LOG DOMID DEVID
        seconds from libxl's first console backend node of DOMID/DEVID (xenstore-watch, same
        time base) to the daemon's channel-up
    cloud-template.py delivery PEER_LOG DOMID GEN
        seconds from DOMID's first handshake to its `configured` event for generation GEN
        (apply and verify)
    cloud-template.py configured-at PEER_LOG DOMID GEN
        dom0's uptime when the daemon logged `configured` for generation GEN of DOMID
    cloud-template.py event-at PEER_LOG DOMID EVENT
        dom0's uptime of the daemon's first EVENT for DOMID
"""

import json
import sys

AGENT_CHANNEL = "org.xenplug.agent.0"


def rows(path, vm):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return sorted(
        (r for r in data if r.get("vm_name") == vm and r.get("channel") == AGENT_CHANNEL),
        key=lambda r: r["domid"],
    )


def field_of(row, field):
    return row.get("counters", {}).get(field) if field == "deliveries" else row.get(field)


def log_events(path, domid=None):
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            up, _, rest = line.partition(" ")
            try:
                ev = json.loads(rest)
                t = float(up)
            except ValueError:
                continue
            if domid is None or ev.get("domid") == domid:
                out.append((t, ev))
    return out


def first(events, name):
    return next((t for t, e in events if e.get("event") == name), None)


def configured_at(events, generation):
    """When the daemon logged `configured` for GENERATION (None if it never did)."""
    return next(
        (t for t, e in events if e.get("event") == "configured" and e.get("generation") == generation),
        None,
    )


def main(argv):
    cmd = argv[1]
    if cmd == "row":
        r = rows(argv[2], argv[3])
        if not r:
            return 0
        v = field_of(r[-1], argv[4])
        if v is not None:
            print(v)
        return 0
    if cmd == "match":
        r = rows(argv[2], argv[3])
        if not r:
            return 1
        for want in argv[4:]:
            field, _, value = want.partition("=")
            v = field_of(r[-1], field)
            if ("" if v is None else str(v)) != value:
                return 1
        return 0
    if cmd == "events":
        for t, e in log_events(argv[2], int(argv[3])):
            print(f"{t:.2f} {e.get('event')} {json.dumps({k: v for k, v in e.items() if k not in ('event', 'domid')})}")
        return 0
    if cmd == "discovery":
        domid, devid = int(argv[4]), argv[5]
        prefix = f"/local/domain/0/backend/console/{domid}/{devid}/"
        t_nodes = None
        with open(argv[3], encoding="utf-8", errors="replace") as f:
            for line in f:
                up, _, path = line.strip().partition(" ")
                if path.startswith(prefix) or path == prefix[:-1]:
                    t_nodes = float(up)
                    break
        t_up = next(
            (t for t, e in log_events(argv[2], domid)
             if e.get("event") == "channel-up" and str(e.get("devid")) == devid),
            None,
        )
        if t_nodes is None or t_up is None:
            return 1
        print(f"{t_up - t_nodes:.3f}")
        return 0
    if cmd == "delivery":
        # The first handshake to the `configured` event of generation GEN.
        ev = log_events(argv[2], int(argv[3]))
        hs = first(ev, "handshake")
        conf = configured_at(ev, int(argv[4]))
        if hs is None or conf is None:
            return 1
        print(f"{conf - hs:.3f}")
        return 0
    if cmd == "configured-at":
        conf = configured_at(log_events(argv[2], int(argv[3])), int(argv[4]))
        if conf is None:
            return 1
        print(f"{conf:.2f}")
        return 0
    if cmd == "event-at":
        t = first(log_events(argv[2], int(argv[3])), argv[4])
        if t is None:
            return 1
        print(f"{t:.2f}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
