"""Where requests run: one scheduler per loaded model, the loaded-model registry, model loading.

- :mod:`.scheduler`: queued requests of every entry point batched onto their model's backend.
- :mod:`.registry`: one backend per model, device and dtype in a process (:func:`load_shared`).
- :mod:`.models`: names to backends: the embedded default model, local folders, hub ids.
- :mod:`.random_models`: randomly initialised models from configs in code (``random:NAME``).
"""
