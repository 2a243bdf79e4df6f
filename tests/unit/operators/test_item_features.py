"""Item side features: the three file formats, fallback for items without tokens, checkpoints that carry them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from graph_state import GraphConfig, UserGraph
from operators import Checkpoint, Embedder, EncoderConfig
from operators.item_features import ItemFeatures, read_item_features
from tests.conftest import Ev

RECBOLE = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
    "3\tFour Rooms\t1995\tThriller\n"
    "4\tGet Shorty\t1996\tAction Comedy Drama\n"
)


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_recbole_item_file_gives_field_named_tokens_and_drops_single_item_tokens(tmp_path):
    f = read_item_features(write(tmp_path, "ml.item", RECBOLE), fields=["class", "release_year"])
    names = {item: {f.tokens[t] for t in f.items[item]} for item in f.items}
    assert names["1"] == {"release_year=1995", "class=Comedy"}  # Animation, Children's: one item each
    assert names["3"] == {"release_year=1995", "class=Thriller"}
    assert names["4"] == {"class=Action", "class=Comedy"}  # 1996 and Drama are unique to item 4
    assert f.source == "ml.item" and len(f.fingerprint) == 16
    everything = read_item_features(write(tmp_path, "ml.item", RECBOLE), min_count=1)
    assert "movie_title=Toy" in everything.tokens and "class=Drama" in everything.tokens


def test_csv_and_jsonl_give_the_same_tokens(tmp_path):
    csv_path = write(tmp_path, "items.csv", "item_id,genre,year\na,x|y,1990\nb,y z,1990\nc,,\n")
    lines = [
        {"item_id": "a", "genre": ["x", "y"], "year": 1990},
        {"item_id": "b", "genre": "y z", "year": 1990},
        {"item_id": "c"},
    ]
    jsonl_path = write(tmp_path, "items.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    a = read_item_features(csv_path, min_count=1)
    b = read_item_features(jsonl_path, min_count=1)
    assert a.tokens == b.tokens == ["genre=x", "genre=y", "year=1990", "genre=z"]
    assert a.items == b.items and "c" not in a.items


def test_unusable_files_fail_with_the_cause_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="--item-fields"):
        read_item_features(write(tmp_path, "ml.item", RECBOLE), fields=["genre"])
    with pytest.raises(ValueError, match="format"):
        read_item_features(write(tmp_path, "items.txt", "x"))
    with pytest.raises(ValueError, match=r"items\.jsonl:2"):
        read_item_features(write(tmp_path, "items.jsonl", '{"item_id": "a", "g": "x"}\nnot json\n'))
    with pytest.raises(FileNotFoundError, match="--item-features"):
        read_item_features(str(tmp_path / "missing.item"))


FEATURES = ItemFeatures.from_tokens({f"i{n}": [f"g={n % 3}", f"d={n % 2}"] for n in range(20)}, "mem", "f0")
VOCAB = [f"i{n}" for n in range(30)]  # i20..i29: in the vocabulary, without features


def graph(items: str | list[str]) -> UserGraph:
    g = UserGraph(GraphConfig())
    for n, item in enumerate(items):
        g.apply(Ev(str(n), item, ts=float(n)))
    return g


def test_items_without_features_fall_back_to_their_plain_item_vector():
    ckpt = Checkpoint.seeded(EncoderConfig(dim=8, hash_buckets=4), seed=1, vocab=VOCAB, features=FEATURES)
    enc = ckpt.encoder
    rows = torch.tensor([ckpt.index.row(i) for i in ("i25", "never-seen", "i3")])
    with torch.no_grad():
        vectors = enc.item_rows_vectors(rows)
        plain = enc.item_emb(rows)
        assert torch.equal(vectors[:2], plain[:2])  # no tokens (or a hashed row): exactly the item embedding
        bag = enc.token_emb.weight[list(FEATURES.items["i3"])].mean(0)
        torch.testing.assert_close(vectors[2], plain[2] + bag)
        torch.testing.assert_close(enc.item_table()[rows], vectors)  # scoring side sees the same vectors
    assert Embedder(ckpt).embed_many([graph(["i1", "never-seen", "i25"])]).shape == (1, 8)


def test_checkpoint_carries_the_feature_table_and_serves_without_the_file(tmp_path):
    ckpt = Checkpoint.seeded(EncoderConfig(dim=8, hash_buckets=4), seed=2, vocab=VOCAB, features=FEATURES)
    assert ckpt.config.item_features == "mem:f0" and ckpt.config.feature_tokens == len(FEATURES.tokens)
    path = tmp_path / "m.ckpt"
    ckpt.save(path)
    loaded = Checkpoint.load(path)
    assert loaded.model_version == ckpt.model_version and loaded.feature_tokens == FEATURES.tokens
    graphs = [graph(["i1", "i2", "i25", "i1"]), graph(["i7", "zzz"])]
    np.testing.assert_array_equal(Embedder(loaded).embed_many(graphs), Embedder(ckpt).embed_many(graphs))
    other = Checkpoint.seeded(
        EncoderConfig(dim=8, hash_buckets=4),
        seed=2,
        vocab=VOCAB,
        features=ItemFeatures.from_tokens({"i1": ["g=1"]}, "mem", "f1"),
    )
    assert other.model_version != ckpt.model_version  # the table is part of the model's content


def test_default_config_and_seeded_models_are_unchanged_by_the_optional_parts():
    # Pinned before similarity edges and side features existed: older checkpoints keep their version.
    assert Checkpoint.seeded().model_version == "2c6617ada494c53d"
    assert Checkpoint.seeded(EncoderConfig(dim=16, layers=2), seed=3).model_version == "5eebd48eef2b4c93"
    assert sorted(EncoderConfig().to_dict()) == [
        "actions",
        "conv",
        "dim",
        "dropout",
        "extra",
        "hash_buckets",
        "layers",
        "norm_scale",
    ]
    assert EncoderConfig(similarity_k=3).to_dict()["similarity_k"] == 3
    with pytest.raises(ValueError, match="similarity_k"):
        EncoderConfig(similarity_k=-1)
    with pytest.raises(ValueError, match="feature_tokens"):
        EncoderConfig(feature_tokens=3)


def test_loading_needs_no_features_file(tmp_path):
    path = write(tmp_path, "ml.item", RECBOLE)
    features = read_item_features(path, min_count=1)
    ckpt = Checkpoint.seeded(EncoderConfig(dim=8, hash_buckets=4), vocab=["1", "2", "3", "4"], features=features)
    ckpt.save(tmp_path / "m.ckpt")
    os.remove(path)
    assert Checkpoint.load(tmp_path / "m.ckpt").config.item_features.startswith("ml.item:")
