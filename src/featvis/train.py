"""`python -m featvis.train task=classifier [overrides]`: the training app (featvis.cli.train_app)."""

if __name__ == "__main__":
    from featvis.cli import train_main

    train_main()
