"""A full disk (ENOSPC) while an output is written: one line naming the file and the space it needs,
exit 2, nothing torn; once space is freed the same command (ckpt_path=last for training) completes.

The writers are made to hit a full disk halfway through a file, as write() does (an OSError that
names no file); the end-to-end trial fills a real tmpfs under a training run (tests/full_disk.py).
"""

import errno
import io
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import featvis.io
from featvis.errors import DiskFullError, readable_size
from featvis.evolution.report import step_name
from featvis.io import read_checkpoint
from featvis.jobs import cli
from featvis.jobs.storage import AtomicCheckpointIO
from featvis.jobs.visualize import visualize
from featvis.tools.integrity import scan
from tests.faults import VISUALIZE
from tests.full_disk import enospc_trials, print_table, tmpfs_refused

from .conftest import CONF

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class HalfThenFull(io.RawIOBase):
    """A file that takes half of what is written, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        raise OSError(FULL.errno, FULL.strerror)

    def close(self):
        self.f.close()
        super().close()


def disk_full_at(monkeypatch, final_name: str, skip: int = 0) -> list[str]:
    """featvis.io's writes of a file called `final_name` hit a full disk, after the first `skip` of them."""
    real_open, seen = open, []

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        found = re.fullmatch(r"\.(.+)\.partial\d+.*", Path(file).name)
        if "w" in mode and found and re.fullmatch(final_name, found.group(1)):
            seen.append(str(file))
            if len(seen) > skip:
                return HalfThenFull(f)
        return f

    monkeypatch.setattr(featvis.io, "open", fake_open, raising=False)
    return seen


def assert_named_and_nothing_torn(err: DiskFullError, path: Path, root: Path) -> None:
    assert err.path == path and err.needed > 0
    assert f"writing {path} ({readable_size(err.needed)};" in str(err), str(err)
    assert f"expected at least {readable_size(err.needed)} free" in str(err), str(err)
    report = scan(root)
    assert report["broken"] == [] and report["partial"] == [], report


def test_checkpoint_on_a_full_disk_keeps_the_last_good_one(tmp_path, monkeypatch):
    path, plugin = tmp_path / "checkpoints" / "last.ckpt", AtomicCheckpointIO()
    plugin.save_checkpoint({"global_step": 4, "state_dict": {"w": torch.ones(64)}}, path)
    disk_full_at(monkeypatch, r"last\.ckpt")
    with pytest.raises(DiskFullError) as caught:
        plugin.save_checkpoint({"global_step": 8, "state_dict": {"w": torch.zeros(64)}}, path)
    assert_named_and_nothing_torn(caught.value, path, tmp_path)
    assert read_checkpoint(path)["global_step"] == 4  # the one to resume from, whole


def test_a_killed_checkpoint_writer_leaves_no_file_taken_for_last(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".last.ckpt.partial999.ckpt"  # what a SIGKILL in mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    assert not re.match(r"^last(-(\d+))?", Path(stale).stem)  # ModelCheckpoint's pattern for ckpt_path=last
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, folder / "epoch000-step000001.ckpt")
    assert not stale.exists()  # swept at the first save into the folder


def _visualize_cfg(inputs, out, *overrides):
    values = {k: v.format(**inputs) for k, v in VISUALIZE.items()}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("visualize", overrides=[*(f"{k}={v}" for k, v in values.items()), f"output_dir={out}",
                                               *overrides])


