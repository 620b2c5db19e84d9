"""The closed loop: ask/tell sessions that survive a kill, and visualize.py mode=closed_loop."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from featvis.blackbox import NoisyNeuron, Session, TargetScorer
from featvis.checkpoints import load_classifier
from featvis.errors import ConfigError
from featvis.io import read_checkpoint, save_text
from featvis.jobs.visualize import visualize
from featvis.synthesis.methods import units_of
from tests.conftest import CONF, ROOT

SMALL = ["search.population=6"]  # six images a run and generation keep the test short

EXPERIMENT = """
import os, signal, sys
import torch
from featvis.blackbox import NoisyNeuron, Session, TargetScorer
from featvis.checkpoints import load_classifier
from featvis.synthesis.methods import units_of

def experiment(folder, generator, target_ckpt, generations, kill_after_ask=None):
    target, _ = load_classifier(target_ckpt)
    unit, _ = units_of(target, [3], "fc8", [], "center")
    scorer = TargetScorer(target, unit)
    session = Session(generator=generator, method="dgn_cmaes", units=["fc8 3"], seeds=2, output_dir=folder,
                      overrides=["search.population=6"])
    while session.generation < generations:
        images = session.ask()
        if session.generation == kill_after_ask:
            os.kill(os.getpid(), signal.SIGKILL)  # between ask and tell
        neuron = NoisyNeuron(scorer, gain=5.0, seed=session.generation)  # the same spikes on a rerun
        session.tell(neuron(images, torch.zeros(len(images), dtype=torch.long)))
    return session

if __name__ == "__main__":
    experiment(*sys.argv[1:4], int(sys.argv[4]), int(sys.argv[5]))
