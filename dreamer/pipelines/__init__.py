"""The pipelines `python -m dreamer.train` and `python -m dreamer.write` run, one module each, each one function
from its typed config to metrics: `dream` (the default), `opsd_self_context`, `opsd_veteran` and `write`.
`run(cfg, run_dir)` runs the one `cfg.pipeline` names (`dreamer.pipelines.runner`); `compose_config` gives the
config a command line would (for notebooks). The libraries (`rl`, `opsd`, `sandbox`, `sim`, `writers`, `traces`)
import no pipeline."""

from dreamer.pipelines.config import compose_config
from dreamer.pipelines.runner import PIPELINES, run

__all__ = ["PIPELINES", "compose_config", "run"]
