"""The machine a measurement ran on, and the peak memory it needed."""

from __future__ import annotations

import platform
import resource


def peak_memory_mb() -> float:
    """Peak accelerator memory when on CUDA, else the process's peak resident memory."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hardware() -> str:
    """The device the run used: the CUDA GPU's name, else the CPU and torch's thread count."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (CUDA)"
        threads = torch.get_num_threads()
    except ImportError:
        threads = 0
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {threads} torch threads"
