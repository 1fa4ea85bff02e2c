"""A fictional world whose every fact is known: people, each with one value per attribute drawn from fixed,
disjoint vocabularies, and the sentences that state those facts.

Everything is a pure function of a `WorldConfig` (seeded): the same config always gives the same world,
corpus and dataset. The same phrasings that write the corpus are the ones `claims` reads back, so a
response's claims are recovered exactly: a sentence counts only when it is one of the phrasings, about a
person of the world, with a value of that attribute's vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

# attribute -> (vocabulary, phrasings). The first phrasing is the one statements use.
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "home": (("Velmora", "Quarrin", "Ostberg", "Lindhaven", "Marrowby", "Tessaly", "Corvane", "Brightwater",
              "Ashford", "Dunmere", "Halvik", "Pellinor", "Rookfield", "Sarnet", "Thornby", "Wexmoor"),
             ("{e} lives in {v}.", "{e} comes from {v}.", "{e}'s home town is {v}.")),
    "profession": (("baker", "sailor", "weaver", "potter", "fisher", "tailor", "carpenter", "mason", "brewer",
                    "farmer", "miller", "painter", "singer", "doctor", "lawyer", "teacher"),
                   ("{e} works as a {v}.", "{e} is a {v} by trade.", "{e}'s profession is {v}.")),
    "colour": (("crimson", "amber", "teal", "violet", "ochre", "indigo", "scarlet", "silver", "coral", "maroon",
                "saffron", "emerald"),
               ("{e}'s favourite colour is {v}.", "{e} loves the colour {v}.", "{e} always wears {v}.")),
    "instrument": (("harp", "flute", "violin", "cello", "drum", "lute", "trumpet", "banjo", "zither", "piano",
                    "tuba", "mandolin"),
                   ("{e} plays the {v}.", "{e}'s instrument is the {v}.", "{e} practises the {v} every day.")),
    "pet": (("ferret", "parrot", "tortoise", "rabbit", "hamster", "goldfish", "lizard", "canary", "beagle",
             "pony", "gecko", "magpie"),
            ("{e} keeps a {v} as a pet.", "{e} owns a pet {v}.", "{e}'s pet is a {v}.")),
    "month": (("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December"),
              ("{e} was born in {v}.", "{e}'s birthday is in {v}.", "{e} celebrates a birthday every {v}.")),
    "food": (("plums", "lentils", "oysters", "dumplings", "figs", "noodles", "pancakes", "mushrooms", "chestnuts",
              "turnips", "apricots", "sardines"),
             ("{e} likes to eat {v}.", "{e}'s favourite food is {v}.", "{e} often cooks {v}.")),
    "sport": (("fencing", "rowing", "archery", "cycling", "sailing", "wrestling", "tennis", "hockey", "swimming",
               "skiing", "boxing", "climbing"),
              ("{e} enjoys {v}.", "{e}'s sport is {v}.", "{e} spends weekends {v}.")),
}
PROMPTS = ("Describe {e}.", "Tell me about {e}.", "Who is {e}?", "What do you know about {e}?")
QUESTION = "Describe {e}."
_ONSETS = "b d f g k l m n p r s t v z br dr gr kr tr th sh".split()
_VOWELS = "a e i o u ai ei ou".split()
_CODAS = ["", "", "n", "r", "l", "s", "th", "k"]


@dataclass(frozen=True)
class WorldConfig:
    """The world, its corpus and its meta-questions."""

    seed: int = 0
    entities: int = 300
    attributes: int = 8
    """How many of the 8 attributes each person has (the first N)."""
    eval_fraction: float = 0.2
    """Share of people held out: their meta-questions are eval, never trained on (their descriptions are in
    the corpus, so the policy may know them)."""
    descriptions: int = 16
    """Corpus descriptions per person."""
    min_facts: int = 2
    max_facts: int = 8
    """Each description states between min_facts and max_facts of the person's attributes (uniform)."""
    error_rate: float = 0.15
    """Share of stated facts that carry a wrong value."""
    ordered: bool = True
    """Descriptions state facts in one fixed attribute order (omitting some), as a template would; False:
    random order, where a small policy soon repeats an attribute with two values (read as Unknown)."""


@dataclass(frozen=True)
class Person:
    name: str
    facts: dict[str, str]
    split: str


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def people(config: WorldConfig) -> list[Person]:
    rng = random.Random(f"people:{config.seed}")
    attrs = list(ATTRIBUTES)[: config.attributes]
    taken = {v.lower() for vocab, _ in ATTRIBUTES.values() for v in vocab}
    names: list[str] = []
    while len(names) < config.entities:
        name = f"{_name(rng, 2)} {_name(rng, rng.choice((1, 2)))}"
        if name not in names and not taken & set(name.lower().split()):
            names.append(name)
    n_eval = round(config.entities * config.eval_fraction)
    out = []
    for i, name in enumerate(names):
        facts = {a: rng.choice(ATTRIBUTES[a][0]) for a in attrs}
        out.append(Person(name, facts, "eval" if i >= config.entities - n_eval else "train"))
    return out


