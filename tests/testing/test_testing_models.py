"""The in-process test models: tokenizer round trips, chat template, deterministic weights."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from power_sampling.testing import (  # noqa: E402
    TABLE_EOS_ID,
    TINY_VOCAB_SIZE,
    tiny_chat_model,
    tiny_table_model,
    tiny_tokenizer,
)

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def render(messages: list[dict], **kwargs: object) -> str:
    text = tiny_tokenizer().apply_chat_template(messages, tokenize=False, **kwargs)
    assert isinstance(text, str)
    return text


def tool_calls_in(text: str) -> list[dict]:
    return [json.loads(body) for body in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text)]


# --- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_basics() -> None:
    tok = tiny_tokenizer()
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert len(tok) == TINY_VOCAB_SIZE
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id == 0
    assert tok.encode("") == []  # no BOS or EOS added
    assert tok.encode("<|im_start|>user<|im_end|>")[0] == 1
    assert tok.decode(tok.encode("<|im_end|> hi"), skip_special_tokens=True) == " hi"


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading and trailing spaces  ",
        "tabs\tnew\nlines\r\n\n\nand  runs   of spaces",
        "héllo wörld, ça va? Größe, naïve, Ελληνικά, русский, עברית, العربية",
        "日本語のテキスト, 中文文本, 한국어 텍스트",
        "emoji 🤖🎉👩‍👩‍👧 and flags 🇫🇷, combining e\u0301, zero-width \u200b, nbsp\u00a0!",
        "math: ∀x ∈ ℝ, √x² = |x|; $\\frac{1}{2}$ \\boxed{42}",
        'code: def f(x):\n    return {"a": [1, 2.5, None]}\n',
        "control \x00\x01\x7f and literal tokens <|im_start|> <|im_end|> <|endoftext|>",
    ],
)
def test_tokenizer_round_trips(text: str) -> None:
    tok = tiny_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_round_trips_random_unicode() -> None:
    tok = tiny_tokenizer()
    rng = random.Random(0)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x4FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F)]
    for _ in range(50):
        chars = []
        for _ in range(rng.randint(0, 40)):
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)))
        text = "".join(chars)
        assert tok.decode(tok.encode(text)) == text


def test_tokenizer_is_deterministic_and_calls_are_independent() -> None:
    first, second = tiny_tokenizer(), tiny_tokenizer()
    assert first is not second
    assert first.get_vocab() == second.get_vocab()
    first.padding_side = "left"
    first.add_tokens(["<extra>"])
    fresh = tiny_tokenizer()
    assert fresh.padding_side == "right"
    assert len(fresh) == TINY_VOCAB_SIZE


def test_tokenizer_compresses_chat_text() -> None:
    tok = tiny_tokenizer()
    text = "<|im_start|>user\nWhat is the weather in Paris today?<|im_end|>\n"
    assert len(tok.encode(text)) < len(text.encode()) / 2


# --- chat template -----------------------------------------------------------------------------


def test_chat_template_plain_conversation() -> None:
    text = render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
        ]
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
    )


def test_chat_template_generation_prompt() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    assert render(messages) == "<|im_start|>user\nHi<|im_end|>\n"
    assert render(messages, add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_template_renders_tools_in_system_block() -> None:
    text = render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}],
        tools=[ADD_TOOL],
        add_generation_prompt=True,
    )
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    tools_block = re.search(r"<tools>\n(.*)\n</tools>", system, re.S)
    assert tools_block is not None
    assert json.loads(tools_block.group(1)) == ADD_TOOL
    assert '<tool_call>\n{"name": <function-name>, "arguments": ' in system
    assert rest == "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert text.count("<|im_start|>system") == 1


def test_chat_template_tools_without_system_message_and_python_functions() -> None:
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: first factor
            b: second factor
        """
        return a * b

    text = render([{"role": "user", "content": "2*3?"}], tools=[multiply])
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert '"name": "multiply"' in text
    assert '"description": "first factor"' in text


