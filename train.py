"""Train featvis networks: `python train.py task=classifier [overrides]` (Hydra)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from featvis.cli import exit_on_bad_command_line, report_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_errors
def main(cfg: DictConfig) -> float | None:
    from featvis.run import train  # torch and Lightning load after the command line is checked

    result = train(cfg)
    # Returned for Hydra sweepers that optimize a metric.
    return result["metrics"].get(cfg.task.monitor)


if __name__ == "__main__":
    exit_on_bad_command_line(Path(__file__).parent / "conf", "config")  # Hydra's own errors as one line, before any output
    main()
