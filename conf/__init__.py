"""The Hydra configs as the package `featvis.conf` (pyproject.toml maps it onto this folder),
so that an installed featvis finds them as pkg://featvis.conf."""
