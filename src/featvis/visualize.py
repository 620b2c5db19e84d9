"""`python -m featvis.visualize method=... [overrides]`: the visualize app (featvis.jobs.cli.visualize_app)."""

if __name__ == "__main__":
    from featvis.jobs.cli import visualize_main

    visualize_main()
