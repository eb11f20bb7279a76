"""Turns the output of `make fuzz-long` into the Markdown table of tests/fuzz/CAMPAIGN.md
(included by docs/reliability.md).

    .venv/bin/python tests/fuzz/campaign.py build/fuzz/long.log > tests/fuzz/CAMPAIGN.md

Per target: inputs run, seconds, inputs a second, coverage at the start and at the end
(libFuzzer's `cov`: edges reached in the instrumented code, csrc/ for the C targets and
megapairs/ for the Python ones), the corpus kept, peak memory and whether it stopped on a
failure. A target run again after a fix appears once per run, in log order.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

HEADER = re.compile(r"^== (?:build/fuzz/fuzz_(\w+)|tests/fuzz/fuzz_python\.py (\w+)) \(")
INITED = re.compile(r"INITED cov: (\d+) ft: (\d+)")
DONE = re.compile(r"DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
RUNS = re.compile(r"^Done (\d+) runs in (\d+) second")
STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
FAIL = re.compile(r"ERROR: libFuzzer|==\d+==ERROR|Uncaught Python exception")


def parse(log: str) -> list[dict]:
    targets: list[dict] = []
    for line in log.splitlines():
        m = HEADER.match(line)
        if m:
            targets.append({"name": m.group(1) or f"py {m.group(2)}", "failures": 0})
            continue
        if not targets:
            continue
        t = targets[-1]
        if (m := INITED.search(line)) and "cov0" not in t:
            t["cov0"] = int(m.group(1))
        elif m := DONE.search(line):
            t["cov"], t["ft"], t["corpus"] = int(m.group(1)), int(m.group(2)), int(m.group(3))
        elif m := RUNS.match(line):
            t["runs"], t["seconds"] = int(m.group(1)), int(m.group(2))
        elif m := STAT.match(line):
            t[m.group(1)] = int(m.group(2))
        elif FAIL.search(line):
            t["failures"] = 1  # libFuzzer stops at the first failure, saving its input
    return targets


def table(targets: list[dict], when: str) -> str:
    rows = ["| target | inputs | seconds | inputs/s | coverage (start → end) | corpus | peak RSS | failures |",
            "|---|---:|---:|---:|---|---:|---:|---:|"]
    for t in targets:
        runs = t.get("number_of_executed_units", t.get("runs", 0))
        rows.append(f"| `{t['name']}` | {runs:,} | {t.get('seconds', '?')} | {t.get('average_exec_per_sec', 0):,} "
                    f"| {t.get('cov0', '?')} → {t.get('cov', '?')} | {t.get('corpus', '?')} "
                    f"| {t.get('peak_rss_mb', '?')} MB | {t['failures']} |")
    return (f"`make fuzz-long` on {when} (2-core VM, one run; the C targets run csrc/ under ASan and "
            "UBSan, the Python ones megapairs/ under Atheris):\n\n" + "\n".join(rows) + "\n")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} LOG")
    log = Path(sys.argv[1])
    when = time.strftime("%Y-%m-%d", time.gmtime(log.stat().st_mtime))
    sys.stdout.write(table(parse(log.read_text(errors="replace")), when))


if __name__ == "__main__":
    main()
