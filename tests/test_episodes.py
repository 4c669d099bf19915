"""Episodes are drawn on the device by indexing one uint8 split tensor with a seeded generator."""

import numpy as np
import pytest
import torch

from metacollapse.episodes import (
    EpisodeSpec,
    fixed_episode_indices,
    gather_episode,
    sample_episode_indices,
    split_to_device,
)

SPEC = EpisodeSpec(n_way=5, n_support=3, n_query=4)


def labelled_split(classes=12, per_class=20):
    """Every pixel of image (c, i) holds c*per_class+i (mod 256), so a gathered image reveals its origin."""
    ids = np.arange(classes * per_class).reshape(classes, per_class) % 256
    return np.broadcast_to(ids[:, :, None, None], (classes, per_class, 28, 28)).astype(np.uint8).copy()


def test_episode_shapes_and_dtype():
    split = split_to_device(labelled_split(), "cpu")
    indices = sample_episode_indices(12, 20, SPEC, episodes=7, generator=torch.Generator().manual_seed(0))
    assert indices.classes.shape == (7, 5) and indices.images.shape == (7, 5, 7)
    support, query = gather_episode(split, indices[0], SPEC)
    assert support.shape == (15, 1, 28, 28) and query.shape == (20, 1, 28, 28)
    assert support.dtype == torch.float32


def test_support_and_query_are_disjoint_images_of_the_drawn_classes():
    split = split_to_device(labelled_split(), "cpu")
    indices = sample_episode_indices(12, 20, SPEC, episodes=50, generator=torch.Generator().manual_seed(1))
    for e in range(50):
        classes = indices.classes[e].tolist()
        assert len(set(classes)) == SPEC.n_way
        support, query = gather_episode(split, indices[e], SPEC)
        s_ids = support[:, 0, 0, 0].long().view(SPEC.n_way, SPEC.n_support)
        q_ids = query[:, 0, 0, 0].long().view(SPEC.n_way, SPEC.n_query)
        for way, c in enumerate(classes):
            # class-major blocks: row `way` holds images of class `c` only
            assert set((s_ids[way] // 20).tolist()) == {c} and set((q_ids[way] // 20).tolist()) == {c}
            assert not set(s_ids[way].tolist()) & set(q_ids[way].tolist())


def test_classes_come_from_the_given_split_only():
    indices = sample_episode_indices(9, 20, SPEC, episodes=200, generator=torch.Generator().manual_seed(2))
    assert int(indices.classes.max()) <= 8 and int(indices.classes.min()) >= 0
    assert int(indices.images.max()) <= 19
    # every class of the split gets drawn eventually (uniform sampling, not a fixed subset)
    assert set(indices.classes.flatten().tolist()) == set(range(9))


def test_same_seed_same_episodes_other_seed_other_episodes():
    a = sample_episode_indices(12, 20, SPEC, 5, torch.Generator().manual_seed(3))
    b = sample_episode_indices(12, 20, SPEC, 5, torch.Generator().manual_seed(3))
    c = sample_episode_indices(12, 20, SPEC, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a.classes, b.classes) and torch.equal(a.images, b.images)
    assert not torch.equal(a.classes, c.classes)


def test_fixed_episodes_depend_only_on_their_seed():
    a = fixed_episode_indices(12, 20, SPEC, 10, seed=7)
    b = fixed_episode_indices(12, 20, SPEC, 10, seed=7)
    assert torch.equal(a.images, b.images) and a.classes.device.type == "cpu"


@pytest.mark.parametrize(
    ("spec", "message"),
    [(EpisodeSpec(13, 1, 1), "only 12 classes"), (EpisodeSpec(5, 15, 6), "classes have 20 images")],
)
def test_impossible_episodes_are_refused_with_the_numbers(spec, message):
    with pytest.raises(ValueError, match=message):
        sample_episode_indices(12, 20, spec, 1, torch.Generator())


def test_split_must_be_uint8_4d():
    with pytest.raises(ValueError, match="uint8"):
        split_to_device(np.zeros((2, 20, 28, 28), dtype=np.float32), "cpu")
