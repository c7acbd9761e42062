"""Tiny transformers models built in-process, for tests.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in a few milliseconds on
a small built-in corpus, and the models are randomly initialised from a fixed seed without touching
the global torch RNG. Use them wherever a real ``transformers`` model and tokenizer are needed but
the output quality does not matter (backend plumbing, chat templates, tool calling, KV cache vs
full recompute, exact-enumeration checks of the sampler).

- :func:`tiny_tokenizer` -- a ``PreTrainedTokenizerFast`` (~384 tokens) that round-trips any text
  and carries a ChatML chat template with tool support in the style of Qwen2.5.
- :func:`tiny_chat_model` -- a 2-layer Llama (~40k parameters) paired with that tokenizer.
- :func:`tiny_table_model` -- a Llama with a vocabulary of a handful of tokens and peaked,
  context-dependent next-token distributions, small enough to enumerate every sequence.

``torch`` and ``transformers`` are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "END_OF_TEXT",
    "END_OF_TURN",
    "START_OF_TURN",
    "TABLE_EOS_ID",
    "TINY_VOCAB_SIZE",
    "tiny_chat_model",
    "tiny_table_model",
    "tiny_tokenizer",
]

END_OF_TEXT = "<|endoftext|>"
"""End-of-text token: the tiny tokenizer's ``eos_token`` and ``pad_token`` (id 0)."""
START_OF_TURN = "<|im_start|>"
"""ChatML start-of-turn token (id 1)."""
END_OF_TURN = "<|im_end|>"
"""ChatML end-of-turn token (id 2); generation stops on it as well as on ``END_OF_TEXT``."""
TINY_VOCAB_SIZE = 384
"""Vocabulary size of :func:`tiny_tokenizer`: 256 byte tokens, 3 special tokens, 125 merges."""
TABLE_EOS_ID = 0
"""Token id that :func:`tiny_table_model` declares as its end-of-sequence token."""

CHAT_TEMPLATE = (
    # Message content: a string, a list of {"type": "text", "text": ...} parts, or JSON data.
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content is mapping -%}{{- content | tojson -}}"
    "{%- elif content is iterable -%}"
    "{%- for part in content -%}"
    "{%- if part is string -%}{{- part -}}"
    "{%- elif part is mapping and part.get('type', 'text') == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- elif content is not none -%}{{- content | tojson -}}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    # A leading system message is merged with the tool instructions into one system turn.
    "{%- set ns = namespace(start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.start = 1 -%}{%- endif -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if ns.start == 1 -%}{{- render_content(messages[0]['content']) + '\\n\\n' -}}{%- endif -%}"
    "{{- '# Tools\\n\\nYou may call the functions described by the JSON schemas inside "
    "<tools></tools>:\\n<tools>\\n' -}}"
    "{%- for tool in tools -%}{{- tool | tojson -}}{{- '\\n' -}}{%- endfor -%}"
    "{{- '</tools>\\n\\nTo call a function, reply with one JSON object per call inside "
    "<tool_call></tool_call> tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <arguments-json-object>}'
    "\\n</tool_call><|im_end|>\\n' -}}"
    "{%- elif ns.start == 1 -%}"
    "{{- '<|im_start|>system\\n' + render_content(messages[0]['content']) + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    # Consecutive tool results share one user turn, each wrapped in <tool_response> tags.
    "{%- if message['role'] == 'tool' -%}"
    "{%- if loop.previtem is not defined or loop.previtem['role'] != 'tool' -%}"
    "{{- '<|im_start|>user' -}}"
    "{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + render_content(message['content']) + '\\n</tool_response>' -}}"
    "{%- if loop.nextitem is not defined or loop.nextitem['role'] != 'tool' -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    # Assistant tool calls: optional text, then one <tool_call> block per call.
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- set text = render_content(message.get('content')) -%}"
    "{%- if text -%}{{- text + '\\n' -}}{%- endif -%}"
    "{%- for tool_call in message['tool_calls'] -%}"
    "{%- set call = tool_call['function'] if tool_call.get('function') else tool_call -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": ' + (call['name'] | tojson) + ', \"arguments\": ' -}}"
    "{%- if call.get('arguments') is string -%}{{- call['arguments'] -}}"
    "{%- else -%}{{- (call.get('arguments') or {}) | tojson -}}"
    "{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + render_content(message.get('content'))"
    " + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""ChatML chat template of :func:`tiny_tokenizer`, with tools in the style of Qwen2.5.

