"""Config validation: every invalid value names the field, the value and the fix."""

from __future__ import annotations

import pytest

from power_sampling import PRESETS, PowerSamplingConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "beam"),
        ("alpha", 0),
        ("alpha", -1.0),
        ("alpha", float("nan")),
        ("alpha", float("inf")),
        ("top_k", 0),
        ("num_rollouts", 0),
        ("rollout_length", -1),
        ("block_size", 0),
        ("num_candidates", 0),
        ("mcmc_steps", -1),
        ("best_of", 0),
        ("max_new_tokens", 0),
        ("seed", -3),
    ],
)
def test_invalid_values_name_field_value_and_fix(field: str, value: object) -> None:
    with pytest.raises(ValueError) as error:
        PowerSamplingConfig(**{field: value})
    message = str(error.value)
    assert f"{field}=" in message
    assert "use" in message


def test_block_mode_needs_at_least_top_k_candidates() -> None:
    with pytest.raises(ValueError, match=r"num_candidates=4 is invalid.*top_k=8"):
        PowerSamplingConfig(block_size=16, top_k=8, num_candidates=4)
    # Token level ignores num_candidates, so the same numbers are fine there.
    PowerSamplingConfig(block_size=1, top_k=8, num_candidates=4)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_rollout"):
        PowerSamplingConfig(num_rollout=8)


def test_defaults_are_the_papers_settings() -> None:
    config = PowerSamplingConfig()
    assert (config.method, config.alpha, config.top_k, config.num_rollouts) == ("power", 4.0, 8, 8)
    assert (config.block_size, config.rollout_length, config.num_candidates) == (192, 192, 32)
    assert config.jackknife and config.max_new_tokens == 3072


def test_frozen_and_replace_validates() -> None:
    config = PowerSamplingConfig()
    with pytest.raises(ValueError):
        config.alpha = 2.0  # type: ignore[misc]
    assert config.replace(alpha=2.0).alpha == 2.0
    with pytest.raises(ValueError, match="alpha"):
        config.replace(alpha=0)


def test_presets_apply_and_overrides_win() -> None:
    cpu = PowerSamplingConfig.preset("cpu", alpha=5.0)
    assert cpu.alpha == 5.0
    assert cpu.block_size == PRESETS["cpu"]["block_size"]
    assert PowerSamplingConfig.preset("paper").seed == 0
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        PowerSamplingConfig.preset("fast")


def test_every_field_is_documented() -> None:
    for name, field in PowerSamplingConfig.model_fields.items():
        assert field.description and len(field.description) > 30, name
