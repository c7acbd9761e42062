"""Two real servers (scripted models) under the same load: every request counted, each
server's throughput set against the reference's."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import scripted, serving

from power_sampling.measure.servers import compare, main, markdown, wait_until_up


def test_two_servers_get_the_same_workload_in_turns(tmp_path) -> None:
    with (
        serving(scripted(), model="a") as (first, _, sampler_a),
        serving(scripted(), model="b") as (second, _, sampler_b),
    ):
        servers = {"a": first.url, "b": second.url}
        assert wait_until_up(first.url) == "a"
        extra = {"power_sampling": {"method": "standard"}}
        points = compare(
            servers,
            model={"a": "a", "b": "b"},
            prompt="Q",
            max_tokens=4,
            levels=(1, 3),
            rounds=2,
            extra=extra,
            warmup=False,
        )
        assert [(p.server, p.concurrency, p.requests) for p in points] == [
            ("a", 1, 2),
            ("b", 1, 2),
            ("a", 3, 6),
            ("b", 3, 6),
        ]
        assert all(p.completion_tokens > 0 and p.tokens_per_second > 0 for p in points)
        assert len(sampler_a.runs) == len(sampler_b.runs) == 8
        assert {config.method for _, config in sampler_a.runs} == {"standard"}
        seeds = sorted(config.seed for _, config in sampler_a.runs)
        assert seeds == sorted([1000, 1001] + [1000 + i for i in range(6)])
        table = markdown(points, "a")
        assert "| a | 1 | 2 |" in table and "| 1.00 |" in table
        stem = tmp_path / "out"
        main(
            [
                "--server",
                f"a={first.url}",
                "--concurrency",
                "1",
                "--rounds",
                "1",
                "--max-tokens",
                "2",
                "--out",
                str(stem),
            ]
        )
        assert json.loads(stem.with_suffix(".json").read_text())[0]["server"] == "a"
