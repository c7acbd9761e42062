"""LangChain: :class:`ChatPowerSampling` (a chat model) and :class:`PowerSamplingLLM` (an LLM)."""

from .chat_model import ChatPowerSampling, PowerSamplingLLM

__all__ = ["ChatPowerSampling", "PowerSamplingLLM"]
