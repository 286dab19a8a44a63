"""A sim's weights file: the tensors a learned sim reads as `WEIGHTS`, as safetensors beside its source.

`env/<name>.py` has its weights, if any, in `env/<name>.safetensors`. Safetensors holds raw tensors and a JSON
header, nothing executable, so loading one is safe whoever wrote it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from dreamer.artifacts import atomic_path

SUFFIX = ".safetensors"


class WeightsError(ValueError):
    """A weights file that is not safetensors, or holds more than the caller allows."""


def weights_path(source_path: str | os.PathLike) -> Path:
    """Where the weights of the sim whose source is `source_path` lie (whether or not it has any)."""
    return Path(source_path).with_suffix(SUFFIX)


def save_weights(path: str | os.PathLike, weights: Mapping[str, torch.Tensor]) -> Path:
    """Write `weights` (name -> tensor) as safetensors, atomically."""
    with atomic_path(path) as tmp:
        safetensors.torch.save_file({key: tensor.detach().cpu().contiguous() for key, tensor in weights.items()},
                                    str(tmp))
    return Path(path)


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu",
                 max_mb: float | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on `device`; WeightsError naming the file if it is larger than
    `max_mb` or not safetensors."""
    path = Path(path)
    size_mb = path.stat().st_size / 2**20
    if max_mb is not None and size_mb > max_mb:
        raise WeightsError(f"{path}: {size_mb:.1f} MB of weights, more than the {max_mb:g} MB allowed")
    try:
        return safetensors.torch.load_file(str(path), device=str(torch.device(device)))
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError
        raise WeightsError(f"{path}: not a safetensors file ({type(error).__name__}: {error})") from error


def read_weights_beside(source_path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor] | None:
    """The weights beside the sim source at `source_path`, or None when it has none."""
    path = weights_path(source_path)
    return load_weights(path, device) if path.is_file() else None
