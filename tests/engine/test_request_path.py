"""One request path: what LangChain and DSPy users did, and what they get now.

Each test is named after what a user did. Backend work is counted with ``RecordingBackend``
(every ``sample``/``top_k`` call), never timed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import pickle
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("langchain_core")
dspy = pytest.importorskip("dspy")

from langchain_core.runnables import ConfigurableField  # noqa: E402

from power_sampling import PowerSampler, PowerSamplingConfig  # noqa: E402
from power_sampling.backends.scripted import ScriptedLM  # noqa: E402
from power_sampling.engine.registry import load_shared, loaded_models  # noqa: E402
from power_sampling.integrations.dspy import power_lm  # noqa: E402
from power_sampling.integrations.langchain import ChatPowerSampling  # noqa: E402
from power_sampling.measure.bench import RecordingBackend  # noqa: E402
from power_sampling.testing import tiny_tokenizer  # noqa: E402

SMALL = dict(block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4)
ROOT = Path(__file__).resolve().parents[2]


def test_user_misspells_or_invents_a_setting() -> None:
    with pytest.raises(ValueError, match="unknown setting 'topp': did you mean 'top_p'"):
        ChatPowerSampling(model_name="Qwen/Qwen2.5-7B-Instruct", device="cuda", topp=0.9)
    with pytest.raises(ValueError, match="did you mean 'num_rollouts'"):
        PowerSampler(ScriptedLM(tiny_tokenizer(), "x"), num_rolouts=4)
    sampler = PowerSampler(ScriptedLM(tiny_tokenizer(), "x"), **SMALL)
    with pytest.raises(ValueError, match="did you mean 'alpha'"):
        sampler.generate("hi", aplha=2)


def test_user_picks_device_dtype_and_model_kwargs(tiny_model_dir: Path) -> None:
    import torch

    llm = ChatPowerSampling(
        model_name=str(tiny_model_dir),
        device="cpu",
        dtype="float64",
        model_kwargs={"attn_implementation": "eager"},
        **SMALL,
        max_new_tokens=4,
    )
    assert llm.invoke("Hi").response_metadata["finish_reason"] in ("stop", "length")
    model = llm._backend().model  # type: ignore[attr-defined]
    assert model.dtype == torch.float64 and model.device.type == "cpu"
    assert model.config._attn_implementation == "eager"


def test_configurable_alpha_does_not_load_the_weights_again(tiny_model_dir: Path) -> None:
    name, before = str(tiny_model_dir), set(loaded_models())
    llm = ChatPowerSampling(model=name, **SMALL, max_new_tokens=4)
    configurable = llm.configurable_fields(alpha=ConfigurableField(id="alpha"))
    first = configurable.with_config(configurable={"alpha": 2.0}).invoke("Hi")
    second = configurable.with_config(configurable={"alpha": 8.0}).invoke("Hi")
    assert first.response_metadata["power_sampling"]["alpha"] == 2.0
    assert second.response_metadata["power_sampling"]["alpha"] == 8.0
    assert len(set(loaded_models()) - before) <= 1  # loaded once (or earlier), never per call
    other = ChatPowerSampling(model=name, alpha=1.5)
    assert other._backend() is llm._backend() is load_shared(name)


def test_chat_batch_of_four_shares_backend_calls(tiny_backend: Any) -> None:
    recording = RecordingBackend(tiny_backend)
    llm = ChatPowerSampling(backend=recording, **SMALL, max_new_tokens=8, seed=0)
    prompts = [f"Question {i}?" for i in range(4)]
    singles = []
    for prompt in prompts:
        before = len(recording.calls)
        llm.invoke(prompt)
        singles.append(len(recording.calls) - before)
    before = len(recording.calls)
    replies = llm.batch(prompts)
    together = len(recording.calls) - before
    assert len(replies) == 4
    # Seeded requests run together: their calls are merged step by step, so the batch makes
    # about the calls of its longest member, not the sum.
    assert together <= 2 * max(singles) and together < sum(singles)


async def test_cancelled_ainvoke_stops_and_frees_the_model() -> None:
    backend = RecordingBackend(ScriptedLM(tiny_tokenizer(), "word " * 400))
    llm = ChatPowerSampling(backend=backend, **SMALL, max_new_tokens=400)
    task = asyncio.create_task(llm.ainvoke("Talk"))
    for _ in range(2000):  # until the generation is under way (bounded)
        if len(backend.calls) >= 4:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    short = ChatPowerSampling(backend=backend, **SMALL, max_new_tokens=4)
    assert (await short.ainvoke("Hi")).content.startswith("word")
    # The 400-token answer needs about 200 calls; it stopped at the step after the cancel.
    assert len(backend.calls) < 60


def test_dspy_user_passes_max_tokens_and_copies_with_alpha() -> None:
    backend = ScriptedLM(tiny_tokenizer(), "one two three four five six")
    lm = power_lm(backend=backend, max_tokens=3, cache=False, **SMALL)
    assert "one" in lm("hi")[0]
    response = lm.history[-1]["response"]
    assert response.finish_reason == "length" and response.usage.output_tokens == 3
    sharper = lm.copy(alpha=8)
    assert sharper.model != lm.model and "a8" in sharper.model
    assert sharper.engine.scheduler.backend is lm.engine.scheduler.backend
    sharper("hi")
    assert "a8" in sharper.history[-1]["response_model"]
    relabelled = lm.copy(metadata={"alpha": 2})
    relabelled("hi")
    assert "a2" in relabelled.history[-1]["response_model"]


def test_dspy_program_deepcopy_and_pickle_share_the_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lm = power_lm(backend=ScriptedLM(tiny_tokenizer(), "x"), cache=False, **SMALL)
    program = dspy.Predict("question -> answer")
    program.set_lm(lm)
    with caplog.at_level(logging.WARNING):
        clone = program.deepcopy()
    assert "Failed to deep copy" not in caplog.text
    assert clone.get_lm().engine is lm.engine
    assert copy.deepcopy(lm).engine is lm.engine
    restored = pickle.loads(pickle.dumps(power_lm(preset="cpu", cache=False)))
    assert restored.engine.config == PowerSamplingConfig.preset("cpu")


def test_installing_an_adapter_extra_brings_the_model_runtime() -> None:
    """And the grammar engine that constrains the adapters' tool calls and structured output."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("langchain", "dspy"):
        assert "power-sampling[hf,constraints]" in extras[extra], extra


