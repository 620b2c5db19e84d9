"""Synthesize preferred images: `python visualize.py method=dgn_am target.ckpt=T generator.ckpt=G ...`."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from featvis.cli import exit_on_bad_command_line, report_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="visualize")
@report_errors
def main(cfg: DictConfig) -> float | None:
    from featvis.visualize import visualize  # torch loads after the command line is checked

    summary = visualize(cfg)
    # Returned for Hydra sweepers that optimize a figure (hparams_search=...): see `sweep.objective`.
    return summary.get("sweep", {}).get("objective")


if __name__ == "__main__":
    exit_on_bad_command_line(Path(__file__).parent / "conf", "visualize")  # Hydra's own errors as one line, before any output
    main()
