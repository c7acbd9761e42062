"""The DSPy engine end to end, on ScriptedLM: DSPy's adapters need exact output formats.

``ScriptedLM`` writes a scripted reply while the whole pipeline runs for real: DSPy formats the
prompt, the engine renders it with the tokenizer's chat template, the power sampler scores
candidates and rollouts, and DSPy parses the text that comes back.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from typing import Any

import pytest

dspy = pytest.importorskip("dspy")
pytest.importorskip("transformers")

from dspy.utils.exceptions import (  # noqa: E402
    AdapterParseError,
    ContextWindowExceededError,
    LMError,
)

from power_sampling import PowerSampler, PowerSamplingConfig  # noqa: E402
from power_sampling.backends.scripted import ScriptedLM  # noqa: E402
from power_sampling.integrations.dspy import (  # noqa: E402
    AsyncPowerEngine,
    PowerEngine,
    power_lm,
)
from power_sampling.testing import tiny_tokenizer  # noqa: E402

# Small budgets: the scripted reply is fixed, so these only set how much machinery runs.
FAST = dict(top_k=2, num_rollouts=2, block_size=4, rollout_length=4, num_candidates=4)


def fields(**values: Any) -> str:
    """A reply in ChatAdapter's format: ``[[ ## name ## ]]`` sections, then ``completed``."""
    body = "".join(f"[[ ## {name} ## ]]\n{value}\n\n" for name, value in values.items())
    return body + "[[ ## completed ## ]]"


class Recorder:
    """A sampler on ``backend`` whose runs are recorded: batch size and the settings that ran."""

    def __init__(self, backend: Any, **settings: Any) -> None:
        self.sampler = PowerSampler(backend, PowerSamplingConfig(**{**FAST, **settings}))
        self.backend = backend

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [
            {"batch": len(requests), **requests[0].config.model_dump()}
            for backend, requests in RUNS
            if backend is self.backend
        ]


RUNS: list[tuple[Any, list[Any]]] = []


@pytest.fixture(autouse=True)
def record_runs(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every sampler run is recorded in ``RUNS`` (all generations go through ``run``)."""
    original = PowerSampler.run

    def recording(self: PowerSampler, requests: Any, *args: Any, **kwargs: Any) -> Any:
        RUNS.append((getattr(self.backend, "base", self.backend), list(requests)))  # a lane's
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(PowerSampler, "run", recording)
    yield
    RUNS.clear()


@pytest.fixture(autouse=True)
def memory_cache() -> Any:
    """A fresh in-memory DSPy cache per test; nothing is written under the user's home."""
    previous = dspy.__dict__.get("cache")
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    yield
    if previous is None:
        dspy.__dict__.pop("cache", None)
    else:
        dspy.cache = previous


@pytest.fixture
def tokenizer() -> Any:
    return tiny_tokenizer()


def scripted_lm(tokenizer: Any, reply: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("cache", False)
    return power_lm(backend=ScriptedLM(tokenizer, reply), **{**FAST, **kwargs})


def test_predict_reassembles_system_and_messages(tokenizer: Any) -> None:
    prompts: list[str] = []

    def reply(prompt: str) -> str:
        prompts.append(prompt)
        return fields(answer="4")

    lm = scripted_lm(tokenizer, reply)
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="What is 2 + 2?").answer == "4"
    # DSPy moved the adapter's system message to Request.system: it is back in the template.
    assert prompts[0].startswith("<|im_start|>system\nYour input fields are:")
    assert "<|im_start|>user\n[[ ## question ## ]]\nWhat is 2 + 2?" in prompts[0]
    assert prompts[0].endswith("<|im_start|>assistant\n")
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] == len(tokenizer.encode(prompts[0]))
    assert usage["completion_tokens"] == len(tokenizer.encode(fields(answer="4"))) + 1  # + end
    assert lm.model.startswith("power/scripted@a4-k2-m2-")


def test_chain_of_thought(tokenizer: Any) -> None:
    lm = scripted_lm(tokenizer, fields(reasoning="2 + 2 = 4.", answer="4"))
    with dspy.context(lm=lm):
        result = dspy.ChainOfThought("question -> answer")(question="What is 2 + 2?")
    assert (result.reasoning, result.answer) == ("2 + 2 = 4.", "4")


def test_react_calls_a_python_tool(tokenizer: Any) -> None:
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append((a, b))
        return a + b

    def reply(prompt: str) -> str:
        if "next_tool_name" not in prompt:  # ReAct's final extraction (a ChainOfThought)
            return fields(reasoning="The tool said 5.", answer="5")
        if "observation_0" not in prompt:
            return fields(
                next_thought="Use add.", next_tool_name="add", next_tool_args='{"a": 2, "b": 3}'
            )
        return fields(next_thought="Done.", next_tool_name="finish", next_tool_args="{}")

    with dspy.context(lm=scripted_lm(tokenizer, reply)):
        result = dspy.ReAct("question -> answer", tools=[add])(question="What is 2 + 3?")
    assert calls == [(2, 3)]
    assert result.trajectory["observation_0"] == 5
    assert result.answer == "5"