"""


@pytest.fixture
def checkpoints(small_classifier, small_priors):
    return small_priors["generator"][1]["last_checkpoint"], small_classifier[1]["best_checkpoint"]


def _experiment_module(tmp_path):
    path = tmp_path / "experiment.py"
    path.write_text(EXPERIMENT)
    namespace = {}
    exec(compile(EXPERIMENT, str(path), "exec"), namespace)  # noqa: S102 - the test's own script
    return path, namespace["experiment"]


def test_a_session_killed_between_ask_and_tell_resumes_with_nothing_lost_or_repeated(checkpoints, tmp_path):
    generator, target = checkpoints
    script, experiment = _experiment_module(tmp_path)
    whole = experiment(tmp_path / "whole", generator, target, 4)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), generator, target, "4", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed = Session(generator=generator, method="dgn_cmaes", units=["fc8 3"], seeds=2,
                     output_dir=tmp_path / "killed", overrides=SMALL)
    assert killed.generation == 2 and killed.pending is not None  # asked, never told
    on_disk = sorted((tmp_path / "killed" / "generations" / "0002").glob("*.png"))
    assert len(on_disk) == 12 and not (tmp_path / "killed" / "generations" / "0003").exists()
    resumed = experiment(tmp_path / "killed", generator, target, 4)  # asks generation 2 again, then goes on

    a, b = read_checkpoint(tmp_path / "whole" / "session.pt"), read_checkpoint(tmp_path / "killed" / "session.pt")
    assert a["generation"] == b["generation"] == 4 and a["history"] == b["history"]
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert torch.equal(whole.best(), resumed.best())
    for generation in range(4):  # each generation's responses written once, the same in both
        assert ((tmp_path / "whole" / "generations" / f"{generation:04d}" / "responses.csv").read_text()
                == (tmp_path / "killed" / "generations" / f"{generation:04d}" / "responses.csv").read_text())


def test_tell_refuses_a_wrong_count_and_non_numbers_and_changes_nothing(checkpoints, tmp_path):
    generator, _ = checkpoints
    session = Session(generator=generator, units=["a", "b"], seeds=1, output_dir=tmp_path, overrides=SMALL)
    with pytest.raises(ConfigError, match="tell\\(\\) before ask\\(\\)"):
        session.tell([1.0] * 12)
    images = session.ask()
    assert images.shape[0] == 12 and (tmp_path / "generations" / "0000" / "images.csv").is_file()
    before = (tmp_path / "session.pt").read_bytes()
    with pytest.raises(ConfigError, match="11 responses for generation 0; expected 12"):
        session.tell([1.0] * 11)
    with pytest.raises(ConfigError, match="response 3 of generation 0 is nan"):
        session.tell([1.0, 2.0, 3.0, float("nan")] + [0.0] * 8)
    assert (tmp_path / "session.pt").read_bytes() == before and session.generation == 0
    assert not (tmp_path / "generations" / "0000" / "responses.csv").exists()
    session.tell(torch.arange(12.0))
    assert session.generation == 1 and session.pending is None
    # the best image of each unit's run is the one that drew the highest response
    assert session.best_value.tolist() == [5.0, 11.0]


def test_a_session_refuses_a_folder_of_another_experiment(checkpoints, tmp_path):
    generator, _ = checkpoints
    Session(generator=generator, units=["a"], output_dir=tmp_path, overrides=SMALL)
    with pytest.raises(ConfigError, match="session of other settings"):
        Session(generator=generator, units=["b"], output_dir=tmp_path, overrides=SMALL)
    with pytest.raises(ConfigError, match="expected a search method"):
        Session(generator=generator, method="dgn_am", output_dir=tmp_path / "other")


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("visualize", overrides=list(overrides))


def test_visualize_closed_loop_reads_each_generations_responses_file(checkpoints, tmp_path):
    generator, target_ckpt = checkpoints
    target, _ = load_classifier(target_ckpt)
    folder = tmp_path / "experiment"
    cfg = _compose("mode=closed_loop", f"closed_loop.dir={folder}", "closed_loop.generations=2",
                   f"generator.ckpt={generator}", "units=[neuron]", "seeds=2", "method=dgn_cmaes",
                   "method.search.population=6", f"output_dir={tmp_path / 'run'}")
    first = visualize(cfg)
    names = [line.split(",")[0] for line in (folder / "generations" / "0000" / "images.csv").read_text().splitlines()[1:]]
    assert first["generation"] == 0 and first["pending"] and len(names) == 12
    assert visualize(cfg)["waiting_for"].endswith("0000/responses.csv")  # no responses yet: nothing changes

    responses = folder / "generations" / "0000" / "responses.csv"
    state = (folder / "session.pt").read_bytes()
    for text, message in (("1\n2\n", "holds 2 responses; expected 12"),
                          ("response\n" + "1\n" * 5 + "many\n" + "1\n" * 6, "line 7: 'many' is not a finite number"),
                          ("image,response\n" + "".join(f"x{n},1\n" for n in names), "image 'x0000.png' is not one")):
        responses.write_text(text)
        with pytest.raises(ConfigError, match=message):
            visualize(cfg)
        assert (folder / "session.pt").read_bytes() == state  # a bad file leaves the experiment as it was

    unit, _ = units_of(target, [2], "fc8", [], "center")
    neuron = NoisyNeuron(TargetScorer(target, unit), gain=5.0)
    for generation in range(2):
        folder_g = folder / "generations" / f"{generation:04d}"
        images = torch.stack([pil_to_tensor(Image.open(folder_g / n)).float() / 255 for n in names])
        spikes = neuron(images, torch.zeros(len(images), dtype=torch.long))
        rows = [f"{n},{float(v)}" for n, v in zip(names, spikes)][::-1]  # any order, by name
        save_text("image,response\n" + "\n".join(rows) + "\n", folder_g / "responses.csv")
        summary = visualize(cfg)
    assert summary["generation"] == 2 and not summary["pending"] and "report" in summary
    assert (folder / "best.png").is_file() and (folder / "session.json").is_file()
    assert not (folder / "generations" / "0002").exists()  # two generations asked, as configured
    assert len(summary["best_so_far"]) == 2 and all(len(run) == 2 for run in summary["best_so_far"])


def test_closed_loop_without_a_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="mode=closed_loop needs closed_loop.dir"):
        visualize(_compose("mode=closed_loop", "method=dgn_cmaes", f"output_dir={tmp_path}"))
