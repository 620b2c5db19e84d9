"""An installed wheel works on its own: run with the python of a venv holding the featvis wheel.

    python -I .ci/wheel_check.py [example.py | README.md]

The configs must come from the installed package, not from a checkout: a wheel once shipped
without conf/ and every config lookup failed outside the source tree. Checks, from a fresh
temporary directory: featvis (and its configs) import from the venv, not from this checkout;
method configs compose; the command-line apps print Hydra's help and fail bad overrides in one
line; then `example.py`, if given, runs there as a script (for README.md: the first Python
block of its "Your own model" section, which needs no checkpoint).
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def check_imports_from_the_venv() -> None:
    import featvis
    import featvis.conf
    from featvis.configs import CONFIG_DIR

    prefix = Path(sys.prefix)
    for name, where in [("featvis", featvis.__file__), ("featvis.conf", featvis.conf.__file__),
                        ("CONFIG_DIR", CONFIG_DIR)]:
        assert inside(where, prefix) and not inside(where, CHECKOUT), \
            f"{name} is {where}; expected it in the venv {prefix}, outside the checkout {CHECKOUT}"
    assert (CONFIG_DIR / "method" / "dgn_am.yaml").is_file(), f"no method/dgn_am.yaml in {CONFIG_DIR}"
    # Nothing else could hand out the checkout's sources: no path entry holding a featvis
    # package outside the venv, no editable-install finder.
    stray = [p for p in sys.path if p and not inside(p, prefix) and (Path(p) / "featvis").exists()]
    assert not stray, f"sys.path entries with a featvis package outside the venv: {stray}"
    finders = [f for f in sys.meta_path if "__editable__" in getattr(f, "__module__", "")]
    assert not finders, f"an editable install's finder is active: {finders}"


def check_method_configs() -> None:
    import featvis

    # The files of conf/method/ on the schema method/_base (featvis.synthesis.settings), from the wheel.
    dgn_am = featvis.method_config("dgn_am")
    assert dgn_am["name"] == "dgn_am" and dgn_am["space"]["_target_"].endswith("CodeSpace.from_checkpoint"), dgn_am
    fft = featvis.method_config("pixel_fft", "step.steps=3")
    assert fft["space"]["_target_"].endswith("FourierSpace") and fft["step"]["steps"] == 3, fft
    assert fft["step"]["lr"] == 0.05 and fft["step"]["redirect_relu"] == 16, fft  # its own value, the schema's


def check_commands() -> None:
    scripts = Path(sys.executable).parent
    helps = [[sys.executable, "-m", "featvis.visualize", "--help"],
             [str(scripts / "featvis-visualize"), "--help"],
             [str(scripts / "featvis-train"), "--help"]]
    for cmd in helps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}: {proc.stderr[-2000:]}"
        assert "== Configuration groups ==" in proc.stdout and "method: " in proc.stdout, proc.stdout[:2000]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    for cmd in ([sys.executable, "-m", "featvis.train", "method=nosuch"],
                [str(scripts / "featvis-visualize"), "method=nosuch"]):
        proc = subprocess.run([*cmd, "hydra.run.dir=run"], capture_output=True, text=True, timeout=120, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("featvis: error: method=nosuch"), \
            f"{cmd} exited {proc.returncode}: {proc.stderr[-2000:]}"
        assert not Path("run").exists(), f"{cmd} made its run dir"


def readme_example(readme: Path, folder: Path) -> Path:
    """The first Python block of the README's "Your own model" section, as a script in `folder`."""
    section = readme.read_text().split("## Your own model", 1)[1]
    script = folder / "readme_example.py"
    script.write_text(section.split("```python\n", 1)[1].split("```", 1)[0])
    return script


def main(argv: list[str]) -> None:
    example = Path(argv[1]).resolve() if len(argv) > 1 else None
    with tempfile.TemporaryDirectory(prefix="featvis-wheel-check-") as work:
        os.chdir(work)  # relative paths (Hydra's outputs/, the example's files) land here
        if example is not None and example.suffix == ".md":
            example = readme_example(example, Path(work))
        check_imports_from_the_venv()
        check_method_configs()
        check_commands()
        if example is not None:
            runpy.run_path(str(example), run_name="__main__")
        os.chdir(Path(work).parent)
    print(f"wheel check passed{f' (and {example})' if example else ''}")


if __name__ == "__main__":
    main(sys.argv)