- ``tools`` given: a system turn (the caller's system message first, if any) lists each tool as one
  JSON line inside ``<tools></tools>`` and asks for calls as
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.
- Assistant messages with ``tool_calls`` (OpenAI ``{"function": {...}}`` or flat ``{"name",
  "arguments"}`` entries, arguments as a dict or a JSON string) render one ``<tool_call>`` block
  each, after the message text if there is any.
- ``tool`` messages render as ``<tool_response>`` blocks; consecutive ones share one user turn.
- ``add_generation_prompt`` appends ``<|im_start|>assistant\\n``.
"""

# Text the BPE merges are learned from: chat boilerplate, JSON, arithmetic, code and prose, so the
# chat template and typical test prompts encode into reasonably few tokens.
_CORPUS = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\nWhat is the weather in Paris today?<|im_end|>\n",
    "<|im_start|>assistant\nIt is sunny and warm in Paris today.<|im_end|>\n",
    "# Tools\n\nYou may call the functions described by the JSON schemas inside <tools></tools>:\n",
    "To call a function, reply with one JSON object per call inside <tool_call></tool_call> tags:",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
    "</tool_call>",
    '<tool_response>\n{"temperature": 21, "condition": "sunny"}\n</tool_response>',
    '{"type": "function", "function": {"name": "add", "description": "Add two numbers.", '
    '"parameters": {"type": "object", "properties": {"a": {"type": "integer"}, '
    '"b": {"type": "integer"}}, "required": ["a", "b"]}}}',
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "Answer: In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips.\n#### 72",
    "Let's think step by step. 12 + 30 = 42, 7 * 6 = 42, 100 - 58 = 42. The answer is 42.",
    "The final answer is $\\boxed{42}$.",
    "def add(a: int, b: int) -> int:\n    return a + b\n\n\nprint(add(2, 3))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
    "single step. To be, or not to be, that is the question.",
    "Power sampling draws text from the sharpened distribution p(x)^alpha without training.",
)


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the byte-level BPE once per process and return it serialised (immutable, shareable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=[END_OF_TEXT, START_OF_TURN, END_OF_TURN],
        # Every byte is in the vocabulary, so any text round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with a ChatML chat template that supports tools.

    The vocabulary has :data:`TINY_VOCAB_SIZE` tokens: ``<|endoftext|>`` (id 0, the ``eos_token``
    and ``pad_token``), ``<|im_start|>`` (id 1), ``<|im_end|>`` (id 2, end of turn), the 256 byte
    tokens and merges learned from a small built-in corpus. Any text round-trips:
    ``tok.decode(tok.encode(text)) == text``. No BOS token is added. The chat template is
    :data:`CHAT_TEMPLATE`.

    Training happens once per process (a few milliseconds) and is cached; each call returns a new
    tokenizer object, so a caller may change it (padding side, added tokens) without affecting
    others.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        extra_special_tokens=[START_OF_TURN, END_OF_TURN],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def _init_weights(model: object, seed: int, logit_scale: float) -> None:
    """Overwrite every parameter deterministically from ``seed`` with a local generator.

    Embeddings ~ N(0, 1); linear weights ~ N(0, 1/fan_in), so each layer keeps its input's scale
    and the prediction depends on the whole context, not just the last token; norm weights = 1.
    The output layer is N(0, logit_scale^2/hidden): after the final RMSNorm the logits have a
    standard deviation of about ``logit_scale``, which sets how peaked the distributions are.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    named = dict(model.named_parameters())  # type: ignore[attr-defined]
    with torch.no_grad():
        for name in sorted(named):
            param = named[name]
            if param.ndim == 1:
                param.fill_(1.0 if "norm" in name else 0.0)
                continue
            if "embed_tokens" in name:
                std = 1.0
            elif name.startswith("lm_head"):
                std = logit_scale / math.sqrt(param.shape[1])
            else:
                std = 1.0 / math.sqrt(param.shape[1])
            values = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(values * std)


def _build_llama(
    seed: int, logit_scale: float, **config_kwargs: Any
) -> tuple[LlamaForCausalLM, object]:
    """Build a float32 Llama in eval mode without changing the global torch RNG."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(tie_word_embeddings=False, dtype="float32", **config_kwargs)
    # Construction runs transformers' own initialisation, which draws from the global RNG.
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    torch.nn.Module.to(model, torch.float32)
    _init_weights(model, seed, logit_scale)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
    )
    model.eval()
    return model, config


def tiny_chat_model(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised 2-layer Llama and :func:`tiny_tokenizer`, for backend tests.

    Hidden size 32, 4 attention heads (2 key/value heads), float32, eval mode; a forward pass on a
    short input takes about a millisecond on a CPU. ``config.eos_token_id`` and
    ``generation_config.eos_token_id`` are ``[2, 0]`` (``<|im_end|>``, ``<|endoftext|>``) and the
    pad id is 0. Weights depend only on ``seed``; the global torch RNG is left unchanged. Its text
    is gibberish: use it for plumbing, not quality.
    """
    tokenizer = tiny_tokenizer()
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model, _ = _build_llama(
        seed,
        logit_scale=2.0,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=[end_of_turn, tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, tokenizer


def tiny_table_model(
    vocab_size: int = 5, seed: int = 0, sharpness: float = 3.0, head_dim: int | None = None
) -> LlamaForCausalLM:
    """A Llama over a handful of token ids with peaked, context-dependent next-token distributions.

    Small enough to enumerate every sequence (``vocab_size ** length`` of them), so tests can
    compare the sampler run through the transformers backend with the exact power distribution.
    Token id :data:`TABLE_EOS_ID` (0) is the end-of-sequence token (``config.eos_token_id``,
    ``generation_config.eos_token_id`` and the pad id); ids ``1 .. vocab_size - 1`` are ordinary
    tokens. There is no tokenizer: feed token ids directly. Positions go up to 16.

    Args:
        vocab_size: number of token ids, 2 to 6 (default 5).
        seed: weights depend only on this; the global torch RNG is left unchanged.
        sharpness: standard deviation of the logits (default 3.0, so the most likely token usually
            has probability 0.5-0.95); larger is more peaked, 0 is uniform.
        head_dim: size of each attention head (default 8, the hidden size over the 2 heads);
            vLLM's CPU attention needs 32 or more. Other values give other weights.

    Raises:
        ValueError: ``vocab_size`` outside 2..6 or negative ``sharpness``.
    """
    if not 2 <= vocab_size <= 6:
        raise ValueError(
            f"vocab_size must be between 2 and 6 so every sequence can be enumerated, "
            f"got {vocab_size}; use tiny_chat_model() for a larger vocabulary."
        )
    if sharpness < 0:
        raise ValueError(f"sharpness must be >= 0, got {sharpness}; use e.g. 3.0.")
    model, _ = _build_llama(
        seed,
        logit_scale=sharpness,
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
        bos_token_id=None,
        eos_token_id=TABLE_EOS_ID,
        pad_token_id=TABLE_EOS_ID,
        **({"head_dim": head_dim} if head_dim is not None else {}),
    )
    return model
