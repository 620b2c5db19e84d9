"""The shared ending of every benchmark: a table of figures with their targets."""


def print_figures(figures: dict, targets: dict[str, str]) -> None:
    width = max(len(name) for name in figures) + 2
    print(f"\n{'figure':<{width}}{'value':>12}  target")
    for name, value in figures.items():
        print(f"{name:<{width}}{value:>12}  {targets.get(name, '')}")
