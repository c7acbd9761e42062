"""Tiny models and fakes for tests: this project's own and those of downstream users."""

from .models import (
    CHAT_TEMPLATE,
    END_OF_TEXT,
    END_OF_TURN,
    START_OF_TURN,
    TABLE_EOS_ID,
    TINY_VOCAB_SIZE,
    tiny_chat_model,
    tiny_table_model,
    tiny_tokenizer,
)

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
