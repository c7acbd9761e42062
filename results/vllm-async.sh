#!/usr/bin/env bash
# vLLM's own OpenAI server against `power-sampling serve --backend vllm`, both up at once on the
# embedded model (float32, eager), measured in turns with the same workload:
# method=standard, 64 tokens, concurrency 1 and 8, distinct seeds (core/measure/servers.py).
# Then the power method on the async engine with and without the batcher in front of it.
# Run from the repository root: bash results/vllm-async.sh
set -euo pipefail
PY=.venv-vllm/bin/python
MODEL=$($PY -c "from power_sampling.backends.models import default_model_dir; print(default_model_dir())")
export VLLM_CPU_KVCACHE_SPACE=1
LOGS=$(mktemp -d)
$PY -m vllm.entrypoints.openai.api_server --model "$MODEL" --dtype float32 --enforce-eager \
  --max-logprobs 64 --host 127.0.0.1 --port 18301 >"$LOGS/vllm.log" 2>&1 &
VLLM_PID=$!
.venv-vllm/bin/power-sampling serve --backend vllm --host 127.0.0.1 --port 18302 --quiet \
  >"$LOGS/ours.log" 2>&1 &
OURS_PID=$!
trap 'kill $VLLM_PID $OURS_PID 2>/dev/null; wait $VLLM_PID $OURS_PID 2>/dev/null || true' EXIT
uptime
$PY -m power_sampling.measure.servers \
  --server vllm=http://127.0.0.1:18301 --server power-sampling=http://127.0.0.1:18302 \
  --max-tokens 64 --concurrency 1,8 --rounds "${ROUNDS:-3}" \
  --extra '{"power_sampling": {"method": "standard"}}' --out results/vllm-async-servers
uptime
