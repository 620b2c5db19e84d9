"""Synthesize preferred images: `python visualize.py method=dgn_am target.ckpt=T generator.ckpt=G ...`."""

import hydra
from omegaconf import DictConfig

from featvis.run import report_errors
from featvis.visualize import visualize


@hydra.main(version_base="1.3", config_path="conf", config_name="visualize")
@report_errors
def main(cfg: DictConfig) -> None:
    visualize(cfg)


if __name__ == "__main__":
    main()
