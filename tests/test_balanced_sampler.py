"""train.balance: group_label draws every (source, label) pair equally often; train.session_weight
draws the named sessions more often."""

import numpy as np
import pytest

from training.data import group_balanced_sampler, session_weighted_sampler


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


def test_named_sessions_are_drawn_that_many_times_as_often():
    groups = ["a"] * 500 + ["b"] * 400 + ["mixed"] * 100
    sampler = session_weighted_sampler(groups, {"mixed": 6}, seed=7)
    drawn = [groups[i] for i in sampler]
    assert len(drawn) == len(groups)
    # weights 500 : 400 : 600 -> shares 1/3, 4/15, 2/5
    share = {g: drawn.count(g) / len(drawn) for g in ("a", "b", "mixed")}
    assert share["mixed"] == pytest.approx(0.4, abs=0.05) and share["a"] == pytest.approx(1 / 3, abs=0.05), share
    assert [groups[i] for i in session_weighted_sampler(groups, {"mixed": 6}, seed=7)] == drawn  # seeded


def test_session_weights_need_positive_factors_and_skip_sessions_not_in_train():
    # a config's weights name its own data's sessions: other data (--set data.kind=..., a line dataset)
    # trains as if they were not set, and says so
    with pytest.warns(UserWarning, match="not in train, ignored: nowhere"):
        assert session_weighted_sampler(["a", "b"] * 50, {"nowhere": 2}, seed=7) is None  # plain shuffling
    with pytest.warns(UserWarning, match="ignored: nowhere"):
        drawn = [["a", "b"][i % 2] for i in session_weighted_sampler(["a", "b"] * 50, {"nowhere": 2, "b": 3}, seed=7)]
    assert drawn.count("b") > drawn.count("a")
    with pytest.raises(ValueError, match="must be positive"):
        session_weighted_sampler(["a", "b"], {"a": 0}, seed=7)
