"""Train featvis networks: `python train.py task=classifier [overrides]` (Hydra).

The same app as `featvis-train` and `python -m featvis.train`: featvis.jobs.cli.train_app.
"""

from featvis.jobs.cli import train_main

if __name__ == "__main__":
    train_main()  # featvis's errors and Hydra's own as one line, exit 2
