"""Train featvis networks: `python train.py task=classifier [overrides]` (Hydra)."""

import hydra
from omegaconf import DictConfig

from featvis.run import report_errors, train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_errors
def main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    # Returned for Hydra sweepers that optimize a metric.
    return result["metrics"].get(cfg.task.monitor)


if __name__ == "__main__":
    main()
