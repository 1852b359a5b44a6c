#!/usr/bin/env python3
"""Builds the PEERS.md result table from three saved runs of the conformance suite.

usage: peers_table.py OURS.log QEMU.log VHOST_DEVICE_GPU.log > table.md
(each log: the full output of `cargo test -p vhost-user-gpu --test conformance`, stderr included)
"""
import re
import sys

PEERS = ["ours", "QEMU", "vhost-device-gpu"]
AREAS = ["2d", "blob", "ctx", "queue", "cli", "hostile", "stale", "limits", "soak", "disconnect", "sandbox"]


def parse(path):
    text = open(path, encoding="utf-8").read()
    results, reasons, order = {}, {}, []
    for m in re.finditer(r"^test \[[^\]]+\] (\S+)\s+\.\.\. (\w+)", text, re.M):
        results[m.group(1)] = m.group(2)
        order.append(m.group(1))
    for m in re.finditer(r"^---- (\S+) ----\n(.*)$", text, re.M):
        reasons[m.group(1)] = m.group(2).strip()
    for m in re.finditer(r"^conformance: (\S+) skipped: (.*)$", text, re.M):
        reasons[m.group(1)] = m.group(2).strip()
    return results, reasons, order


def cell(results, reasons, name):
    result = results.get(name, "?")
    why = reasons.get(name, "").replace("|", "/")
    if len(why) > 110:
        why = why[:107] + "..."
    if result == "ok":
        return "pass"
    if result == "ignored":
        return f"ignored ({why})" if why else "ignored"
    return f"FAIL: {why}"


def main():
    runs = [parse(p) for p in sys.argv[1:4]]
    order = []
    for _, _, o in runs:
        order += [n for n in o if n not in order]
    first_seen = list(order)

    def key(name):
        area = name.split("::")[0]
        return (AREAS.index(area) if area in AREAS else len(AREAS), first_seen.index(name))

    order.sort(key=key)
    print("| case | " + " | ".join(PEERS) + " |")
    print("|---|" + "---|" * len(PEERS))
    for name in order:
        print(f"| {name} | " + " | ".join(cell(r, w, name) for r, w, _ in runs) + " |")


if __name__ == "__main__":
    main()
