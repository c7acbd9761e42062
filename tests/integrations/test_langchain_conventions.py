"""The LangChain adapter behaves as users of ChatOllama and the hosted chat models expect:
unknown-setting errors name only our settings."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("transformers")

from power_sampling.integrations.langchain import ChatPowerSampling, PowerSamplingLLM

# -- unknown settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ChatPowerSampling, PowerSamplingLLM])
def test_unknown_setting_lists_our_settings_once_closest_first(cls: type) -> None:
    with pytest.raises(ValueError, match="unknown setting") as info:
        cls(num_rolouts=4)
    listed = re.search(r"valid settings are ([\w, ]+)", str(info.value)).group(1).split(", ")
    assert listed[0] == "num_rollouts" and "did you mean 'num_rollouts'" in str(info.value)
    assert len(listed) == len(set(listed))
    for internal in ("rate_limiter", "callbacks", "cache", "verbose", "tags", "metadata"):
        assert internal not in listed
    assert {"alpha", "model", "device", "preset", "max_tokens"} <= set(listed)
