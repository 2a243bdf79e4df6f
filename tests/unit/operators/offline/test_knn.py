"""Session-kNN baselines: neighbours and scores computed by hand on tiny sessions, and a brute-force reference."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pytest
import torch

from operators.item_index import ItemIndex
from operators.offline.datasets import Case, Interaction, Split, leave_one_out, sessions_split
from operators.offline.evaluation import evaluate
from operators.offline.knn import KNNConfig, KNNScorer, SessionIndex, search_space, tune

# Five training sessions, their line number as their time; "c" occurs twice in session 2.
TRAIN = ["abc", "bd", "acec", "fg", "da"]
VOCAB = list("abcdefg")
# Training events per item: a 3, b 2, c 3, d 2, e 1, f 1, g 1 → an item no neighbour holds
# scores -1 + count / (3 + 1).
UNHELD_1 = -1 + 1 / 4


def events(name: str, items: str | list[str], start: float = 0.0) -> list[Interaction]:
    return [Interaction(f"{name}:{i}", x, ts=start + i) for i, x in enumerate(items)]


def make_split(train=TRAIN, vocab=VOCAB, times=None) -> Split:
    seqs = [events(f"s{n}", s) for n, s in enumerate(train)]
    return Split(seqs, [], [], list(vocab), "sessions", train_times=times or [float(i) for i in range(len(train))])


def scores_of(config: KNNConfig, history: str | list[str], when: float = 5.0, split: Split | None = None):
    scorer = KNNScorer(SessionIndex.from_split(split or make_split()), config)
    row = scorer.scores([Case("q", events("q", history), "a", when)])[0].tolist()
    return dict(zip(VOCAB, row, strict=True)), scorer


def neighbours_of(scorer: KNNScorer, history: str, when: float = 5.0) -> list[tuple[int, float]]:
    nb = scorer.neighbours([Case("q", events("q", history), "a", when)])
    return [(int(s), float(x)) for s, x in zip(nb["session"], nb["sim"], strict=True)]


def test_sknn_binary_cosine_top_k_with_ties_to_the_more_recent_session():
    # case {b, a}: candidates 0 "abc" 2/√(2·3), 1 "bd" 1/√(2·2), 2 "ace" 1/√(2·3), 4 "da" 1/√(2·2);
    # k = 2: session 0, then 1 and 4 tie at 0.5 and the more recent (4) wins.
    got, scorer = scores_of(KNNConfig("sknn", k=2, sample_size=10), "ba")
    assert neighbours_of(scorer, "ba") == [(0, pytest.approx(2 / math.sqrt(6))), (4, pytest.approx(0.5))]
    s0, s4 = 2 / math.sqrt(6), 0.5
    expected = {"a": s0 + s4, "b": s0, "c": s0, "d": s4, "e": UNHELD_1, "f": UNHELD_1, "g": UNHELD_1}
    assert got == pytest.approx(expected, abs=1e-6)


def test_sknn_samples_the_most_recent_candidates_before_ranking_by_similarity():
    # sample_size 2 keeps sessions 4 (one step back) and 2 (three back); the more similar
    # session 0 is too old to be a candidate.
    got, scorer = scores_of(KNNConfig("sknn", k=2, sample_size=2), "ba")
    assert sorted(neighbours_of(scorer, "ba")) == [(2, pytest.approx(1 / math.sqrt(6))), (4, pytest.approx(0.5))]
    s2, s4 = 1 / math.sqrt(6), 0.5
    expected = {"a": s2 + s4, "b": UNHELD_1 + 1 / 4, "c": s2, "d": s4, "e": s2, "f": UNHELD_1, "g": UNHELD_1}
    assert got == pytest.approx(expected, abs=1e-6)


def test_vsknn_linear_position_weights_and_div_decay_of_the_latest_shared_item():
    # case a, c, b: weights 0.8, 0.9, 1.0. Dot products: 0 "abc" 2.7, 2 "ace" 1.7, 1 "bd" 1.0, 4 "da" 0.8.
    # k = 3 keeps 0, 2, 1. Latest case item held: 0 and 1 hold b (1 back: times 1), 2 holds c (2 back: times 1/2).
    got, scorer = scores_of(KNNConfig("vsknn", k=3, sample_size=10, weighting="linear", score_weighting="div"), "acb")
    assert neighbours_of(scorer, "acb") == [(0, pytest.approx(2.7)), (2, pytest.approx(1.7)), (1, pytest.approx(1.0))]
    expected = {"a": 2.7 + 0.85, "b": 2.7 + 1.0, "c": 2.7 + 0.85, "d": 1.0, "e": 0.85, "f": UNHELD_1, "g": UNHELD_1}
    assert got == pytest.approx(expected, abs=1e-6)


def test_vsknn_other_weightings():
    # case a, c, b with div weights 1/3, 2/3, 1 and quadratic score decay; k = 1 keeps "abc" (sum 2).
    got, _ = scores_of(KNNConfig("vsknn", k=1, sample_size=10, weighting="div", score_weighting="quadratic"), "acb")
    assert got["a"] == pytest.approx(2.0) and got["d"] == pytest.approx(UNHELD_1 + 1 / 4)
    # sample 2: sessions 4 "da" (1/3) and 2 "ace" (1/3 + 2/3); k = 1 keeps "ace", whose latest case item
    # is c, 2 back → times 1/4
    got, _ = scores_of(KNNConfig("vsknn", k=1, sample_size=2, weighting="div", score_weighting="quadratic"), "acb")
    assert got["e"] == pytest.approx((1 / 3 + 2 / 3) / 4) and got["d"] == pytest.approx(UNHELD_1 + 1 / 4)


def test_stan_three_weights_by_hand():
    lam1, lam2, lam3 = 1.0, 2.0, 1.0
    w = {"a": math.exp(-2 / lam1), "c": math.exp(-1 / lam1), "b": 1.0}  # case a, c, b: w1 = exp((p - 3) / λ1)
    norm = math.sqrt(sum(x * x for x in w.values()))
    sim0 = (w["a"] + w["b"] + w["c"]) / (norm * math.sqrt(3)) * math.exp(-5 / lam2)  # "abc", 5 sessions back
    sim1 = w["b"] / (norm * math.sqrt(2)) * math.exp(-4 / lam2)  # "bd"
    sim2 = (w["a"] + w["c"]) / (norm * math.sqrt(3)) * math.exp(-3 / lam2)  # "ace"
    sim4 = w["a"] / (norm * math.sqrt(2)) * math.exp(-1 / lam2)  # "da"
    assert sim1 > sim0 > sim2 > sim4  # so k = 2 keeps 1 and 0
    cfg = KNNConfig("stan", k=2, sample_size=10, lambda_spw=lam1, lambda_snh=lam2, lambda_inh=lam3)
    got, scorer = scores_of(cfg, "acb")
    assert neighbours_of(scorer, "acb") == [(1, pytest.approx(sim1)), (0, pytest.approx(sim0))]
    # w3: i* = b, the most recent case item each neighbour holds; in "bd" at 1, in "abc" at 2.
    e1 = math.exp(-1 / lam3)
    expected = {
        "a": sim0 * e1,
        "b": sim1 + sim0,
        "c": sim0 * e1,
        "d": sim1 * e1,
        "e": UNHELD_1,
        "f": UNHELD_1,
        "g": UNHELD_1,
    }
    assert got == pytest.approx(expected, rel=1e-5)


def test_stan_with_weights_off_is_cosine_ranking():
    got, scorer = scores_of(KNNConfig("stan", k=1, sample_size=10), "ba")
    assert neighbours_of(scorer, "ba") == [(0, pytest.approx(2 / math.sqrt(6)))]
    assert got["c"] == pytest.approx(2 / math.sqrt(6)) and got["d"] == pytest.approx(UNHELD_1 + 1 / 4)


def test_a_case_inside_the_training_period_samples_its_nearest_sessions_on_both_sides():
    # at time 2.6 the two nearest sessions sharing "a" are 2 (0.6 before) and... 4 (1.4 after) beats 0 (2.6 before)
    _, scorer = scores_of(KNNConfig("sknn", k=5, sample_size=2), "a", when=2.6)
    assert sorted(s for s, _ in neighbours_of(scorer, "a", when=2.6)) == [2, 4]
    assert sorted(s for s, _ in neighbours_of(scorer, "a", when=0.4)) == [0, 2]


def test_unknown_items_keep_their_positions_but_match_nothing():
    # case a, zzz: a is one step from the end → linear weight 0.9; "zzz" matches no session
    _, scorer = scores_of(KNNConfig("vsknn", k=5, sample_size=10), ["a", "zzz"])
    nb = scorer.neighbours([Case("q", events("q", ["a", "zzz"]), "a", 5.0)])
    assert sorted(nb["session"].tolist()) == [0, 2, 4] and np.allclose(nb["sim"], 0.9)
    got, _ = scores_of(KNNConfig("sknn"), ["zzz"])
    assert got == pytest.approx({"a": -0.25, "b": -0.5, "c": -0.25, "d": -0.5, "e": -0.75, "f": -0.75, "g": -0.75})


def test_event_timestamps_are_the_clock_without_split_times():
    ts = 1_700_000_000.0
    histories = {
        "old": events("old", "abx", ts),  # training history "a", ends at ts
        "new": events("new", "acyz", ts + 1000),  # training history "ac", ends at ts + 1001
        "me": events("me", "aqr", ts + 2000),  # training history "a" at ts + 2000; validation case: "a" → q
    }
    split = leave_one_out(histories)
    index = SessionIndex.from_split(split)
    assert index.time_unit == "s" and index.times.tolist() == [ts, ts + 1001, ts + 2000]
    scorer = KNNScorer(index, KNNConfig("sknn", k=5, sample_size=1))
    nb = scorer.neighbours([c for c in split.valid if c.user_id == "me"])
    assert nb["session"].tolist() == [2]  # its own training history is nearest in time
    stan = KNNScorer(index, KNNConfig("stan", k=5, sample_size=5, lambda_snh=1000.0))
    nb = stan.neighbours([Case("q", events("q", "a", ts + 1001), "b")])  # case time = its last event
    by_session = dict(zip(nb["session"].tolist(), nb["sim"].tolist(), strict=True))
    assert by_session[1] == pytest.approx(1 / math.sqrt(2))  # "ac" at the case's time: no decay
    assert by_session[0] == pytest.approx(math.exp(-1001 / 1000))  # "a", 1001 s before
    assert by_session[2] == pytest.approx(math.exp(-999 / 1000))  # "a", 999 s after


def test_scores_rank_through_evaluate_with_half_ties_and_exclude_seen():
    split = make_split()
    split.test = [Case("q", events("q", "ba"), "d", 5.0), Case("r", events("r", "ba"), "a", 5.0)]
    scorer = KNNScorer(SessionIndex.from_split(split), KNNConfig("sknn", k=2, sample_size=10))
    # case scores: a 1.32, b = c 0.82, d 0.5 → d 4th; a 1st. Excluding b and a: d is 2nd behind c.
    assert evaluate(scorer, split.test, ks=(3, 4)).metrics == pytest.approx(
        {
            "recall@3": 0.5,
            "mrr@3": 0.5,
            "ndcg@3": 0.5,
            "recall@4": 1.0,
            "mrr@4": (1 + 1 / 4) / 2,
            "ndcg@4": (1 + 1 / math.log2(5)) / 2,
        }
    )
    masked = evaluate(scorer, split.test[:1], ks=(2,), exclude_seen=True)
    assert masked.metrics["mrr@2"] == pytest.approx(1 / 2)
    # b and c tie at 2/√6 behind a: a target "c" ranks 1 + 1 + 1/2
    assert evaluate(scorer, [Case("s", events("s", "ba"), "c", 5.0)], ks=(3,)).metrics["mrr@3"] == pytest.approx(
        1 / 2.5
    )


# ---- against a direct transcription of the definitions -----------------------------------


def position_weight(name: str, p: int, length: int) -> float:
    return {"linear": max(0.0, 1 - 0.1 * (length - p)), "div": p / length, "quadratic": (p / length) ** 2}[name]


def decay(name: str, d: int) -> float:
    return {"div": 1 / d, "linear": max(0.0, 1 - 0.1 * d), "same": 1.0}[name]


def reference(train, times, case_items, when, cfg: KNNConfig):
    """Item scores for one case, session by session with sets; None when the top-k boundary is a near tie."""
    rank = {s: r for r, s in enumerate(sorted(range(len(train)), key=lambda s: times[s]))}
    before = sum(t < when for t in times)
    length = len(case_items)
    pos = {item: p for p, item in enumerate(case_items, 1)}
    near = {s: (abs(when - times[s]), abs(rank[s] - before + 0.5)) for s in range(len(train))}
    candidates = sorted((s for s in range(len(train)) if set(train[s]) & set(pos)), key=near.__getitem__)
    sims = {}
    for s in candidates[: cfg.sample_size]:
        held, shared = set(train[s]), set(train[s]) & set(pos)
        if cfg.kind == "sknn":
            sim = len(shared) / math.sqrt(len(pos) * len(held))
        elif cfg.kind == "vsknn":
            sim = sum(position_weight(cfg.weighting, pos[i], length) for i in shared)
        else:
            w1 = {i: math.exp((pos[i] - length) / cfg.lambda_spw) if cfg.lambda_spw else 1.0 for i in pos}
            sim = sum(w1[i] for i in shared) / (math.sqrt(sum(x * x for x in w1.values())) * math.sqrt(len(held)))
            if cfg.lambda_snh:
                sim *= math.exp(-abs(when - times[s]) / cfg.lambda_snh)
        if sim > 0:
            sims[s] = sim
    ranked = sorted(sims, key=lambda s: (-np.float32(sims[s]), near[s][1]))  # float32-equal similarities tie
    if len(ranked) > cfg.k:
        kth, next_ = np.float32(sims[ranked[cfg.k - 1]]), np.float32(sims[ranked[cfg.k]])
        if kth != next_ and abs(float(kth) - float(next_)) < 1e-6 * float(kth):
            return None  # two float32 neighbours apart: either rounding could go either way
    scores: dict[str, float] = defaultdict(float)
    for s in ranked[: cfg.k]:
        where = {item: q for q, item in enumerate(train[s], 1)}
        factor = 1.0
        if cfg.kind == "vsknn":
            back = next(d for d, item in enumerate(reversed(case_items), 1) if item in where)
            factor = decay(cfg.score_weighting, back)
        star = where[max((i for i in pos if i in where), key=pos.__getitem__)]
        for item, q in where.items():
            w3 = math.exp(-abs(q - star) / cfg.lambda_inh) if cfg.kind == "stan" and cfg.lambda_inh else 1.0
            scores[item] += sims[s] * factor * w3
    return scores


CONFIGS = [
    KNNConfig("sknn", k=3, sample_size=4),
    KNNConfig("sknn", k=100, sample_size=100),
    KNNConfig("vsknn", k=4, sample_size=6, weighting="linear", score_weighting="div"),
    KNNConfig("vsknn", k=2, sample_size=100, weighting="quadratic", score_weighting="same"),
    KNNConfig("vsknn", k=50, sample_size=3, weighting="div", score_weighting="linear"),
    KNNConfig("stan", k=3, sample_size=5, lambda_spw=1.5, lambda_snh=4.0, lambda_inh=2.0),
    KNNConfig("stan", k=100, sample_size=100, lambda_spw=0.5, lambda_inh=0.7),
    KNNConfig("stan", k=2, sample_size=8, lambda_snh=10.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.label().replace(" ", ""))
def test_batched_scores_equal_the_reference_on_random_sessions(cfg):
    rng = random.Random(7)
    items = [f"i{n}" for n in range(14)]
    train = [[rng.choice(items) for _ in range(rng.randint(1, 7))] for _ in range(60)]
    times = [float(rng.randrange(40)) for _ in train]
    vocab = list(dict.fromkeys(x for s in train for x in s))
    split = Split([events(f"s{n}", s) for n, s in enumerate(train)], [], [], vocab, "sessions", train_times=times)
    scorer = KNNScorer(SessionIndex.from_split(split), cfg)
    cases = []
    for n in range(80):
        history = [rng.choice([*items, "zzz"]) for _ in range(rng.randint(1, 6))]
        when = 45.0 if n % 2 else rng.randrange(40) + rng.choice([0.3, 0.7])
        cases.append(Case(f"c{n}", events(f"c{n}", history), "i0", when))
    got = scorer.scores(cases).numpy()
    fallback = scorer.sessions.fallback.numpy()
    compared = 0
    for row, case in zip(got, cases, strict=True):
        expected = reference(train, times, [ev.item_id for ev in case.history], case.time, cfg)
        if expected is None:
            continue
        want = fallback.copy()
        for item, value in expected.items():
            if value > 0:
                want[vocab.index(item)] = value
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-7)
        compared += 1
    assert compared >= 75


# ---- tuning and settings ----------------------------------------------------------------


def test_tune_picks_the_best_tried_setting_on_validation_cases_only():
    rng = random.Random(3)
    train = [[f"i{rng.randrange(30)}" for _ in range(rng.randint(2, 6))] for _ in range(150)]
    histories = {f"u{n}": events(f"u{n}", s, 1_700_000_000.0 + 10 * n) for n, s in enumerate(train)}
    split = leave_one_out(histories)
    scorer, tuned = tune("vsknn", split, max_cases=60, seed=1)
    assert scorer.config == tuned.config and tuned.cases == 60
    best = max(score for _, score in tuned.tried)
    assert tuned.metrics["mrr@20"] == best
    assert {c for c, _ in tuned.tried} >= {KNNConfig("vsknn", k=100), KNNConfig("vsknn", k=50)}
    split.test = [Case("x", events("x", ["never"]), "never")]  # the test cases play no part
    assert tune("vsknn", split, max_cases=60, seed=1)[1].config == tuned.config
    split.valid = []
    with pytest.raises(ValueError, match="no validation cases"):
        tune("vsknn", split)


def test_stan_grid_scales_with_the_data():
    index = SessionIndex.from_split(make_split())
    axes = dict(search_space("stan", index))
    length = (3 + 2 + 4 + 2 + 2) / 5
    fractions = [1, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 2]
    assert axes["lambda_spw"] == pytest.approx([length * f for f in fractions] + [0.0])
    assert axes["lambda_inh"][-2:] == pytest.approx([4 * length, 0.0])
    assert axes["lambda_snh"] == pytest.approx([0.0, 4 / 256, 4 / 64, 4 / 16, 4 / 4])
    assert set(dict(search_space("sknn", index))) == {"k", "sample_size"}


def test_bad_settings_name_the_choices():
    with pytest.raises(ValueError, match="choose from sknn, vsknn, stan"):
        KNNConfig("iknn")
    with pytest.raises(ValueError, match="choose from linear, div"):
        KNNConfig("vsknn", weighting="cubic")
    with pytest.raises(ValueError, match="k must be at least 1"):
        KNNConfig("sknn", k=0)
    with pytest.raises(ValueError, match="2 training times for 5 training histories"):
        SessionIndex([["a"]] * 5, [0.0, 1.0], ItemIndex(["a"], 1))


def test_sessions_split_puts_training_lines_validation_and_test_on_one_clock(tmp_path):
    (tmp_path / "train_sessions.txt").write_text("1 2\n2 3 4\n5 6\n1 5\n")
    (tmp_path / "test_prefixes.tsv").write_text("1 2\t3\n")
    split = sessions_split(str(tmp_path), val_share=0.25, seed=0)
    held = {int(c.user_id[1:]) for c in split.valid}
    assert len(held) == 1 and split.time_unit == "sessions"
    assert split.train_times == [float(i) for i in range(4) if i not in held]
    assert all(c.time == float(int(c.user_id[1:])) for c in split.valid)
    assert [c.time for c in split.test] == [4.0]


def test_batches_with_many_postings_are_halved_without_changing_a_score(monkeypatch):
    import operators.session_knn as knn

    rng = random.Random(11)
    train = [[f"i{rng.randrange(12)}" for _ in range(rng.randint(2, 8))] for _ in range(80)]
    split = make_split(train, list(dict.fromkeys(x for s in train for x in s)), [float(t) for t in range(80)])
    scorer = KNNScorer(SessionIndex.from_split(split), KNNConfig("stan", k=5, sample_size=20, lambda_inh=1.0))
    cases = [Case(f"c{n}", events(f"c{n}", [f"i{rng.randrange(12)}" for _ in range(4)]), "i0", 81.0) for n in range(9)]
    whole, whole_nb = scorer.scores(cases), scorer.neighbours(cases)
    monkeypatch.setattr(knn, "MAX_POSTINGS", 15)  # every pass of more than 15 postings splits
    calls = []
    original = knn.SessionKNN.neighbours
    monkeypatch.setattr(knn.SessionKNN, "neighbours", lambda self, q: calls.append(q.n) or original(self, q))
    halved = scorer.scores(cases)
    assert len(calls) > 9 and 1 in calls
    assert torch.equal(whole, halved)
    split_nb = KNNScorer.neighbours(scorer, cases)
    assert all(np.array_equal(whole_nb[k], split_nb[k]) for k in whole_nb)
