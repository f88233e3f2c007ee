"""train.balance: group_label draws every (source, label) pair equally often."""

import numpy as np

from training.train import group_balanced_sampler


def test_every_group_and_label_pair_is_drawn_about_equally_often():
    groups = ["stock"] * 100 + ["stock"] * 20 + ["lab"] * 300 + ["lab"] * 30
    labels = np.array([0] * 100 + [1] * 20 + [0] * 300 + [2] * 30)
    sampler = group_balanced_sampler(labels, groups, seed=7)
    drawn = np.array(list(sampler))
    assert len(drawn) == len(labels)
    pairs = [f"{groups[i]}/{labels[i]}" for i in drawn]
    shares = {p: pairs.count(p) / len(pairs) for p in set(pairs)}
    assert set(shares) == {"stock/0", "stock/1", "lab/0", "lab/2"}
    assert all(0.2 < s < 0.3 for s in shares.values()), shares
    assert list(group_balanced_sampler(labels, groups, seed=7)) == list(drawn)  # seeded
