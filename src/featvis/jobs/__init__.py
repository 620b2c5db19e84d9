"""The jobs: training and the pipeline with its stage cache, visualize, DDP launching, loggers and
the command-line apps with their one-line errors."""
