"""Probe sets are drawn once from their own seeds, fit their splits, and are read back as they were saved."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from metacollapse.data import FASHION_CLASSES
from metacollapse.probes import load_probes, make_probes, probe_bn_mode

PROBES = {
    "train_episodes": {"kind": "episodic", "split": "train", "n_way": 6, "n_support": 2, "n_query": 3, "episodes": 4},
    "test_classes": {"kind": "classes", "split": "test", "classes": 7, "n_support": 5},
}


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


def test_probes_that_do_not_fit_their_split_are_errors_naming_the_probe(synthetic_data, tmp_path):
    too_many = {"whole": {"kind": "classes", "split": "test", "classes": 5, "n_support": 25}}
    with pytest.raises(ValueError, match=r"probe 'whole' on split 'test': n_support=25, expected 1 to 19"):
        make_probes(too_many, 5, synthetic_data, tmp_path / "p.npz")
    too_wide = {"wide": {**PROBES["train_episodes"], "split": "val", "n_way": 50}}
    with pytest.raises(ValueError, match=r"probe 'wide' on split 'val': n_way=50 but the split has only 12"):
        make_probes(too_wide, 5, synthetic_data, tmp_path / "p.npz")


def test_a_class_probe_takes_the_first_images_of_each_class(synthetic_data, tmp_path):
    few = {"test_classes": {**PROBES["test_classes"], "images": 7, "n_support": 3}}
    make_probes(few, 5, synthetic_data, tmp_path / "few.npz")
    make_probes(PROBES, 5, synthetic_data, tmp_path / "all.npz")
    spec, few_indices = load_probes(tmp_path / "few.npz")
    _, all_indices = load_probes(tmp_path / "all.npz")
    assert few_indices["test_classes"].images.shape == (1, 7, 7)
    assert (few_indices["test_classes"].images == torch.arange(7)).all()
    assert (all_indices["test_classes"].images == torch.arange(20)).all()  # default: every image
    assert torch.equal(few_indices["test_classes"].classes, all_indices["test_classes"].classes)  # same classes
    assert spec["probes"]["test_classes"]["images"] == 7


@pytest.mark.parametrize("images", [1, 21, 2.5, True, "7"])
def test_an_images_count_that_does_not_fit_is_an_error_naming_the_probe(synthetic_data, tmp_path, images):
    probe = {"few": {**PROBES["test_classes"], "images": images, "n_support": 1}}
    message = f"probe 'few' on split 'test': images={images!r}, expected an integer from 2 to 20"
    with pytest.raises(ValueError, match=re.escape(message)):
        make_probes(probe, 5, synthetic_data, tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()


def test_a_class_probe_needs_queries_among_its_images(synthetic_data, tmp_path):
    probe = {"few": {**PROBES["test_classes"], "images": 7, "n_support": 7}}
    with pytest.raises(ValueError, match=r"probe 'few' on split 'test': n_support=7, expected 1 to 6 \(classes have 7"):
        make_probes(probe, 5, synthetic_data, tmp_path / "p.npz")


def test_probes_on_fashion_splits_use_its_training_split_in_train_mode(synthetic_data, tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, size=(10, 50, 28, 28), dtype=np.uint8)
    for split in ("fashion_train", "fashion_test"):
        np.save(synthetic_data / f"{split}.npy", grey)
        (synthetic_data / f"{split}_classes.txt").write_text("".join(f"{c}\n" for c in FASHION_CLASSES))
    episodes = {"kind": "episodic", "split": "fashion_train", "n_way": 5, "n_support": 5, "n_query": 5, "episodes": 3}
    classes = {"kind": "classes", "split": "fashion_test", "classes": 10, "n_support": 5, "images": 20}
    probes = {"fashion_episodes": episodes, "fashion_classes": classes}
    make_probes(probes, 5, synthetic_data, tmp_path / "p.npz")
    spec, indices = load_probes(tmp_path / "p.npz")
    modes = {name: probe["bn_mode"] for name, probe in spec["probes"].items()}
    assert modes == {"fashion_episodes": "train", "fashion_classes": "eval"}
    assert indices["fashion_episodes"].images.max() < 50 and indices["fashion_classes"].images.shape == (1, 10, 20)
    assert probe_bn_mode({"kind": "episodic", "split": "fashion_test"}) == "eval"
    assert json.loads(json.dumps(spec)) == spec