def test_paper_budgets_on_a_cpu_say_so_once(
    tiny_backend: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import power_sampling.samplers.power_sampler as sampler_module

    monkeypatch.setattr(sampler_module, "_warned_heavy", False)
    sampler = PowerSampler(tiny_backend, PowerSamplingConfig.preset("paper", max_new_tokens=1))
    with caplog.at_level(logging.WARNING, logger="power_sampling"):
        sampler.generate("Hi")
        sampler.generate("Hi")
    warnings = [r for r in caplog.records if "preset='cpu'" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    monkeypatch.setattr(sampler_module, "_warned_heavy", False)
    PowerSampler(tiny_backend, PowerSamplingConfig.preset("cpu", max_new_tokens=1)).generate("Hi")
    assert not [r for r in caplog.records if "preset='cpu'" in r.getMessage()]


def test_readme_cites_only_files_in_the_repository() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    cited = set(re.findall(r"\]\((?!https?://|#)([^)#]+)", readme))
    missing = [path for path in cited if not (ROOT / path).exists()]
    assert not missing, f"README links to files that are not in the repository: {missing}"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        ({"seed": -1}, ValueError, "seed=-1 is invalid"),
        ({"seed": "3"}, ValueError, "seed='3' is invalid"),
        ({"max_new_tokens": 2.5}, ValueError, "max_new_tokens=2.5 is invalid"),
        ({"stop": [5]}, ValueError, "stop strings must be non-empty strings"),
        ({"stop": [""]}, ValueError, "stop strings must be non-empty strings"),
        ({"prompt": b"hello"}, TypeError, "prompt is bytes: decode it"),
    ],
)
def test_user_passes_a_bad_per_call_value(
    call: dict[str, Any], error: type[Exception], message: str
) -> None:
    sampler = PowerSampler(ScriptedLM(tiny_tokenizer(), "x"), **SMALL)
    prompt = call.pop("prompt", "hi")
    with pytest.raises(error, match=message):
        sampler.generate(prompt, **call)


def test_llm_batch_with_a_seed_equals_invoke(tiny_backend: Any) -> None:
    from power_sampling.integrations.langchain import PowerSamplingLLM

    llm = PowerSamplingLLM(backend=tiny_backend, **SMALL, max_new_tokens=8, seed=7)
    prompts = ["The quick", "A slow"]
    assert llm.batch(prompts) == [llm.invoke(p) for p in prompts]


def test_user_sends_an_image_part_in_raw_chat_messages() -> None:
    sampler = PowerSampler(ScriptedLM(tiny_tokenizer(), "x"), **SMALL)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    with pytest.raises(ValueError, match="'image_url' content part: the model reads text only"):
        sampler.generate(messages)


def test_user_binds_a_tool_without_a_name() -> None:
    llm = ChatPowerSampling(backend=ScriptedLM(tiny_tokenizer(), "x"), **SMALL)
    with pytest.raises(ValueError, match="give it a 'name'"):
        llm.bind_tools([{"description": "adds", "parameters": {"type": "object"}}])


def test_first_load_shows_no_progress_bar_inside_streamed_text(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights load before the first token, with transformers' progress bars off meanwhile (and
    back on afterwards), so nothing interleaves with the text a caller streams."""
    from transformers.utils import logging as hf_logging

    import power_sampling.backends.models as models

    seen: list[bool] = []
    resolve = models.resolve_model

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(hf_logging.is_progress_bar_enabled())
        return resolve(*args, **kwargs)

    monkeypatch.setattr(models, "resolve_model", recording)
    hf_logging.enable_progress_bar()
    llm = ChatPowerSampling(model=str(tiny_model_dir), dtype="bfloat16", **SMALL, max_new_tokens=2)
    chunks = list(llm.stream("Hi"))
    assert seen == [False] and hf_logging.is_progress_bar_enabled()
    assert chunks and all("%|" not in str(c.content) for c in chunks)
