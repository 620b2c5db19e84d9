"""Train featvis networks: `python train.py task=classifier [overrides]` (Hydra)."""

import hydra
from omegaconf import DictConfig

from featvis.cli import report_errors, run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_errors
def main(cfg: DictConfig) -> float | None:
    from featvis.run import train  # torch and Lightning load once Hydra has composed the config

    result = train(cfg)
    # Returned for Hydra sweepers that optimize a metric.
    return result["metrics"].get(cfg.task.monitor)


if __name__ == "__main__":
    run(main)  # featvis's errors and Hydra's own as one line, exit 2
