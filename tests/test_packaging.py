"""The wheel ships what the checkout has, and an installed wheel finds its configs on its own.

An editable install sees the whole checkout; a wheel only what pyproject.toml lists. A wheel once
shipped without conf/ and `featvis.method_config` failed everywhere outside the source tree.
"""

import configparser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import CONF, ROOT

# Left out of the copy the wheel is built from: git's, the venv, and run outputs.
NOT_COPIED = {".git", ".venv", "build", "dist", "outputs", "multirun", "wandb", "lightning_logs", ".pytest_cache"}


def _copy_checkout(dest: Path) -> Path:
    """The working tree without its venv and outputs: building there leaves no build/ here."""

    def ignore(directory, names):
        top = Path(directory) == ROOT
        return [n for n in names if (top and n in NOT_COPIED) or n == "__pycache__"
                or n.endswith((".egg-info", ".ckpt"))]

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _setuptools_builds_offline() -> bool:
    """The venv's setuptools meets pyproject.toml's build requirement (setuptools>=68)."""
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 68
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tree = _copy_checkout(tmp_path_factory.mktemp("build") / "featvis")
    dist = tmp_path_factory.mktemp("dist")
    offline = ["--no-build-isolation", "--no-index"] if _setuptools_builds_offline() else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, "-w", str(dist),
                           str(tree)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = dist.glob("featvis-*.whl")
    return built


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_the_wheel_ships_every_config_of_conf(wheel):
    shipped = {n.removeprefix("featvis/conf/") for n in _names(wheel)
               if n.startswith("featvis/conf/") and n.endswith(".yaml")}
    assert {"config.yaml", "visualize.yaml", "method/dgn_am.yaml", "hydra/launcher/slurm.yaml"} <= shipped
    # every config of the checkout, so that a new one that pyproject.toml leaves out fails here
    assert shipped == {p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")}
    assert "featvis/conf/__init__.py" in _names(wheel)


def test_the_wheel_ships_every_module(wheel):
    """pyproject.toml lists the packages (featvis.conf is mapped from conf/): none may be missing."""
    src = ROOT / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "featvis").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - _names(wheel) == set()


def test_the_wheel_declares_the_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(z.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"featvis-train": "featvis.jobs.cli:train_main",
                                               "featvis-visualize": "featvis.jobs.cli:visualize_main"}


def test_the_installed_wheel_finds_its_configs_outside_the_checkout(wheel, tmp_path):
    """The wheel alone in a fresh venv (dependencies borrowed from this one through a .pth, whose
    own .pth files, the editable finder among them, are not processed), used from elsewhere."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "test_venv_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    code = ("import featvis, featvis.configs as c; print(featvis.__file__); print(c.CONFIG_DIR); "
            "print(featvis.method_config('pixel_fft', 'step.steps=3')['step']['steps'])")
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([str(python), "-I", "-c", code], cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, config_dir, steps = proc.stdout.split()
    for where in (module, config_dir):
        assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where
    assert steps == "3"


def test_the_configs_are_found_through_the_package():
    """Under the editable install (the tests'), featvis.conf is the top-level conf/ itself."""
    import featvis.conf
    from featvis.configs import CONFIG_DIR, CONFIG_PATH

    assert CONFIG_PATH == "pkg://featvis.conf"
    assert CONFIG_DIR == Path(featvis.conf.__file__).parent == CONF


def _entry(tmp_path, *cmd_and_args):
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(list(cmd_and_args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


SCRIPTS = Path(sys.executable).parent
ENTRY_POINTS = {
    "python -m featvis.visualize": [sys.executable, "-m", "featvis.visualize"],
    "python -m featvis.train": [sys.executable, "-m", "featvis.train"],
    "featvis-visualize": [str(SCRIPTS / "featvis-visualize")],
    "featvis-train": [str(SCRIPTS / "featvis-train")],
    "visualize.py": [sys.executable, str(ROOT / "visualize.py")],
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_bad_override_is_one_line_and_exit_2_through_every_entry_point(tmp_path, entry):
    proc = _entry(tmp_path, *ENTRY_POINTS[entry], "method=nosuch", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featvis: error: method=nosuch is not a config option"), \
        proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("entry, title", [("python -m featvis.visualize", "visualize"), ("featvis-train", "train")])
def test_the_entry_points_print_hydras_help(tmp_path, entry, title):
    proc = _entry(tmp_path, *ENTRY_POINTS[entry], "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the job keeps the name of its script (hydra.job.name): the help's title, <name>.log
    assert proc.stdout.startswith(f"{title} is powered by Hydra.")
    assert "== Configuration groups ==" in proc.stdout and "method: _base, dgn_am" in proc.stdout
    assert not list(tmp_path.iterdir())
