"""Prompts that share a prefix, found from their token ids: what an in-process engine computes once.

A judge asked about many statements of one response sends prompts that differ only at their end (the
statement comes last), so the instructions, the question and the response need computing once per response.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_SHARE = 0.5
"""A prompt joins a group when the prefix it shares with the group's first prompt is at least this share
of its own length: no member then reads more than half its prompt again."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_groups(sequences: Sequence[Sequence[int]], limits: Sequence[int] | None = None,
                  min_share: float = MIN_SHARE) -> list[tuple[int, list[int]]]:
    """(shared prefix length, indices) per group of `sequences`, every index in exactly one group.

    Sorted, sequences with a common prefix are neighbours, and the prefix a run shares with its first member
    only shrinks along the run; a sequence joins the run before it while that prefix is at least `min_share` of
    its length. `limits[i]` caps how much of sequence i may be shared (the rest must be computed with it)."""
    limits = list(limits) if limits is not None else [len(s) for s in sequences]
    groups: list[tuple[int, list[int]]] = []
    first: Sequence[int] | None = None
    for i in sorted(range(len(sequences)), key=lambda i: list(sequences[i])):
        seq = sequences[i]
        if first is not None:
            shared = min(common_prefix(first, seq), groups[-1][0], limits[i])
            if shared >= min_share * len(seq) and shared > 0:
                groups[-1] = (shared, groups[-1][1] + [i])
                continue
        groups.append((limits[i], [i]))
        first = seq
    return groups
