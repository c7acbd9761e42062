"""``power_lm`` takes the arguments every ``dspy.LM`` takes and honours them as ``dspy.LM`` does:
``num_retries`` (a full queue is a retryable rate limit), ``callbacks`` and ``cache``."""

from __future__ import annotations

from typing import Any

import pytest

dspy = pytest.importorskip("dspy")
pytest.importorskip("transformers")

from dspy.utils.callback import BaseCallback  # noqa: E402
from dspy.utils.exceptions import LMRateLimitError  # noqa: E402

from power_sampling.backends.scripted import ScriptedLM  # noqa: E402
from power_sampling.engine.scheduler import QueueFull, Scheduler  # noqa: E402
from power_sampling.integrations.dspy import engine as dspy_engine  # noqa: E402
from power_sampling.integrations.dspy import power_lm  # noqa: E402
from power_sampling.testing import tiny_tokenizer  # noqa: E402

FAST = dict(top_k=2, num_rollouts=2, block_size=4, rollout_length=4, num_candidates=4)
ANSWER = "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"


@pytest.fixture(autouse=True)
def memory_cache() -> Any:
    previous = dspy.__dict__.get("cache")
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    yield
    if previous is None:
        dspy.__dict__.pop("cache", None)
    else:
        dspy.cache = previous


def submissions(monkeypatch: pytest.MonkeyPatch, full: int = 0) -> list[int]:
    """Count ``Scheduler.submit`` calls; the first ``full`` raise ``QueueFull``."""
    count = [0]
    original = Scheduler.submit

    def submit(self: Scheduler, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] <= full:
            raise QueueFull("full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "submit", submit)
    monkeypatch.setattr(dspy_engine, "RETRY_AFTER", 0.01)
    return count


def lm(**kwargs: Any) -> Any:
    kwargs.setdefault("cache", False)
    return power_lm(backend=ScriptedLM(tiny_tokenizer(), ANSWER), **FAST, **kwargs)


def ask(model: Any, question: str = "What is 2 + 2?") -> str:
    with dspy.context(lm=model):
        return str(dspy.Predict("question -> answer")(question=question).answer)


def test_num_retries_retries_a_full_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    count = submissions(monkeypatch, full=2)
    assert ask(lm(num_retries=2)) == "4" and count[0] == 3
    count = submissions(monkeypatch, full=1)
    with pytest.raises(LMRateLimitError, match="full"):
        ask(lm(num_retries=0))
    assert count[0] == 1
    assert lm(num_retries=5).num_retries == 5 and lm().num_retries == 3  # dspy.LM's default
    with pytest.raises(ValueError, match="num_retries"):
        lm(num_retries=-1)


async def test_num_retries_async(monkeypatch: pytest.MonkeyPatch) -> None:
    count = submissions(monkeypatch, full=2)
    with dspy.context(lm=lm(num_retries=2)):
        result = await dspy.Predict("question -> answer").acall(question="What is 2 + 2?")
    assert result.answer == "4" and count[0] == 3


def test_callbacks_run_around_every_call() -> None:
    seen: list[str] = []

    class Recorder(BaseCallback):
        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            seen.append("start")

        def on_lm_end(self, call_id: str, outputs: Any, exception: Any = None) -> None:
            seen.append("end" if exception is None else "error")

    model = lm(callbacks=[Recorder()])
    assert ask(model) == "4" and ask(model, "And 3 + 1?") == "4"
    assert seen == ["start", "end", "start", "end"]


def test_cache_is_dspys_response_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    count = submissions(monkeypatch)
    cached = lm(cache=True)
    assert ask(cached) == ask(cached) == "4"
    assert count[0] == 1  # the second answer came from DSPy's cache
    uncached = lm(cache=False)
    assert ask(uncached) == ask(uncached) == "4"
    assert count[0] == 3
