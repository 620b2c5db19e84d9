"""Black-box search: the strategies on toy responses, and dgn_cmaes / dgn_ga on a featvis target."""

import io
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from featvis.blackbox import CMAES, GeneticAlgorithm, NoisyNeuron, RandomSearch
from featvis.errors import ConfigError
from featvis.jobs.visualize import visualize
from tests.conftest import CONF

DIM, RUNS = 64, 3


def sphere_runs(strategy, evaluations=1500, seed=0):
    """(best response per run, the state) of `strategy` maximizing -|x - peak|^2 from x = 0."""
    peak = torch.linspace(-1, 1, DIM).expand(RUNS, DIM)
    respond = lambda x: -(x - peak[:, None]).square().sum(-1)  # noqa: E731
    sample = lambda n, g: torch.randn(n, DIM, generator=g)  # noqa: E731
    generator = torch.Generator().manual_seed(seed)
    state = strategy.init(torch.zeros(RUNS, DIM), torch.ones(DIM), sample, generator)
    best, spent = torch.full((RUNS,), -torch.inf), 0
    while spent < evaluations:
        x = strategy.ask(state, generator, sample)
        values = respond(x)
        strategy.tell(state, x, values, generator)
        best, spent = torch.maximum(best, values.max(1).values), spent + x.shape[1]
    return best, state, float(respond(torch.zeros(RUNS, 1, DIM)).mean())


def test_cmaes_beats_the_genetic_algorithm_and_random_search_on_a_smooth_response():
    start = sphere_runs(CMAES())[2]
    cmaes, ga, rand = (sphere_runs(s)[0] for s in (CMAES(), GeneticAlgorithm(), RandomSearch()))
    # every run of each: CMA-ES closes most of the gap to the peak, both others stay far behind it
    assert (cmaes > 0.1 * start).all(), (cmaes, start)
    assert (cmaes > ga).all() and (cmaes > rand).all()
    assert (ga >= start).all() and (ga > start).any()  # the GA keeps its elites: never below its start


def test_a_strategy_state_saved_between_generations_resumes_as_if_uninterrupted():
    def run(stop_at=None):
        strategy, generator = CMAES(population=8), torch.Generator().manual_seed(3)
        sample = lambda n, g: torch.randn(n, DIM, generator=g)  # noqa: E731
        state = strategy.init(torch.zeros(RUNS, DIM), torch.ones(DIM), sample, generator)
        for generation in range(6):
            if generation == stop_at:  # to disk and back, as a closed-loop session resumes
                buffer = io.BytesIO()
                torch.save({"state": state, "rng": generator.get_state()}, buffer)
                buffer.seek(0)
                saved = torch.load(buffer, weights_only=True)
                state, generator = saved["state"], torch.Generator()
                generator.set_state(saved["rng"])
            x = strategy.ask(state, generator, sample)
            strategy.tell(state, x, -x.square().sum(-1), generator)
        return state["mean"]

    assert torch.equal(run(), run(stop_at=3))


@pytest.mark.parametrize("strategy, message", [
    (lambda: CMAES(sigma=0), "method.search.sigma=0"),
    (lambda: CMAES(evaluations=0), "method.search.evaluations=0"),
    (lambda: GeneticAlgorithm(elites=30), "method.search.elites=30"),
    (lambda: GeneticAlgorithm(parental_skew=0.2), "method.search.parental_skew=0.2"),
    (lambda: RandomSearch(population=0), "method.search.population=0"),
])
def test_bad_search_settings_name_the_value(strategy, message):
    with pytest.raises(ConfigError, match=message):
        strategy()


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("visualize", overrides=list(overrides))


def _base(small_classifier, small_priors, tmp_path):
    return [f"output_dir={tmp_path}", f"target.ckpt={small_classifier[1]['best_checkpoint']}",
            f"generator.ckpt={small_priors['generator'][1]['last_checkpoint']}", "device=cpu",
            "units=[0,'blue star']", "seeds=2", "evaluation.real_images=64", "record_every=4"]


@pytest.mark.parametrize("method", ["dgn_cmaes", "dgn_ga"])
def test_a_search_method_writes_what_a_gradient_method_writes(method, small_classifier, small_priors, tmp_path):
    cfg = _compose(f"method={method}", *_base(small_classifier, small_priors, tmp_path), "method.search.evaluations=240")
    summary = visualize(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary)) and metrics["method"] == method
    assert len(metrics["results"]) == 4 and (tmp_path / "grid.png").is_file()
    assert len(list((tmp_path / "gifs").glob("*.gif"))) == 2
    assert metrics["evaluation"]["beats_real_top1"] is not None
    search = metrics["search"]
    assert search["evaluations"] <= 240 and search["evaluations"] == search["generations"] * search["population"]
    curves = torch.tensor(search["best_so_far"])  # (runs, generations)
    assert curves.shape == (4, search["generations"]) and (curves.diff(dim=1) >= 0).all()
    assert (curves[:, -1] > curves[:, 0]).float().mean() >= 0.75  # the search climbed from its first generation
    for row, curve in zip(metrics["results"], curves):
        assert all((tmp_path / f).is_file() for f in row["files"].values())
        assert row["best"]["objective"] == pytest.approx(float(curve[-1]), abs=1e-4)  # the best image is the best seen


def test_the_search_never_asks_the_target_for_a_gradient(small_classifier, small_priors):
    import featvis
    from featvis.checkpoints import load_classifier

    target, _ = load_classifier(small_classifier[1]["best_checkpoint"])

    def no_backward(*_):
        raise AssertionError("the black-box search differentiated the target")

    hooks = [m.register_full_backward_hook(no_backward) for m in target.modules() if not list(m.children())]
    seen = []

    def neuron(images, units):  # a scorer that records what it was given
        seen.append((images.requires_grad, torch.is_grad_enabled(), units.clone()))
        return featvis.blackbox.TargetScorer(target, found_units)(images, units)

    from featvis.synthesis.methods import units_of
    found_units, _ = units_of(target, [3, 5], "fc8", [], "center")
    method = featvis.method_config("dgn_cmaes", "search.evaluations=120")
    found = featvis.synthesize(target, found_units, method, seeds=2, scorer=neuron,
                               generator=small_priors["generator"][1]["last_checkpoint"], evaluation=False)
    for hook in hooks:
        hook.remove()
    assert found.images.shape[0] == 4 and seen
    assert not any(grad or enabled for grad, enabled, _ in seen)
    # images of a generation arrive unit-major: unit 0's two runs, then unit 1's
    assert seen[0][2].tolist() == sorted(seen[0][2].tolist())


def test_a_noisy_neuron_counts_spikes_around_its_rate():
    rate = torch.tensor([0.0, 2.0, 50.0])
    neuron = NoisyNeuron(lambda images, units: rate[units], gain=1.0, seed=0)
    counts = torch.stack([neuron(torch.zeros(3, 3, 8, 8), torch.arange(3)) for _ in range(400)])
    assert (counts[:, 0] == 0).all() and (counts == counts.round()).all()
    assert abs(float(counts[:, 2].mean()) - 50) < 2 and float(counts[:, 1].std()) > 1


def test_steps_is_refused_for_a_search_method(small_classifier, small_priors, tmp_path):
    cfg = _compose("method=dgn_cmaes", *_base(small_classifier, small_priors, tmp_path / "out"), "steps=20")
    with pytest.raises(ConfigError, match="expected method.search.evaluations"):
        visualize(cfg)
    assert not (tmp_path / "out").exists()
