"""Each run of ttft_switch.sh: overhead p50 and the burst's p50 and spans, per tier.

python ttft_summary.py OUT
"""

import glob
import json
import sys

for run in sorted(glob.glob(sys.argv[1] + "/*")):
    try:
        with open(run + "/ttft_overhead.json") as f:
            tiers = json.load(f)["tiers"]
    except OSError:
        continue
    for tier in tiers:
        burst = tier["burst"]
        spans = burst["spans"]
        print(
            run.split("/")[-1],
            tier["tier"],
            "overhead p50",
            tier["overhead"]["p50_ms"],
            "burst p50",
            burst["p50_ms"],
            "post p50",
            spans["post"]["p50_ms"],
            "delivery p50",
            spans["delivery"]["p50_ms"],
        )
