"""Before a CPU run the workflow says how long the training would take here, and names the CPU presets."""

from metacollapse.estimate import QUIET_BELOW_STEPS, estimate

TRAIN = {"n_way": 5, "n_support": 2, "n_query": 2, "steps_per_epoch": 100, "epochs": 100}


def plan(*epochs):
    runs = [
        {"name": f"r{i}", "backbone": {"arch": "conv4", "width": 8}, "train": {**TRAIN, "epochs": e}}
        for i, e in enumerate(epochs)
    ]
    return {"runs": runs, "device": "cpu", "precision": "fp32"}


def test_a_long_cpu_plan_is_timed_here_and_the_presets_are_named():
    warning = estimate(plan(100, 100))
    assert warning.startswith("This workflow will train 2 run(s) on the CPU (fp32): 20000 steps, about ")
    assert "steps/s x 20000 steps" in warning  # both runs share one backbone and episode shape
    assert "config/quick.yaml" in warning and "config/studies/" in warning


def test_a_small_plan_or_nothing_to_train_says_nothing():
    assert estimate(plan(1)) is None and TRAIN["steps_per_epoch"] < QUIET_BELOW_STEPS
    assert estimate(plan()) is None
