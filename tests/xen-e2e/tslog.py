"""Timestamp the serial console: read QEMU's stdout as bytes, write "[secs] line" to the log
(secs since the time passed as argv[1]) and echo result and progress lines to stdout."""
import re
import sys
import time

t0 = float(sys.argv[1])
show = re.compile(r"^(PASS |FAIL |SKIP |E2E: |BENCH)")
with open(sys.argv[2], "w", encoding="utf-8", buffering=1) as log:
    buf = b""
    stdin = sys.stdin.buffer.raw
    while True:
        chunk = stdin.read(4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").replace("\r", "").replace("\0", "")
            stamped = "[%8.2f] %s" % (time.time() - t0, line)
            log.write(stamped + "\n")
            if show.match(line):
                print(stamped, flush=True)
    if buf:
        log.write("[%8.2f] %s\n" % (time.time() - t0, buf.decode("utf-8", errors="replace")))
