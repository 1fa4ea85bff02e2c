"""LongReward's retrieval, BM25 against embeddings (all-MiniLM-L6-v2), side by side on the same queries.

The contexts are the example long-context documents (`datalake/examples/longcontext.jsonl`), cut into the
pipeline's 128-token passages. Each query is a statement as a judge would extract it from an answer, in two
forms: close to the document's words (a faithful answer), and paraphrased (an answer in its own words). A query
is found at k when one of the top k passages holds the sentence it comes from. Prints recall at 1 and at 5 per
retriever and form, the time to index and to search (per statement, each answer's statements searched at once,
as the pipeline does), and the ratios.

    python benchmarks/bench_retrieval.py [--chunk-tokens 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from proxyreward_pl import retrieval

ROOT = Path(__file__).resolve().parents[1]
# (question id, the sentence's words in the document, statement close to the text, paraphrased statement)
CASES = [
    ("lc-salt-01", "founded in 1763 by Maren Holt", "The works were founded in 1763 by Maren Holt.",
     "Maren Holt started the business in the 1760s."),
    ("lc-salt-01", "In 1779 Holt's son Tobias built the first boiling house",
     "In 1779 Tobias Holt built the first boiling house.", "Her son put up the first house for boiling brine in 1779."),
    ("lc-salt-01", "Boiled salt fetched twice the price", "Boiled salt fetched twice the price of grey sun salt.",
     "Salt made over a fire sold for double what sun-dried salt did."),
    ("lc-salt-01", "coal soon replaced peat", "Coal soon replaced peat under the boiling pans.",
     "They stopped burning turf and used fuel shipped from Isk instead."),
    ("lc-salt-01", "Output rose from about 300 tons", "Output rose from about 300 tons to about 900 tons a year.",
     "Production tripled once water could be lifted at any tide."),
    ("lc-salt-01", "The last salt was boiled in the autumn of 1902", "The last salt was boiled in the autumn of 1902.",
     "Production ended at the start of the twentieth century."),
    ("lc-salt-01", "a museum of the salt trade since 1978", "The boiling house has been a museum since 1978.",
     "Since the late seventies the restored building shows visitors the history of the trade."),
    ("lc-salt-01", "a storm tide broke through the dunes", "In February 1811 a storm tide broke through the dunes.",
     "The sea burst over the sand hills one winter night and swamped the site."),
    ("lc-wren-01", "about 11 centimetres long", "An adult is about 11 centimetres long.",
     "The bird measures roughly a hand's width, a little over ten centimetres."),
    ("lc-wren-01", "The song is a dry three-note phrase", "The song is a dry three-note phrase.",
     "Its call is made of three short notes, the middle one the highest."),
    ("lc-wren-01", "incubates them alone for thirteen days", "The female incubates the eggs alone for thirteen days.",
     "Only the hen sits on the clutch, for nearly two weeks."),
    ("lc-wren-01", "winter in the salt marshes of the southern coast",
     "The wrens winter in the salt marshes of the southern coast.",
     "The birds spend the cold months by the sea far south."),
    ("lc-wren-01", "counted about 3,400 breeding pairs", "The survey of 2019 counted about 3,400 breeding pairs.",
     "A recent count found fewer nesting couples than in the nineties."),
    ("lc-wren-01", "reed may be cut only between November and February",
     "In the reserve reed may be cut only between November and February.",
     "Harvesting of the stems is allowed only in winter, while the birds are away."),
    ("lc-bridge-01", "voted by two votes to one for option A", "The committee voted two to one for option A.",
     "A majority of the councillors chose to mend the old crossing."),
    ("lc-bridge-01", "one pier has settled by four centimetres", "One pier has settled by four centimetres.",
     "A support of the arches has sunk slightly since the earlier survey."),
    ("lc-bridge-01", "the county will pay 70 per cent", "The county will pay 70 per cent of the cost of the repair.",
     "Most of the bill for mending a protected structure falls to the regional authority."),
    ("lc-bridge-01", "A temporary footbridge will be put up downstream",
     "A temporary footbridge will be put up downstream.", "Pupils will cross the river on a makeshift walkway."),
    ("lc-station-01", "A full battery runs the station for about three weeks",
     "A full battery runs the station for about three weeks without sun.",
     "When charged it keeps working for roughly twenty days of cloud."),
    ("lc-station-01", "E3 means the rain gauge has not tipped",
     "E3 means the rain gauge has not tipped for thirty days.",
     "One code warns that no rainfall has been recorded for a month despite saturated air."),
    ("lc-station-01", "E5 means the clock has lost the time", "E5 means the clock has lost the time.",
     "A code tells you the device forgot the date and hour."),
    ("lc-station-01", "tips once for every 0.2 millimetres of rain",
     "The rain gauge tips once for every 0.2 millimetres of rain.",
     "Each tilt of the little bucket stands for a fifth of a millimetre of precipitation."),
    ("lc-station-01", "send the humidity sensor back for calibration",
     "Every two years send the humidity sensor back for calibration.",
     "The moisture probe must be checked against a standard every other year."),
    ("lc-station-01", "point the arrow on the vane arm to true north", "Point the arrow on the vane arm to true north.",
     "When mounting, align the direction sensor with geographic north."),
]


def contexts() -> dict[str, str]:
    rows = [json.loads(line) for line in (ROOT / "datalake/examples/longcontext.jsonl").read_text().splitlines()]
    return {r["question_id"]: r["context"] for r in rows}


def run(kind: str, chunk_tokens: int, repeat: int) -> dict:
    docs = contexts()
    t0 = time.perf_counter()
    indexes = {qid: retrieval.Index(retrieval.split_chunks(docs[qid], chunk_tokens), kind)
               for qid in {c[0] for c in CASES}}
    index_s = time.perf_counter() - t0
    out = {"index_s": index_s}
    by_question: dict[str, list[tuple]] = {}
    for c in CASES:
        by_question.setdefault(c[0], []).append(c)
    for form, col in (("close", 2), ("paraphrase", 3)):
        t0 = time.perf_counter()
        for _ in range(repeat):  # one search per question with all its statements, as the pipeline does per answer
            found = {qid: indexes[qid].search([c[col] for c in cases], 5) for qid, cases in by_question.items()}
        out[f"{form}_search_ms"] = 1000 * (time.perf_counter() - t0) / (repeat * len(CASES))
        hits1 = hits5 = 0
        for qid, cases in by_question.items():
            for c, five in zip(cases, found[qid], strict=True):
                ranked = indexes[qid].search([c[col]], 1)[0]
                hits5 += any(c[1] in p.text for p in five)
                hits1 += any(c[1] in p.text for p in ranked)
        out[f"{form}_r1"], out[f"{form}_r5"] = hits1 / len(CASES), hits5 / len(CASES)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    kinds = ["bm25"] + (["embedding"] if retrieval.embedding_available() else [])
    t0 = time.perf_counter()
    if "embedding" in kinds:
        retrieval.embed(["warm up"])  # the model's one-off load, reported apart
    load_s = time.perf_counter() - t0
    results = {k: run(k, args.chunk_tokens, args.repeat) for k in kinds}
    n_chunks = sum(len(retrieval.split_chunks(t, args.chunk_tokens)) for t in contexts().values())
    print(f"{len(CASES)} queries x 2 forms over {n_chunks} passages of <= {args.chunk_tokens} tokens "
          f"(all example contexts); embedding model load {load_s:.1f} s")
    print(f"{'retriever':<10} {'close R@1':>9} {'close R@5':>9} {'para R@1':>9} {'para R@5':>9} "
          f"{'index ms':>9} {'query ms':>9}")
    for k, r in results.items():
        print(f"{k:<10} {r['close_r1']:>9.2f} {r['close_r5']:>9.2f} {r['paraphrase_r1']:>9.2f} "
              f"{r['paraphrase_r5']:>9.2f} {1000 * r['index_s']:>9.1f} {r['paraphrase_search_ms']:>9.2f}")
    if len(results) == 2:
        b, e = results["bm25"], results["embedding"]
        print(f"embedding / bm25: paraphrase R@5 {e['paraphrase_r5']:.2f} vs {b['paraphrase_r5']:.2f}; "
              f"query time x{e['paraphrase_search_ms'] / max(b['paraphrase_search_ms'], 1e-9):.0f}")


if __name__ == "__main__":
    main()
