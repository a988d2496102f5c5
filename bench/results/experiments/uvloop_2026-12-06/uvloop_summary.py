"""Worker, Daphne, fake provider and Redis CPU-ms per token of each run of cap_ab.sh.

python uvloop_summary.py OUT
"""

import glob
import json
import sys

for run in sorted(glob.glob(sys.argv[1] + "/*")):
    try:
        with open(run + "/capacity.json") as f:
            steps = json.load(f)["steps"]
    except OSError:
        continue
    for step in steps:
        if step["system"] != "ours":
            continue
        tokens, cpu = step["tokens_received"], step["cpu_s"]
        per = {name: round(cpu[name] / tokens * 1000, 4) for name in cpu}
        print(
            run.split("/")[-1],
            step["streams"],
            "p99",
            step["event_p99_ms"],
            *(f"{name} {per[name]}" for name in ("worker", "daphne", "provider", "redis")),
            "worker/provider",
            round(cpu["worker"] / cpu["provider"], 2),
        )