def test_evaluate_with_8_threads_answers_every_example(tokenizer: Any) -> None:
    def reply(prompt: str) -> str:
        number = int(re.findall(r"What is (\d+) \+ 1\?", prompt)[-1])
        return fields(answer=str(number + 1))

    backend = ScriptedLM(tokenizer, reply)
    recorder = Recorder(backend)
    lm = power_lm(sampler=recorder.sampler, cache=False)
    devset = [
        dspy.Example(question=f"What is {i} + 1?", answer=str(i + 1)).with_inputs("question")
        for i in range(16)
    ]
    evaluate = dspy.Evaluate(
        devset=devset,
        metric=lambda example, prediction, trace=None: example.answer == prediction.answer,
        num_threads=8,
        display_progress=False,
    )
    scheduler = lm.engine.scheduler  # held, so every thread gets this scheduler
    with dspy.context(lm=lm):
        result = evaluate(dspy.Predict("question -> answer"))
    assert result.score == 100.0
    assert len(result.results) == 16
    assert sum(call["batch"] for call in recorder.calls) == 16
    batcher = scheduler.batcher
    assert batcher.calls < batcher.requested  # concurrent requests' model calls were merged


def test_changing_alpha_changes_what_the_cache_returns(tokenizer: Any) -> None:
    """The settings are in the model string (and metadata in DSPy's key): no stale answers."""
    alpha4 = Recorder(ScriptedLM(tokenizer, "x"), alpha=4)
    alpha2 = Recorder(ScriptedLM(tokenizer, "x"), alpha=2)
    lm4 = power_lm(sampler=alpha4.sampler)
    lm2 = power_lm(sampler=alpha2.sampler)
    assert lm4.model != lm2.model
    lm4("question")
    lm4("question")
    assert len(alpha4.calls) == 1  # the second answer came from the cache
    lm2("question")
    assert len(alpha2.calls) == 1  # another alpha: generated, not alpha 4's cached answer
    lm4("question", metadata={"alpha": 1})
    assert len(alpha4.calls) == 2 and alpha4.calls[-1]["alpha"] == 1  # per-call settings too
    for change in ({"num_rollouts": 3}, {"rollout_length": 8}, {"seed": 1}, {"method": "mcmc"}):
        settings = {**FAST, **change}
        if settings.get("method") == "mcmc":
            settings.pop("top_k")  # power's K: refused by the other methods (power_sampling.fields)
        assert power_lm(backend=alpha4.backend, **settings).model != lm4.model


def test_streamify_yields_text(tokenizer: Any) -> None:
    lm = scripted_lm(tokenizer, fields(answer="four is the answer"), block_size=2)
    program = dspy.streamify(
        dspy.Predict("question -> answer"),
        stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")],
    )

    async def collect() -> list[Any]:
        with dspy.context(lm=lm):
            return [item async for item in program(question="What is 2 + 2?")]

    items = asyncio.run(collect())
    chunks = [item.chunk for item in items if isinstance(item, dspy.streaming.StreamResponse)]
    assert len(chunks) > 1
    assert "".join(chunks) == "four is the answer"
    assert items[-1].answer == "four is the answer"


def test_engine_stream_events(tokenizer: Any) -> None:
    lm = scripted_lm(tokenizer, "hello there", block_size=2)
    request = dspy.lm15.Request(model=lm.model, messages=(dspy.lm15.Message.user("hi"),))
    events = list(lm.engine.stream(request))
    assert [e.type for e in events[:1] + events[-1:]] == ["start", "end"]
    assert "".join(e.delta.text for e in events if e.type == "delta") == "hello there"
    assert events[-1].finish_reason == "stop" and events[-1].usage.output_tokens > 0


def test_acall_and_async_stream(tokenizer: Any) -> None:
    lm = scripted_lm(tokenizer, fields(answer="4"))
    predict = dspy.Predict("question -> answer")

    async def run() -> list[Any]:
        with dspy.context(lm=lm):
            return await asyncio.gather(*(predict.acall(question=f"q{i}") for i in range(4)))

    assert [p.answer for p in asyncio.run(run())] == ["4"] * 4
    request = dspy.lm15.Request(model=lm.model, messages=(dspy.lm15.Message.user("hi"),))

    async def stream() -> str:
        engine = AsyncPowerEngine(lm.engine)
        return "".join([e.delta.text async for e in engine.stream(request) if e.type == "delta"])

    assert asyncio.run(stream()) == fields(answer="4")


