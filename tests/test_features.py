"""A feature dump embeds exactly the probe images with their labels and roles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metacollapse.checkpoints import CheckpointError, load_learner
from metacollapse.data import load_split
from metacollapse.device import setup
from metacollapse.evaluation import evaluate
from metacollapse.features import QUERY, SUPPORT, features_stage
from metacollapse.probes import load_probes, make_probes
from metacollapse.training import train

PROBES = {
    "train_episodes": {"kind": "episodic", "split": "train", "n_way": 6, "n_support": 2, "n_query": 3, "episodes": 4},
    "test_classes": {"kind": "classes", "split": "test", "classes": 7, "n_support": 5},
}
SPEC = {
    "name": "small",
    "learner": {"name": "protonet"},
    "backbone": {"arch": "conv4", "width": 16},
    "seed": 0,
    "train": {
        "split": "train",
        "n_way": 5,
        "n_support": 2,
        "n_query": 2,
        "steps_per_epoch": 5,
        "epochs": 2,
        "lr": 1e-3,
        "lr_decay_every": 1,
        "lr_decay_gamma": 0.5,
    },
    "val": {"split": "val", "n_way": 5, "n_support": 2, "n_query": 2, "episodes": 2, "seed": 1},
}


@pytest.fixture
def trained(synthetic_data, tmp_path):
    train(SPEC, synthetic_data, tmp_path / "run", setup("cpu", "fp32"))
    return tmp_path / "run" / "checkpoints"


def dump(synthetic_data, trained, tmp_path, probes=PROBES, epochs=(2,), spec=SPEC, precision="fp32", **options):
    make_probes(probes, 5, synthetic_data, tmp_path / "probes.npz")
    outs = [tmp_path / f"epoch_{e:03d}.npz" for e in epochs]
    checkpoints = [trained / f"epoch_{e:03d}.pt" for e in epochs]
    probes_path = tmp_path / "probes.npz"
    features_stage(spec, checkpoints, probes_path, synthetic_data, outs, setup("cpu", precision), **options)
    return [dict(np.load(out)) for out in outs]


def test_dump_holds_every_probe_image_with_labels_roles_and_episodes(synthetic_data, trained, tmp_path):
    (dump0, dump2) = dump(synthetic_data, trained, tmp_path, epochs=(0, 2))
    assert int(dump0["epoch"]) == 0 and not np.array_equal(dump0["features"], dump2["features"])
    names = list(dump2["probe_names"])
    assert sorted(names) == ["test_classes", "train_episodes"]
    assert dict(zip(names, dump2["probe_kinds"], strict=True)) == {
        "train_episodes": "episodic",
        "test_classes": "classes",
    }
    # the authors' batch-norm modes: training episodes with batch statistics, everything else with running ones
    assert dict(zip(names, dump2["probe_bn_modes"], strict=True)) == {"train_episodes": "train", "test_classes": "eval"}
    meta = json.loads(str(dump2["meta"]))
    assert int(dump2["epoch"]) == 2 and meta == {
        "run": "small",
        "learner": "protonet",
        "backbone": "conv4",
        "width": 16,
        "seed": 0,
    }
    episodic = dump2["probe"] == names.index("train_episodes")
    classes = dump2["probe"] == names.index("test_classes")
    assert episodic.sum() == 4 * 6 * 5 and classes.sum() == 7 * 20
    assert dump2["features"].shape == (4 * 6 * 5 + 7 * 20, 16) and dump2["features"].dtype == np.float32
    first = episodic & (dump2["episode"] == 0)  # per episode: 6 classes, each with 2 support and 3 query images
    assert len(set(dump2["labels"][first])) == 6
    assert (dump2["role"][first] == SUPPORT).sum() == 12 and (dump2["role"][first] == QUERY).sum() == 18
    assert (dump2["role"][classes] == SUPPORT).sum() == 7 * 5  # a class probe's first n_support images

    learner, _ = load_learner(trained / "epoch_002.pt", SPEC)
    learner.eval()
    test_split, _ = load_split(synthetic_data, "test")
    _, indices = load_probes(tmp_path / "probes.npz")
    rows = indices["test_classes"].classes[0].numpy()
    with torch.no_grad():  # eval-mode features equal a direct forward pass of the checkpoint's model
        direct = learner.backbone(torch.from_numpy(test_split[rows].reshape(-1, 1, 28, 28)).float()).numpy()
    np.testing.assert_allclose(dump2["features"][classes], direct, rtol=1e-5, atol=1e-6)

    # train-mode episodes: each episode is one batch normalised by its own statistics
    _, episodes = load_probes(tmp_path / "probes.npz")
    train_split = torch.from_numpy(load_split(synthetic_data, "train")[0])
    first_episode = train_split[episodes["train_episodes"].classes[0][:, None], episodes["train_episodes"].images[0]]
    learner.train()
    with torch.no_grad():
        batch = learner.backbone(first_episode.reshape(-1, 1, 28, 28).float()).numpy()
    np.testing.assert_allclose(dump2["features"][first], batch, rtol=1e-5, atol=1e-6)


def test_a_train_mode_probe_leaves_the_next_probe_its_running_statistics(synthetic_data, trained, tmp_path):
    alone = dump(synthetic_data, trained, tmp_path / "a", probes={"test_classes": PROBES["test_classes"]})[0]
    after = dump(synthetic_data, trained, tmp_path / "b")[0]
    names = list(after["probe_names"])
    np.testing.assert_array_equal(alone["features"], after["features"][after["probe"] == names.index("test_classes")])


def test_a_checkpoint_of_another_run_is_refused_by_the_feature_stage(synthetic_data, trained, tmp_path):
    other = {**SPEC, "name": "other", "backbone": {"arch": "conv4", "width": 32}}
    with pytest.raises(CheckpointError, match="backbone.width: expected 32, found 16"):
        dump(synthetic_data, trained, tmp_path, spec=other)
    assert not list(tmp_path.glob("epoch_*.npz"))


def test_fewshot_evaluation_is_deterministic_and_well_above_chance(synthetic_data, trained):
    learner, _ = load_learner(trained / "epoch_002.pt", SPEC)
    split = torch.from_numpy(load_split(synthetic_data, "test")[0])
    params = {
        "settings": [{"n_way": 5, "n_shot": 1}, {"n_way": 5, "n_shot": 5}],
        "n_query": 5,
        "episodes": 20,
        "seed": 3,
    }
    a, b = evaluate(learner, split, params, SPEC, "test"), evaluate(learner, split, params, SPEC, "test")
    assert a.equals(b) and (a["run"] == "small").all()
    assert (a["accuracy"] > 0.35).all()  # chance is 0.2 after 10 training episodes of a width-16 Conv-4
    assert a["accuracy"].iloc[1] > a["accuracy"].iloc[0]  # 5 shots beat 1
    assert (a["ci95"] >= 0).all() and (a["ci95"] < 0.5).all()


def test_layer_dumps_add_each_blocks_averaged_output_and_leave_the_features_unchanged(
    synthetic_data, trained, tmp_path
):
    plain = dump(synthetic_data, trained, tmp_path / "plain")[0]
    layered = dump(synthetic_data, trained, tmp_path / "all", layers="all")[0]
    assert "layer_names" not in plain and not any(key.startswith("features@") for key in plain)
    names = ["block1", "block2", "block3", "block4"]
    assert list(layered["layer_names"]) == names
    assert {key for key in layered if key.startswith("features@")} == {f"features@{name}" for name in names}
    np.testing.assert_array_equal(layered["features"], plain["features"])
    n = len(plain["features"])
    for name in names:
        assert layered[f"features@{name}"].shape == (n, 16) and layered[f"features@{name}"].dtype == np.float32
    np.testing.assert_array_equal(layered["features@block4"], layered["features"])  # a 1x1 map is its own mean

    learner, _ = load_learner(trained / "epoch_002.pt", SPEC)
    learner.eval()
    _, indices = load_probes(tmp_path / "all" / "probes.npz")
    rows = indices["test_classes"].classes[0].numpy()
    images = torch.from_numpy(load_split(synthetic_data, "test")[0][rows].reshape(-1, 1, 28, 28)).float()
    with torch.no_grad():
        direct = learner.backbone[:2](images).mean(dim=(2, 3)).numpy()  # block2's 7x7 maps, averaged
    classes = layered["probe"] == list(layered["probe_names"]).index("test_classes")
    np.testing.assert_allclose(layered["features@block2"][classes], direct, rtol=1e-5, atol=1e-6)


def test_listed_layers_are_dumped_in_depth_order_and_embedding_is_always_the_features(
    synthetic_data, trained, tmp_path
):
    (out,) = dump(synthetic_data, trained, tmp_path, layers=["block3", "embedding", "block1"])
    assert list(out["layer_names"]) == ["block1", "block3"] and "features@embedding" not in out


def test_an_unknown_layer_is_one_error_naming_the_backbones_layers(synthetic_data, trained, tmp_path):
    with pytest.raises(ValueError) as error:
        dump(synthetic_data, trained, tmp_path, layers=["layer4"])
    assert str(error.value) == (
        "unknown layers ['layer4'] for backbone 'conv4'; "
        "allowed: ['block1', 'block2', 'block3', 'block4', 'embedding'] or 'all'"
    )
    assert not list(tmp_path.glob("epoch_*.npz"))


def test_dumps_are_fp32_whatever_the_run_precision_and_bf16_ones_differ_only_by_rounding(
    synthetic_data, trained, tmp_path
):
    fp32 = dump(synthetic_data, trained, tmp_path / "fp32", layers="all")[0]
    default = dump(synthetic_data, trained, tmp_path / "default", precision="bf16", layers="all")[0]
    bf16 = dump(synthetic_data, trained, tmp_path / "bf16", precision="bf16", layers="all", feature_precision="train")[
        0
    ]
    for key in ("features", "features@block1", "features@block3"):
        np.testing.assert_array_equal(default[key], fp32[key])
        assert not np.array_equal(bf16[key], fp32[key])
        scale = np.abs(fp32[key]).max()
        # bf16 keeps 8 significant bits (relative rounding 2^-9 per operation), a few percent after four blocks
        np.testing.assert_allclose(bf16[key], fp32[key], rtol=0, atol=0.05 * scale)
    with pytest.raises(ValueError, match="feature_precision must be one of \\('fp32', 'train'\\), got 'bf16'"):
        dump(synthetic_data, trained, tmp_path / "bad", feature_precision="bf16")


def test_a_relationnet_dump_holds_its_backbone_embedding_and_no_head(synthetic_data, tmp_path):
    spec = {**SPEC, "name": "relation", "learner": {"name": "relationnet"}, "train": {**SPEC["train"], "epochs": 1}}
    train(spec, synthetic_data, tmp_path / "run", setup("cpu", "fp32"))
    (out,) = dump(synthetic_data, tmp_path / "run" / "checkpoints", tmp_path, epochs=(1,), spec=spec, layers="all")
    assert out["features"].shape == (4 * 6 * 5 + 7 * 20, 16) and list(out["layer_names"])[-1] == "block4"
    assert not any(key.startswith("classifier") for key in out)
    assert json.loads(str(out["meta"]))["learner"] == "relationnet"