def test_chat_template_renders_tool_calls_and_tool_messages() -> None:
    text = render(
        [
            {"role": "user", "content": "What are 2+3 and 1+1?"},
            {
                "role": "assistant",
                "content": "Let me add.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "add", "arguments": {"a": 2, "b": 3}},
                    },
                    # arguments as a JSON string (OpenAI wire format) and a flat entry
                    {"type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}},
                    {"name": "add", "arguments": {"a": 1, "b": 1}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "5"},
            {"role": "tool", "content": {"result": 2}},
            {"role": "assistant", "content": "5 and 2."},
        ],
        tools=[ADD_TOOL],
        add_generation_prompt=False,
    )
    assistant_turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert assistant_turn.startswith("Let me add.\n<tool_call>\n")
    assert tool_calls_in(assistant_turn) == [
        {"name": "add", "arguments": {"a": 2, "b": 3}},
        {"name": "add", "arguments": {"a": 1}},
        {"name": "add", "arguments": {"a": 1, "b": 1}},
    ]
    assert (
        "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n"
        '<tool_response>\n{"result": 2}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n5 and 2.<|im_end|>\n"
    ) in text


def test_chat_template_tool_call_without_text_matches_generation_prompt() -> None:
    """What the model would generate after the prompt equals how the call is rendered later."""
    prompt = render([{"role": "user", "content": "2+3?"}], add_generation_prompt=True)
    call = {"role": "assistant", "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}
    full = render([{"role": "user", "content": "2+3?"}, call])
    assert full.startswith(prompt)
    assert full[len(prompt) :] == (
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>\n'
    )


def test_chat_template_special_tokens_encode_as_single_ids() -> None:
    tok = tiny_tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    if not isinstance(ids, list):  # BatchEncoding
        ids = ids["input_ids"]
    assert ids[0] == 1
    assert ids.count(1) == 2 and ids.count(2) == 1


# --- tiny chat model ---------------------------------------------------------------------------


def test_tiny_chat_model_shape_and_config() -> None:
    model, tok = tiny_chat_model()
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == [2, 0]
    assert model.generation_config.eos_token_id == [2, 0]
    assert model.generation_config.pad_token_id == 0
    assert sum(p.numel() for p in model.parameters()) < 100_000
    text = render([{"role": "user", "content": "Hi"}], tools=[ADD_TOOL], add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text)])
    assert ids.shape[1] < model.config.max_position_embeddings
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()
    # far from uniform, so sampling tests can tell distributions apart
    top = logits.softmax(-1).max(-1).values
    assert top.mean() > 5 / len(tok)


def test_tiny_chat_model_weights_depend_only_on_seed() -> None:
    first, _ = tiny_chat_model(seed=0)
    torch.manual_seed(1234)  # the global RNG must not matter
    second, _ = tiny_chat_model(seed=0)
    other, _ = tiny_chat_model(seed=1)
    for (name, a), b, c in zip(
        first.named_parameters(), second.parameters(), other.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        if a.ndim > 1:
            assert not torch.equal(a, c), name


def test_builders_leave_global_rng_untouched() -> None:
    torch.manual_seed(7)
    expected = torch.rand(5)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    tiny_chat_model(seed=3)
    tiny_table_model(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_tiny_chat_model_generates_until_eos_or_limit() -> None:
    model, tok = tiny_chat_model()
    ids = torch.tensor([tok.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")])
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 8
    assert torch.equal(out[0, : ids.shape[1]], ids[0])


# --- tiny table model --------------------------------------------------------------------------


def next_token_probs(model: object, context: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([context])).logits[0, -1].softmax(-1)  # type: ignore[operator]


def test_tiny_table_model_config() -> None:
    model = tiny_table_model(vocab_size=4)
    assert model.config.vocab_size == 4
    assert model.config.max_position_embeddings == 16
    assert model.config.eos_token_id == TABLE_EOS_ID == 0
    assert model.generation_config.eos_token_id == 0
    assert not model.training
    assert next_token_probs(model, [1, 2, 3]).shape == (4,)


def test_tiny_table_model_is_peaked_and_context_dependent() -> None:
    model = tiny_table_model()
    vocab = model.config.vocab_size
    contexts = [[a, b] for a in range(1, vocab) for b in range(1, vocab)]
    probs = torch.stack([next_token_probs(model, c) for c in contexts])
    entropy = -(probs * probs.log()).sum(-1)
    assert entropy.mean() < 0.7 * math.log(vocab)
    assert probs.max(-1).values.mean() > 0.5
    # the distribution depends on more than the last token
    assert (probs[0] - probs[vocab - 1]).abs().max() > 0.05  # [1, 1] vs [2, 1]
    # and the argmax varies across contexts
    assert len(set(probs.argmax(-1).tolist())) > 1


def test_tiny_table_model_sharpness() -> None:
    context = [1, 2, 3]
    flat = next_token_probs(tiny_table_model(sharpness=0.0), context)
    assert torch.allclose(flat, torch.full_like(flat, 1 / len(flat)))
    soft = next_token_probs(tiny_table_model(sharpness=1.0), context).max()
    sharp = next_token_probs(tiny_table_model(sharpness=6.0), context).max()
    assert sharp > soft


def test_tiny_table_model_deterministic() -> None:
    a, b, c = tiny_table_model(seed=5), tiny_table_model(seed=5), tiny_table_model(seed=6)
    assert torch.equal(next_token_probs(a, [1, 3]), next_token_probs(b, [1, 3]))
    assert not torch.equal(next_token_probs(a, [1, 3]), next_token_probs(c, [1, 3]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"vocab_size": 7}, "vocab_size"),
        ({"sharpness": -1.0}, "sharpness"),
    ],
)
def test_tiny_table_model_validates(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_table_model(**kwargs)
