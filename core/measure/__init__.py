"""Research tools: the cost bench, peak memory, the fidelity study and candidate-selection rules.

Nothing in the library imports this package; the ``bench`` command and the studies do.
"""
