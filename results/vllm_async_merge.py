"""Power sampling on vLLM's async engine, 1 and 8 concurrent requests with distinct seeds:
each request's calls straight to the engine (the default) against the batcher in front of it.
Run from the repository root: .venv-vllm/bin/python results/vllm_async_merge.py"""

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

if __name__ == "__main__":
    from power_sampling import PowerSamplingConfig
    from power_sampling.backends.models import default_model_dir
    from power_sampling.backends.vllm import AsyncVLLMBackend
    from power_sampling.measure.concurrency import as_json, load_markdown, run_load

    backend = AsyncVLLMBackend.from_pretrained(
        str(default_model_dir()), dtype="float32", enforce_eager=True
    )
    power = PowerSamplingConfig(
        method="power", max_new_tokens=16, num_candidates=8, block_size=8, top_k=4,
        num_rollouts=2, rollout_length=8,
    )
    prompts = ["Once upon a time", "The capital of France is", "def add(a, b):"]
    out = {}
    for merge in (False, True, False, True):  # in turns, twice: the machine's load is shared
        name = "batcher" if merge else "direct"
        points = run_load(backend, {name: power}, prompts, (1, 8), mixed=False, merge=merge)
        out.setdefault(name, []).extend(as_json(points))
        print(load_markdown(points), flush=True)
    stem = sys.argv[1] if len(sys.argv) > 1 else "results/vllm-async-merge"
    with open(f"{stem}.json", "w") as f:
        json.dump(out, f, indent=2)
    backend.close()
