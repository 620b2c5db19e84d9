"""Synthesize preferred images: `python visualize.py method=dgn_am target.ckpt=T generator.ckpt=G ...`.

The same app as `featvis-visualize` and `python -m featvis.visualize`: featvis.jobs.cli.visualize_app.
"""

from featvis.jobs.cli import visualize_main

if __name__ == "__main__":
    visualize_main()  # featvis's errors and Hydra's own as one line, exit 2
