"""`proxyreward dataset generate|proxyqa|stats`: meta-questions and proxy statements written by an LLM.

Step 1 asks the generator for open-ended meta-questions per domain (balanced over the domains); step 2
asks, per meta-question, for `per_question` boolean proxy statements with their answers (a share false).
Both use structured output (a JSON schema, or a regex on vLLM). With `--verify`, a second pass asks the
generator (or `--verifier.*`) each surviving statement closed-book, against its question only; a statement
whose answer disagrees with the one it was written with is dropped. Every rule that drops something is
counted in the summary. Every answer is cached as it arrives (the engine cache), so a killed run
continues without regenerating anything and a re-run costs nothing; the result replaces its own part of
`meta_questions` and `proxy_questions` in one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterator

from . import prompts
from .asking import Asked, Tokens, answer_form, ask, resolve_engine, structured_kwargs
from .dataset import Record, part_name, read_proxyqa, store
from .engines import Request, make_engine
from .errors import ProxyRewardError
from .lake import Lake
from .lake.runs import record_run
from .rewards.parsing import ParseError, is_json, json_answer
from .settings import EngineSettings, GenerationSettings, TinySettings

DEFAULT_DOMAINS = ("science", "history", "technology", "economics", "geography", "arts", "health", "sports")
TIME_WORDS = re.compile(r"\b(current(ly)?|nowadays|today|latest|recent(ly)?|as of|this year|upcoming)\b", re.I)
IMPORTANCE = (1, 2, 3)
"""A statement's importance when weights are asked for: optional, important, essential."""
STOPWORDS = frozenset("a an the of and or in on to for with by from how what why which who does do is are was "
                      "were be its their this that these those as at into about between explain describe "
                      "discuss compare".split())


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in normalise(text).split() if w not in STOPWORDS)


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# -- parsing ---------------------------------------------------------------------------------------
def parse_questions(text: str) -> list[str]:
    obj = json_answer(text)
    if is_json(obj):
        items = obj.get("questions") if isinstance(obj, dict) else None
        if not isinstance(items, list) or not all(isinstance(q, str) for q in items):
            raise ParseError("no 'questions' list of strings")
        return [q.strip() for q in items if q.strip()]
    found = [m.strip() for m in re.findall(r"^\s*Q:\s*(.+)$", text, re.M)]
    if not found:
        raise ParseError("no 'Q: ' lines")
    return found


def parse_statements(text: str) -> list[tuple[str, bool, int | None]]:
    """(statement, answer, importance or None) from a JSON object or '- True [3]: ...' lines."""
    obj = json_answer(text)
    if is_json(obj):
        items = obj.get("statements") if isinstance(obj, dict) else None
        if not isinstance(items, list):
            raise ParseError("no 'statements' list")
        out = []
        for i, item in enumerate(items):
            if not (isinstance(item, dict) and isinstance(item.get("statement"), str)
                    and isinstance(item.get("answer"), bool)):
                raise ParseError(f"statement {i}: needs a string 'statement' and a boolean 'answer'")
            importance = item.get("importance")
            if importance is not None and (isinstance(importance, bool) or importance not in IMPORTANCE):
                raise ParseError(f"statement {i}: importance must be 1, 2 or 3, got {importance!r}")
            out.append((item["statement"].strip(), item["answer"], importance))
        return out
    found = [(m.group(3).strip(), m.group(1).lower() == "true", int(m.group(2)) if m.group(2) else None)
             for m in re.finditer(r"^\s*-\s*(True|False)\s*(?:\[([123])\])?\s*:\s*(.+)$", text, re.M | re.I)]
    if not found:
        raise ParseError("no '- True: ' / '- False: ' lines")
    return found


def parse_verdict(text: str) -> bool:
    """A closed-book check's answer: {"answer": true|false} or a first word True/False."""
    obj = json_answer(text)
    if is_json(obj):
        if not (isinstance(obj, dict) and isinstance(obj.get("answer"), bool)):
            raise ParseError("needs a boolean 'answer'")
        return obj["answer"]
    m = re.match(r"\W*(true|false)\b", text, re.I)
    if not m:
        raise ParseError("no True or False")
    return m.group(1).lower() == "true"


