"""`python -m dreamer.write trace.path=FILE [writer=llm ...]`: a recorded session to a validated sim, no training
(`dreamer.pipelines.write`). Exits with status 1 when the sandbox rejected every candidate (the report says why).
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dreamer.pipelines.runner import check_overrides
from dreamer.pipelines.runner import main as run_pipeline


@hydra.main(config_path="../conf", config_name="write", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_pipeline(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    check_overrides("write", sys.argv[1:])
    main()