def _evolution_cfg(inputs, tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(inputs["classifier"], folder / "classifier.ckpt")
    return _visualize_cfg(inputs, tmp_path / "out", "mode=evolution", f"target.ckpt_dir={folder}", "units=[fc8:0]")


# writer, the file's name (a regex), how many of its writes succeed first, and where it is
WRITERS = [("grid", r"grid\.png", 0, "grid.png"), ("metrics.json", r"metrics\.json", 0, "metrics.json"),
           ("frame", r".*_seed0\.png", 0, "evolution/frames/{step}/fc8-0_red_circle_seed0.png"),
           ("evolution.json", r"evolution\.json", 1, "evolution/evolution.json")]


@pytest.mark.parametrize("writer, name, skip, where", WRITERS, ids=[w[0] for w in WRITERS])
def test_full_disk_names_the_output_and_leaves_nothing_torn(writer, name, skip, where, fault_inputs, tmp_path,
                                                            monkeypatch):
    evolution = writer in ("frame", "evolution.json")  # written by the recorder FeatureEvolution drives
    cfg = _evolution_cfg(fault_inputs, tmp_path) if evolution else _visualize_cfg(fault_inputs, tmp_path / "out")
    seen = disk_full_at(monkeypatch, name, skip)
    with pytest.raises(DiskFullError) as caught:
        visualize(cfg)
    out = tmp_path / "out"
    where = where.format(step=step_name(read_checkpoint(fault_inputs["classifier"])["global_step"]))
    assert len(seen) == skip + 1, seen
    assert_named_and_nothing_torn(caught.value, out / where, out)
    if skip:  # the earlier, whole evolution.json is still there
        assert (out / where).is_file()
    if writer == "metrics.json":  # written last: a dir without it is known incomplete
        assert not (out / "metrics.json").exists() and (out / "grid.png").is_file()


def test_the_cli_tells_a_full_disk_in_one_line_with_what_to_run_next(fault_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_job_started", False)  # report_errors sets it: Hydra's own errors are told apart
    cfg = _visualize_cfg(fault_inputs, tmp_path / "out")
    disk_full_at(monkeypatch, r"grid\.png")
    with pytest.raises(SystemExit) as caught:
        cli.report_errors(visualize, "visualize")(cfg)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("featvis:")]  # the rest: progress bars
    assert len(lines) == 1 and "Traceback" not in err, err
    grid = tmp_path / "out" / "grid.png"
    assert lines[0].startswith(f"featvis: error: no space left on device writing {grid} ("), lines
    assert lines[0].endswith("free on its filesystem, then run the same command again"), lines


def test_a_full_disk_another_library_hits_is_one_line_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_job_started", False)
    cfg = OmegaConf.create({"output_dir": str(tmp_path), "task": {"name": "classifier"}, "ckpt_path": None})

    def job(cfg):  # a logger writing its own file: the OSError names no file
        raise RuntimeError("logger failed") from OSError(FULL.errno, FULL.strerror)

    with pytest.raises(SystemExit) as caught:
        cli.report_errors(job, "train")(cfg)
    assert caught.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"featvis: error: no space left on device writing an output of {tmp_path}; expected more free "
                    f"space on the filesystem of {tmp_path}, then the same command with ckpt_path=last resumes")


def test_a_log_file_on_a_full_disk_prints_no_traceback(tmp_path, capsys):
    class FailingStream(io.StringIO):
        code = errno.ENOSPC

        def write(self, text):
            raise OSError(self.code, os.strerror(self.code))

    handler = logging.FileHandler(tmp_path / "job.log", delay=True)
    handler.stream = FailingStream()
    logger = logging.getLogger()
    logger.addHandler(handler)
    try:
        cli.quiet_full_disk_logs()
        logger.warning("a line the full disk cannot take")
        assert capsys.readouterr().err == ""
        handler.stream.code = errno.EIO  # any other failure of the handler is still reported
        logger.warning("a line the disk fails to take")
        assert "Logging error" in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_hydra_run_dir_on_a_full_disk_is_one_line(monkeypatch):
    monkeypatch.setattr(cli, "_job_started", False)
    line = cli.hydra_error(OSError(FULL.errno, FULL.strerror, "/full/run/.hydra/config.yaml"))
    assert line.startswith("no space left on device writing /full/run/.hydra/config.yaml; expected free space")


def test_disk_fills_mid_training_then_the_rerun_resumes_with_no_frame_lost_or_repeated(fault_inputs, tmp_path):
    refused = tmpfs_refused(tmp_path)
    if refused:
        pytest.skip(f"needs a tmpfs to fill: {refused}")
    rows = enospc_trials(fault_inputs, tmp_path, trials=1, seed=0, quick=True, kinds=("checkpoint",))
    print_table(rows)
    (row,) = rows
    assert row["clean_error"] and row["failed_writer"] == "checkpoint", row
    assert row["recovered"], row
    assert (row["frames_lost"], row["frames_duplicated"], row["truncated"]) == (0, 0, 0), row