def test_dump_state_and_load_state_round_trip_the_settings(tokenizer: Any, tmp_path: Any) -> None:
    lm = power_lm(
        backend=ScriptedLM(tokenizer, "x"), alpha=3, num_rollouts=5, seed=7, name="tiny-chat"
    )
    loaded = dspy.LM.load_state(lm.dump_state(), allow_custom_lm_class=True)
    assert isinstance(loaded.engine, PowerEngine)
    assert loaded.engine.config == lm.engine.config
    assert loaded.engine.config.alpha == 3 and loaded.engine.config.seed == 7
    assert loaded.model == lm.model
    assert loaded._async_engine_spec.engine is loaded.engine  # one engine, one model load
    # The same through a saved program, with per-module settings in metadata.
    program = dspy.Predict("question -> answer")
    program.set_lm(lm.copy(metadata={"num_rollouts": 16}))
    program.save(tmp_path / "program.json")
    restored = dspy.Predict("question -> answer")
    restored.load(tmp_path / "program.json", allow_unsafe_lm_state=True)
    assert restored.lm.engine.config == lm.engine.config
    assert restored.lm.kwargs["metadata"] == {"num_rollouts": 16}


def test_n_draws_independent_samples_with_different_seeds(tokenizer: Any) -> None:
    recorder = Recorder(ScriptedLM(tokenizer, fields(answer="4")), seed=11)
    lm = power_lm(sampler=recorder.sampler, cache=False)
    with dspy.context(lm=lm):
        result = dspy.Predict("question -> answer")(question="q", config={"n": 3})
    assert [c.answer for c in result.completions] == ["4"] * 3
    assert [call["seed"] for call in recorder.calls] == [11, 12, 13]


def test_request_options_are_mapped(tokenizer: Any) -> None:
    recorder = Recorder(ScriptedLM(tokenizer, "one two STOP three"))
    lm = power_lm(sampler=recorder.sampler, cache=False)
    assert lm("hi", stop=["STOP"])[0] == "one two "
    assert lm.history[-1]["response"].finish_reason == "stop"
    assert lm("hi", max_tokens=2, seed=5)[0] == "one"
    assert lm.history[-1]["response"].finish_reason == "length"
    assert recorder.calls[-1]["max_new_tokens"] == 2 and recorder.calls[-1]["seed"] == 5
    lm("hi", temperature=0, metadata={"method": "standard"})  # greedy
    assert recorder.calls[-1]["temperature"] == 0 and recorder.calls[-1]["method"] == "standard"
    lm("hi", temperature=1.0, metadata={"alpha": 2, "max_new_tokens": 9})
    assert recorder.calls[-1]["alpha"] == 2 and recorder.calls[-1]["max_new_tokens"] == 9
    assert recorder.calls[-1]["seed"] is None
    # Per-call settings from a module's config (the reply is not in DSPy's format: no parse; no
    # JSONAdapter fallback, whose schema constraint this script could not follow).
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    with dspy.context(lm=lm, adapter=adapter), pytest.raises(AdapterParseError):
        dspy.Predict("question -> answer")(question="q", config={"metadata": {"top_k": 3}})
    assert recorder.calls[-1]["top_k"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.3}, "alpha controls the sharpening"),
        ({"metadata": {"alhpa": 2}}, "unknown setting 'alhpa': did you mean 'alpha'"),
        ({"metadata": {"alpha": -1}}, "alpha"),
        ({"top_p": 0.9}, "nucleus"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tool"),
    ],
)
def test_unsupported_options_are_refused_with_the_fix(
    tokenizer: Any, kwargs: dict[str, Any], message: str
) -> None:
    lm = scripted_lm(tokenizer, "x")
    with pytest.raises(LMError, match=message):
        lm("hi", **kwargs)


def test_a_prompt_longer_than_the_context_is_dspys_context_error(tokenizer: Any) -> None:
    lm = power_lm(backend=ScriptedLM(tokenizer, "x", max_context=32), cache=False, **FAST)
    with pytest.raises(ContextWindowExceededError):
        lm("a long prompt " * 20)
    assert lm("hi")[0] == "x"  # the engine keeps working


def test_importing_the_package_does_not_import_dspy() -> None:
    code = "import sys, power_sampling, power_sampling.integrations; print('dspy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_close_leaves_the_engine_usable(tokenizer: Any) -> None:
    lm = scripted_lm(tokenizer, "x")
    assert lm("a")[0] == "x"
    lm.engine.scheduler.close()
    assert lm.engine.scheduler.active == 0
    assert lm("b")[0] == "x"
