"""The seam between the runner (`dreamer.pipelines.runner`) and each pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from omegaconf import DictConfig
from rich.console import RenderableType

from dreamer.loggers import Logger
from dreamer.resume import Stages

C = TypeVar("C")


@dataclass(frozen=True)
class Run:
    """What a pipeline runs with."""

    dir: Path            # the run dir: every artifact of the run goes here
    logger: Logger
    device: torch.device
    stages: Stages       # the named stages finished so far (a rerun into an unfinished run dir resumes)


class Stopped(Exception):
    """The pipeline stopped for a reason in the data, not a fault: the command exits with this message."""


@dataclass(frozen=True)
class Pipeline(Generic[C]):
    """`configure` builds and checks every section the pipeline reads (bad values fail before the run dir is
    touched); `run` does the work and returns the metrics and the summary printed at the end."""

    configure: Callable[[DictConfig], C]
    run: Callable[[C, Run], tuple[dict[str, Any], RenderableType]]
