"""`python -m featvis.train task=classifier [overrides]`: the training app (featvis.jobs.cli.train_app)."""

if __name__ == "__main__":
    from featvis.jobs.cli import train_main

    train_main()
