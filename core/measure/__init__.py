"""Research tools: the cost bench, peak memory, the fidelity study and candidate-selection rules.

- :mod:`.bench`: every method side by side on one model and prompt set, and the ratios;
  :mod:`.workload` (its prompts), :mod:`.recording` (its calls recorded and replayed through
  ``generate``), :mod:`.critical_path` (the sequential steps expected), :mod:`.hardware`.
- :mod:`.constraint_cost`: a constraint's cost per token; :mod:`.memory`: peak memory against
  prompt length; :mod:`.concurrency`: throughput and latency under concurrent load;
  :mod:`.servers`: OpenAI-compatible servers side by side under the same load.
- :mod:`.fidelity` and :mod:`.selection_rules`: the study against the exact power distribution,
  on the table models and with the estimator of :mod:`.tables`; :mod:`.frontier` (with
  :mod:`.frontier_report` and :mod:`.frontier_plot`): every method's TV against its cost.

Nothing in the library imports this package; the ``bench`` command and the studies do.
"""
