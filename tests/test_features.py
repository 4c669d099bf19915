"""Probe sets are fixed per run; a feature dump embeds exactly the probe images with their labels and roles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metacollapse.data import load_split
from metacollapse.evaluation import evaluate
from metacollapse.features import QUERY, SUPPORT, dump_features, load_probes, make_probes
from metacollapse.nc import epoch_nc_table
from metacollapse.training import TrainParams, load_model, train

PROBES = {
    "train_episodes": {"kind": "episodic", "split": "train", "n_way": 6, "n_support": 2, "n_query": 3, "episodes": 4},
    "test_classes": {"kind": "classes", "split": "test", "classes": 7, "n_support": 5},
}


@pytest.fixture
def trained(synthetic_data, tmp_path):
    params = TrainParams.from_dict(
        {
            "backbone": {"arch": "conv4", "width": 16},
            "seed": 0,
            "train": {
                "split": "train",
                "n_way": 5,
                "n_support": 2,
                "n_query": 2,
                "episodes_per_epoch": 5,
                "epochs": 2,
                "lr": 1e-3,
                "lr_decay_every": 1,
                "lr_decay_gamma": 0.5,
                "bf16": False,
            },
            "val": {"split": "val", "n_way": 5, "n_support": 2, "n_query": 2, "episodes": 2, "seed": 1},
        }
    )
    train(params, synthetic_data, tmp_path / "run", device="cpu")
    return tmp_path / "run" / "checkpoints"


def test_probe_sets_are_drawn_once_from_their_seed(synthetic_data, tmp_path):
    make_probes(PROBES, 5, synthetic_data, tmp_path / "a.npz")
    make_probes(PROBES, 5, synthetic_data, tmp_path / "b.npz")
    make_probes(PROBES, 6, synthetic_data, tmp_path / "c.npz")
    _, a = load_probes(tmp_path / "a.npz")
    _, b = load_probes(tmp_path / "b.npz")
    _, c = load_probes(tmp_path / "c.npz")
    assert torch.equal(a["train_episodes"].images, b["train_episodes"].images)
    assert not torch.equal(a["train_episodes"].classes, c["train_episodes"].classes)
    assert a["test_classes"].classes.shape == (1, 7) and a["test_classes"].images.shape == (1, 7, 20)


def test_a_probe_is_drawn_from_its_name_not_its_position(synthetic_data, tmp_path):
    make_probes(PROBES, 5, synthetic_data, tmp_path / "a.npz")
    extra = {"val_episodes": {**PROBES["train_episodes"], "split": "val"}}
    make_probes({**extra, **dict(reversed(PROBES.items()))}, 5, synthetic_data, tmp_path / "b.npz")
    _, a = load_probes(tmp_path / "a.npz")
    _, b = load_probes(tmp_path / "b.npz")
    for name in PROBES:  # adding or reordering probes leaves the others' images as they were
        assert torch.equal(a[name].classes, b[name].classes) and torch.equal(a[name].images, b[name].images)


def test_a_damaged_probe_file_is_an_error_naming_the_file(synthetic_data, tmp_path):
    probes = tmp_path / "probes.npz"
    make_probes(PROBES, 5, synthetic_data, probes)
    probes.write_bytes(probes.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"probes\.npz: cannot read the probe file"):
        load_probes(probes)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, features=np.zeros(3))
    with pytest.raises(ValueError, match=r"foreign\.npz: not a probe file"):
        load_probes(foreign)


def test_dump_holds_every_probe_image_with_labels_roles_and_episodes(synthetic_data, trained, tmp_path):
    make_probes(PROBES, 5, synthetic_data, tmp_path / "probes.npz")
    out = tmp_path / "epoch_002.npz"
    dump_features(trained / "epoch_002.pt", tmp_path / "probes.npz", synthetic_data, out, "conv4", device="cpu")
    dump = dict(np.load(out))
    names = list(dump["probe_names"])
    assert sorted(names) == ["test_classes", "train_episodes"]
    kinds = dict(zip(names, dump["probe_kinds"], strict=True))
    assert kinds == {"train_episodes": "episodic", "test_classes": "classes"}
    assert int(dump["epoch"]) == 2 and str(dump["backbone"]) == "conv4"
    episodic = dump["probe"] == names.index("train_episodes")
    classes = dump["probe"] == names.index("test_classes")
    assert episodic.sum() == 4 * 6 * 5 and classes.sum() == 7 * 20
    assert dump["features"].shape == (4 * 6 * 5 + 7 * 20, 16) and dump["features"].dtype == np.float32
    # per episode: 6 classes, each with 2 support and 3 query images
    first = episodic & (dump["episode"] == 0)
    assert len(set(dump["labels"][first])) == 6
    assert (dump["role"][first] == SUPPORT).sum() == 12 and (dump["role"][first] == QUERY).sum() == 18
    # class probes: the first n_support images of each class are its support set
    assert (dump["role"][classes] == SUPPORT).sum() == 7 * 5

    # features equal a direct forward pass of the checkpoint's model on the same images (eval mode)
    model, _ = load_model(trained / "epoch_002.pt")
    model.eval()
    test_split, _ = load_split(synthetic_data, "test")
    _, indices = load_probes(tmp_path / "probes.npz")
    rows = indices["test_classes"].classes[0].numpy()
    with torch.no_grad():
        direct = model(torch.from_numpy(test_split[rows].reshape(-1, 1, 28, 28)).float()).numpy()
    np.testing.assert_allclose(dump["features"][classes], direct, rtol=1e-5, atol=1e-6)

    table = epoch_nc_table(dump)
    assert set(table["probe"]) == {"train_episodes", "test_classes"}


def test_batch_norm_train_mode_changes_the_features(synthetic_data, trained, tmp_path):
    make_probes(PROBES, 5, synthetic_data, tmp_path / "probes.npz")
    args = (trained / "epoch_002.pt", tmp_path / "probes.npz", synthetic_data)
    dump_features(*args, tmp_path / "eval.npz", "conv4", device="cpu", bn_mode="eval")
    dump_features(*args, tmp_path / "train.npz", "conv4", device="cpu", bn_mode="train")
    assert not np.allclose(np.load(tmp_path / "eval.npz")["features"], np.load(tmp_path / "train.npz")["features"])
    with pytest.raises(ValueError, match="bn_mode"):
        dump_features(*args, tmp_path / "x.npz", "conv4", device="cpu", bn_mode="frozen")


def test_fewshot_evaluation_is_deterministic_and_well_above_chance(synthetic_data, trained):
    model, _ = load_model(trained / "epoch_002.pt")
    split = torch.from_numpy(load_split(synthetic_data, "test")[0])
    settings = [{"n_way": 5, "n_shot": 1}, {"n_way": 5, "n_shot": 5}]
    a = evaluate(model, split, settings, n_query=5, episodes=20, seed=3, backbone="conv4")
    b = evaluate(model, split, settings, n_query=5, episodes=20, seed=3, backbone="conv4")
    assert a.equals(b)
    assert (a["accuracy"] > 0.35).all()  # chance is 0.2 after 10 training episodes of a width-16 Conv-4
    assert a["accuracy"].iloc[1] > a["accuracy"].iloc[0]  # 5 shots beat 1
    assert (a["ci95"] >= 0).all() and (a["ci95"] < 0.5).all()