def questions_schema(count: int) -> dict:
    return {"type": "object", "properties": {"questions": {"type": "array", "items": {"type": "string"},
                                                           "minItems": 1, "maxItems": count}},
            "required": ["questions"], "additionalProperties": False}


def statements_schema(count: int, weights: bool = False) -> dict:
    props: dict = {"statement": {"type": "string"}, "answer": {"type": "boolean"}}
    if weights:
        props["importance"] = {"type": "integer", "enum": list(IMPORTANCE)}
    item = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
    return {"type": "object", "properties": {"statements": {"type": "array", "items": item, "maxItems": count}},
            "required": ["statements"], "additionalProperties": False}


def questions_regex(count: int) -> str:
    return f"(Q: [A-Z][^\\n]{{30,240}}\\n){{{count}}}"


def statements_regex(count: int, weights: bool = False) -> str:
    importance = " \\[[123]\\]" if weights else ""
    return f"(- (True|False){importance}: [A-Z][^\\n]{{25,220}}\\n){{{count}}}"


VERDICT_SCHEMA = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"],
                  "additionalProperties": False}


# -- the generator ------------------------------------------------------------------------------------
class Generator:
    """Asks the engine, applies the rules, counts what each rule dropped."""

    def __init__(self, engine, settings: GenerationSettings, engine_settings: EngineSettings,
                 verifier: tuple | None = None):
        self.engine, self.s, self.form = engine, settings, answer_form(engine_settings)
        self.verifier = verifier  # (engine, its settings): checks every statement closed-book; None: no check
        self.counts: Counter = Counter()
        self.tokens = Tokens()

    def _request(self, prompt: str, schema: dict, regex: str, seed: int) -> Request:
        return Request([{"role": "user", "content": prompt}], max_tokens=self.s.max_tokens,
                       temperature=self.s.temperature, seed=seed, **structured_kwargs(self.form, regex, schema))

    def _fmt(self) -> str:
        return "json" if self.form == "json_schema" else "lines"

    def questions(self, domains: list[str], n: int, existing: list[str]) -> list[tuple[str, str]]:
        """(domain, question) pairs, balanced over domains, none a (near) duplicate of another or of `existing`."""
        per_domain = {d: n // len(domains) + (i < n % len(domains)) for i, d in enumerate(domains)}
        kept: dict[str, list[str]] = {d: [] for d in domains}
        seen = [(normalise(q), content_words(q)) for q in existing]
        for batch in range(self.s.max_requests_per_domain):
            wanted = [d for d in domains if len(kept[d]) < per_domain[d]]
            if not wanted:
                break
            asked = []
            for d in wanted:
                prompt = prompts.render("generate_questions", domain=d, count=self.s.questions_per_request,
                                        batch=batch + 1, avoid=kept[d][-20:], time_insensitive=self.s.time_insensitive,
                                        answer_format=self._fmt())
                req = self._request(prompt, questions_schema(self.s.questions_per_request),
                                    questions_regex(self.s.questions_per_request),
                                    seed=self.s.seed * 7919 + batch * 101 + domains.index(d))
                asked.append(Asked(req, lambda res: parse_questions(res.texts[0]), (d, batch)))
            outcomes = ask(self.engine, asked, 0, self.tokens, f"meta-questions, round {batch + 1}")
            for d in wanted:
                o = outcomes[(d, batch)]
                if o.error:
                    self.counts["question_requests_failed"] += 1
                    continue
                for q in o.value:
                    self.counts["questions_generated"] += 1
                    reason = self._question_problem(q, seen)
                    if reason:
                        self.counts[reason] += 1
                    elif len(kept[d]) < per_domain[d]:
                        kept[d].append(q)
                        seen.append((normalise(q), content_words(q)))
                    else:
                        self.counts["questions_over_quota"] += 1
        return [(d, q) for d in domains for q in kept[d]]

    def _question_problem(self, q: str, seen: list[tuple[str, frozenset]]) -> str | None:
        words = len(q.split())
        lo, hi = self.s.question_words
        if not lo <= words <= hi:
            return "question_length"
        if self.s.time_insensitive and TIME_WORDS.search(q):
            return "time_sensitive_question"
        norm, cw = normalise(q), content_words(q)
        if any(norm == n for n, _ in seen):
            return "duplicate_question"
        if any(jaccard(cw, c) >= self.s.near_duplicate for _, c in seen):
            return "near_duplicate_question"
        return None

    def statements(self, questions: list[tuple[str, str]]) -> dict[str, list[tuple[str, bool, int | None]]]:
        """Surviving (statement, answer, importance) per question text (questions that fail the rules are
        absent)."""
        n, false_n = self.s.per_question, max(1, round(self.s.per_question * self.s.false_share))
        weights = self.s.weights
        asked = []
        for i, (_, q) in enumerate(questions):
            prompt = prompts.render("generate_statements", question=q, count=n, false_count=false_n,
                                    weights=weights, answer_format=self._fmt())
            req = self._request(prompt, statements_schema(n, weights), statements_regex(n, weights),
                                seed=self.s.seed * 7919 + i)
            asked.append(Asked(req, lambda res: parse_statements(res.texts[0]), (q,)))
        outcomes = ask(self.engine, asked, 1, self.tokens, f"proxy statements for {len(questions)} questions")
        candidates = {}
        for _, q in questions:
            o = outcomes[(q,)]
            if o.error:
                self.counts["statement_requests_failed"] += 1
                continue
            candidates[q] = self._filter_statements(q, o.value)
        if self.verifier is not None:
            candidates = self._verified(candidates)
        kept = {}
        for q, survivors in candidates.items():
            falses = sum(not a for _, a, _ in survivors)
            lo, hi = self.s.false_share_bounds
            if len(survivors) < self.s.min_statements:
                self.counts["too_few_statements"] += 1
            elif not lo <= falses / len(survivors) <= hi:
                self.counts["unbalanced_questions"] += 1
            else:
                kept[q] = survivors
        return kept

    def _verified(self, candidates: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
        """Each statement asked again, closed-book, against its question alone: one whose answer disagrees with
        the one it was written with is dropped (and one the checker cannot answer, counted apart)."""
        engine, settings = self.verifier
        form = answer_form(settings)
        asked = []
        for q, items in candidates.items():
            for i, (text, _, _) in enumerate(items):
                prompt = prompts.render("verify_statement", question=q, statement=text,
                                        answer_format="json" if form == "json_schema" else "lines")
                req = Request([{"role": "user", "content": prompt}], max_tokens=32, temperature=0.0,
                              **structured_kwargs(form, "(True|False)", VERDICT_SCHEMA))
                asked.append(Asked(req, lambda res: parse_verdict(res.texts[0]), (q, i)))
        outcomes = ask(engine, asked, 1, self.tokens, f"checking {len(asked)} statements closed-book")
        out = {}
        for q, items in candidates.items():
            out[q] = []
            for i, item in enumerate(items):
                o = outcomes[(q, i)]
                if o.error:
                    self.counts["statements_unverified"] += 1
                elif o.value != item[1]:
                    self.counts["statements_failing_verification"] += 1
                else:
                    out[q].append(item)
        return out

    def _filter_statements(self, question: str, items: list[tuple]) -> list[tuple]:
        out, seen = [], set()
        qn, qw = normalise(question), content_words(question)
        lo, hi = self.s.statement_words
        for text, answer, importance in items:
            self.counts["statements_generated"] += 1
            norm = normalise(text)
            if not lo <= len(text.split()) <= hi:
                self.counts["statement_length"] += 1
            elif norm in seen:
                self.counts["duplicate_statements"] += 1
            elif norm in qn or qn in norm or jaccard(content_words(text), qw) >= 0.8:
                self.counts["statements_repeating_question"] += 1
            else:
                seen.add(norm)
                out.append((text, answer, importance))
        return out


def _question_id(domain: str, text: str) -> str:
    return f"gen-{domain}-{hashlib.sha256(normalise(text).encode()).hexdigest()[:10]}"


def _split(question_id: str, share: float) -> str:
    bucket = int(hashlib.sha256(question_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if bucket < share else "train"


def _source(engine_settings: EngineSettings) -> str:
    h = hashlib.sha256((prompts.template_hash("generate_questions") + prompts.template_hash("generate_statements"))
                       .encode()).hexdigest()[:12]
    return f"generated:{engine_settings.model}:{h}"


def _statements_and_weights(items: list[tuple], settings: GenerationSettings) -> tuple[list, list | None]:
    """A record's statements, and their weights when asked for (an importance the generator left out counts 1)."""
    weights = [float(w or 1) for _, _, w in items] if settings.weights else None
    return [(text, answer) for text, answer, _ in items], weights


@contextlib.contextmanager
def _verifier(checker: EngineSettings | None, generator: EngineSettings, engine, lake: Lake) -> Iterator:
    """(engine, settings) that checks statements closed-book: the generator's own engine when it is the same
    model, else one of its own (closed afterwards); None when nothing is checked."""
    if checker is None:
        yield None
    elif checker == generator:
        yield engine, generator
    else:
        other = make_engine(checker, cache_path=lake.root / "cache" / "engine.sqlite")
        try:
            yield other, checker
        finally:
            other.close()


def generate(
    n: int = 100,
    domains: str | None = None,
    per_question: int | None = None,
    split_eval: float = 0.1,
    generator: EngineSettings = EngineSettings(),
    generation: GenerationSettings = GenerationSettings(),
    verify: bool = False,
    verifier: EngineSettings | None = None,
    tiny: TinySettings = TinySettings(),
    lake: str | None = None,
) -> dict:
    """Generate N meta-questions over the domains and their proxy statements, validate, deduplicate, store.

    Args:
        n: meta-questions to generate (balanced over the domains; fewer if the rules drop some).
        domains: comma-separated domains (default: science, history, technology, economics, geography, arts,
            health, sports).
        per_question: proxy statements asked for per meta-question (a shortcut for generation.per_question,
            which it overrides when given).
        split_eval: share of the questions that go to the eval split (by a hash of their id).
        generator: the engine that writes (--generator.engine, --generator.model, --generator.base_url, ...).
        generation: false share, rules and bounds, statement weights.
        verify: ask every surviving statement again, closed-book against its question, and drop those whose
            answer disagrees (counted as statements_failing_verification).
        verifier: the model that checks (--verifier.engine, --verifier.model, ...; default: the generator);
            giving one implies --verify true.
        tiny: the tiny model, when generator.model is `tiny`.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    names = [d.strip() for d in (domains.split(",") if domains else DEFAULT_DOMAINS) if d.strip()]
    if n < 1 or not names:
        raise ProxyRewardError("give --n >= 1 and at least one domain")
    if not 0 <= split_eval < 1:
        raise ProxyRewardError("--split_eval must be in [0, 1)")
    lk = Lake(lake)
    generator = resolve_engine(generator, tiny)
    settings = generation if per_question is None else dataclasses.replace(generation, per_question=per_question)
    engine = make_engine(generator, cache_path=lk.root / "cache" / "engine.sqlite")
    source = _source(generator)
    checker = resolve_engine(verifier, tiny) if verifier is not None else generator if verify else None
    config = {"n": n, "domains": names, "split_eval": split_eval, "generator": dataclasses.asdict(generator),
              "generation": dataclasses.asdict(settings),
              "verifier": dataclasses.asdict(checker) if checker is not None else None}
    with record_run(lk, 0, "generate", config) as metrics, _verifier(checker, generator, engine, lk) as verifying:
        gen = Generator(engine, settings, generator, verifying)
        try:
            # every question already in the lake counts for deduplication, except this generator's own
            # (a re-run replaces them)
            existing = lk.sql("SELECT text FROM meta_questions WHERE source != ?", [source])["text"].to_list()
            questions = gen.questions(names, n, existing)
            statements = gen.statements(questions)
        finally:
            engine.close()
        records = []
        for domain, q in questions:
            if q not in statements:
                continue
            qid = _question_id(domain, q)
            records.append(Record(qid, q, domain, _split(qid, split_eval), source, None,
                                  *_statements_and_weights(statements[q], settings)))
        if not records:
            raise ProxyRewardError(f"no generated question passed the rules: {dict(gen.counts)}")
        counts = store(lk, records, part_name(f"generated-{hashlib.sha256(source.encode()).hexdigest()[:12]}"))
        gen.counts.update(questions_kept=counts["meta_questions"], statements_kept=counts["proxy_questions"])
        metrics.update(summary=dict(gen.counts), sent=gen.tokens.sent, cached=gen.tokens.cached,
                       prompt_tokens=gen.tokens.prompt, completion_tokens=gen.tokens.completion, source=source)
    print_summary(gen.counts)
    return dict(metrics)


def print_summary(counts: Counter) -> None:
    print("dataset generation summary:")
    for key in sorted(counts):
        print(f"  {key:32} {counts[key]}")


def proxyqa(
    path: str,
    per_question: int | None = None,
    generator: EngineSettings = EngineSettings(),
    generation: GenerationSettings = GenerationSettings(),
    tiny: TinySettings = TinySettings(),
    lake: str | None = None,
) -> dict:
    """Import ProxyQA's public meta-questions (eval split) and generate unofficial proxy statements for them.

    Args:
        path: a ProxyQA `save_to_disk` folder.
        per_question: proxy statements asked for per meta-question (a shortcut for generation.per_question,
            which it overrides when given).
        generator: the engine that writes the statements.
        generation: false share, rules and bounds.
        tiny: the tiny model, when generator.model is `tiny`.
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    from pathlib import Path

    records = read_proxyqa(Path(path))
    lk = Lake(lake)
    generator = resolve_engine(generator, tiny)
    settings = generation if per_question is None else dataclasses.replace(generation, per_question=per_question)
    engine = make_engine(generator, cache_path=lk.root / "cache" / "engine.sqlite")
    source = f"proxyqa-unofficial:{_source(generator)}"
    with record_run(lk, 0, "proxyqa", {"path": str(path), "generator": dataclasses.asdict(generator),
                                                "generation": dataclasses.asdict(settings)}) as metrics:
        gen = Generator(engine, settings, generator)
        try:
            statements = gen.statements([(r.domain, r.text) for r in records])
        finally:
            engine.close()
        for r in records:  # every meta-question is kept; those whose statements failed have none
            r.source = source
            r.statements, r.weights = _statements_and_weights(statements.get(r.text, []), settings)
        counts = store(lk, records, part_name(f"import-{Path(path).name}"))
        gen.counts.update(questions_with_statements=sum(bool(r.statements) for r in records),
                          statements_kept=counts["proxy_questions"])
        metrics.update(summary=dict(gen.counts), sent=gen.tokens.sent, cached=gen.tokens.cached)
    print(f"imported {counts['meta_questions']} ProxyQA meta-questions (eval split) with "
          f"{counts['proxy_questions']} unofficial proxy statements")
    print_summary(gen.counts)
    return dict(metrics)


def stats(lake: str | None = None):
    """Domains, counts, true/false balance and statement lengths of the lake's dataset
    (datalake/sql/analysis/dataset_stats.sql).

    Args:
        lake: lake root (default: PROXYREWARD_LAKE or the repository's datalake/).
    """
    from .query import render

    frame = Lake(lake).run_sql_file("analysis/dataset_stats")
    print(render(frame, max_rows=500))
    return frame

