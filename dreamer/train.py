"""The entry point: `python -m dreamer.train [+experiment=NAME] [overrides]`.

`pipeline` picks what runs (`dreamer.pipelines`): `dream` (the default: record a session in the real env,
write a sim from it, train PPO in the dream, evaluate in the real env), or the OPSD experiments
`opsd_self_context` and `opsd_veteran`. The run dir is `hydra.run.dir` (default `runs/<date>_<time>`).
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dreamer.pipelines.runner import check_overrides
from dreamer.pipelines.runner import main as run_pipeline


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_pipeline(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    check_overrides("train", sys.argv[1:])
    main()
