"""Synthesize preferred images: `python visualize.py method=dgn_am target.ckpt=T generator.ckpt=G ...`."""

import hydra
from omegaconf import DictConfig

from featvis.cli import report_errors, run


@hydra.main(version_base="1.3", config_path="conf", config_name="visualize")
@report_errors
def main(cfg: DictConfig) -> float | None:
    from featvis.visualize import visualize  # torch loads once Hydra has composed the config

    summary = visualize(cfg)
    # Returned for Hydra sweepers that optimize a figure (hparams_search=...): see `sweep.objective`.
    return summary.get("sweep", {}).get("objective")


if __name__ == "__main__":
    run(main)  # featvis's errors and Hydra's own as one line, exit 2