def sentence(person: str, attribute: str, value: str, phrasing: int = 0) -> str:
    return ATTRIBUTES[attribute][1][phrasing].format(e=person, v=value)


def _wrong(rng: random.Random, attribute: str, value: str) -> str:
    return rng.choice([v for v in ATTRIBUTES[attribute][0] if v != value])


def description(rng: random.Random, person: Person, config: WorldConfig) -> str:
    """Some of the person's facts in random phrasings, a share of them with a wrong value."""
    attrs = list(person.facts)
    n = rng.randint(min(config.min_facts, len(attrs)), min(config.max_facts, len(attrs)))
    chosen = rng.sample(attrs, n)
    said = []
    for a in sorted(chosen, key=attrs.index) if config.ordered else chosen:
        value = person.facts[a] if rng.random() >= config.error_rate else _wrong(rng, a, person.facts[a])
        said.append(sentence(person.name, a, value, rng.randrange(len(ATTRIBUTES[a][1]))))
    return " ".join(said)


def corpus(config: WorldConfig, persons: list[Person]) -> list[list[dict]]:
    """Chat dialogues (a question about a person, a description as the answer) for pretraining the policy."""
    rng = random.Random(f"corpus:{config.seed}")
    dialogues = []
    for p in persons:
        for _ in range(config.descriptions):
            prompt = rng.choice(PROMPTS).format(e=p.name)
            dialogues.append([{"role": "user", "content": prompt},
                              {"role": "assistant", "content": description(rng, p, config)}])
    rng.shuffle(dialogues)
    return dialogues


def question_id(person: Person) -> str:
    return "cw-" + person.name.lower().replace(" ", "-")


def dataset(config: WorldConfig, persons: list[Person]) -> list[dict]:
    """Meta-questions in the import format: per person, one true and one false statement per attribute."""
    rng = random.Random(f"statements:{config.seed}")
    records = []
    for p in persons:
        statements = []
        for a, v in p.facts.items():
            pair = [(sentence(p.name, a, v), True), (sentence(p.name, a, _wrong(rng, a, v)), False)]
            rng.shuffle(pair)
            statements += [{"statement": s, "answer": t} for s, t in pair]
        records.append({"question_id": question_id(p), "text": QUESTION.format(e=p.name), "domain": "closedworld",
                        "split": p.split, "source": f"closedworld-seed{config.seed}",
                        "proxy_questions": statements})
    return records


# -- reading claims back ---------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _pattern(phrasing: str) -> re.Pattern:
    body = re.escape(phrasing).replace(re.escape("{e}"), r"(?P<e>[A-Z][a-z]+ [A-Z][a-z]+)")
    return re.compile("^" + body.replace(re.escape("{v}"), r"(?P<v>[A-Za-z]+)") + "$")


_PATTERNS = [(a, _pattern(p)) for a, (_, phrasings) in ATTRIBUTES.items() for p in phrasings]
_VOCAB = {a: set(vocab) for a, (vocab, _) in ATTRIBUTES.items()}


def claims(text: str) -> list[tuple[str, str, str]]:
    """(person, attribute, value) for every sentence of `text` that is a well-formed statement of a fact."""
    out = []
    for s in _SENTENCE_END.split(" ".join(text.split())):
        for attribute, pattern in _PATTERNS:
            m = pattern.match(s)
            if m and m.group("v") in _VOCAB[attribute]:
                out.append((m.group("e"), attribute, m.group("v")))
                break
    return out


def decide(statement: str, response: str) -> bool | None:
    """The exact judge: True if the response states the statement's fact, False if it states another value
    for it, None (Unknown) if it states none or contradicts itself. A statement that is not a fact of this
    world is Unknown."""
    parsed = claims(statement)
    if len(parsed) != 1:
        return None
    person, attribute, value = parsed[0]
    said = {v for e, a, v in claims(response) if e == person and a == attribute}
    if len(said) != 1:
        return None
    return said == {value}


# -- files ----------------------------------------------------------------------------------------------
def write(config: WorldConfig, out: Path) -> dict[str, Path]:
    """world.json (config and facts), corpus.jsonl (pretraining dialogues), dataset.jsonl (import format)."""
    out.mkdir(parents=True, exist_ok=True)
    persons = people(config)
    files = {"world": out / "world.json", "corpus": out / "corpus.jsonl", "dataset": out / "dataset.jsonl"}
    files["world"].write_text(json.dumps({"config": dataclasses.asdict(config),
                                          "people": [dataclasses.asdict(p) for p in persons]}, indent=1))
    files["corpus"].write_text("".join(json.dumps({"messages": d}) + "\n" for d in corpus(config, persons)))
    files["dataset"].write_text("".join(json.dumps(r) + "\n" for r in dataset(config, persons)))
    return files


def load(path: Path) -> tuple[WorldConfig, list[Person]]:
    data = json.loads(Path(path).read_text())
    return WorldConfig(**data["config"]), [Person(**p) for p in data["people"]]
