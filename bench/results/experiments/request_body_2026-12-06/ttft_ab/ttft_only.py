"""Time to first token through the service against the provider alone, sequential, on one
tier, without the burst: `python ttft_only.py TIER RUNS`, run from the checkout to measure.
Prints the medians (ms) as one JSON line."""

from __future__ import annotations

import json
import os
import statistics
import sys

sys.path.insert(0, os.getcwd())

import openai

from bench.ttft_overhead import direct, through_service
from tests.harness import Service


def main() -> None:
    tier, runs = sys.argv[1], int(sys.argv[2])
    series: dict[str, list[float]] = {"first": [], "direct": [], "post": [], "provider_sent": []}
    with Service(tier=tier) as service:
        provider = openai.OpenAI(base_url=service.fake.url + "/v1", api_key="bench", max_retries=0)
        with service.client("bench") as client:
            for warm_up in range(3):
                through_service(client, -1 - warm_up)
                direct(provider, -1 - warm_up)
            for run in range(runs):
                spans = through_service(client, run)
                for key in ("first", "post", "provider_sent"):
                    series[key].append(spans[key])
                series["direct"].append(direct(provider, run))
    medians = {key: round(statistics.median(values) * 1000, 2) for key, values in series.items()}
    medians["overhead"] = round(medians["first"] - medians["direct"], 2)
    print(json.dumps({"tier": tier, **medians}))


if __name__ == "__main__":
    main()
