"""Check a run dir: every output under its final name must read back whole.

    python -m featvis.tools.integrity <run dir> [<run dir> ...]

Images (PNG, GIF: every frame), JSON, HTML/SVG and checkpoints are opened the way
their readers open them; a truncated or garbled one is reported.  Temporary files
of a killed writer (`.name.partial<pid>.ext`) are listed apart: they never pass
for outputs, and the next run in the same dir removes them.  Exit status 1 when
anything is wrong.  wandb's own folder and logs are not featvis outputs and are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageSequence

from featvis.io import read_checkpoint

SKIPPED_FOLDERS = {"wandb", ".hydra", "lightning_logs"}


def _image(path: Path) -> None:
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            frame.load()


def _json(path: Path) -> None:
    json.loads(path.read_text())


def _markup(path: Path) -> None:
    text = path.read_text()
    closing = "</html>" if path.suffix == ".html" else "</svg>"
    if closing not in text[-200:]:
        raise ValueError(f"does not end with {closing}")


def _checkpoint(path: Path) -> None:
    read_checkpoint(path)


READERS = {".png": _image, ".gif": _image, ".jpg": _image, ".jpeg": _image, ".json": _json,
           ".html": _markup, ".svg": _markup, ".ckpt": _checkpoint}


def is_partial(path: Path) -> bool:
    return path.name.startswith(".") and ".partial" in path.name


def scan(root: str | Path) -> dict[str, list[str]]:
    """{"checked": [...], "broken": ["path: why", ...], "partial": [...]} of the outputs under `root`."""
    report: dict[str, list[str]] = {"checked": [], "broken": [], "partial": []}
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or SKIPPED_FOLDERS & set(path.relative_to(root).parts[:-1]):
            continue
        if is_partial(path):
            report["partial"].append(str(path))
            continue
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            continue
        try:
            reader(path)
        except Exception as err:  # noqa: BLE001 - whatever stops a reader (PIL raises IndexError too)
            report["broken"].append(f"{path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        else:
            report["checked"].append(str(path))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featvis.tools.integrity", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    bad = 0
    for root in args.run_dirs:
        if not root.is_dir():
            print(f"featvis: error: {root} is not a folder; expected a run dir", file=sys.stderr)
            return 2
        report = scan(root)
        for line in report["broken"]:
            print(f"broken: {line}")
        for line in report["partial"]:
            print(f"temporary (a killed writer's; removed by the next run): {line}")
        print(f"{root}: {len(report['checked'])} outputs read back whole, {len(report['broken'])} broken, "
              f"{len(report['partial'])} temporary")
        bad += len(report["broken"]) + len(report["partial"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
