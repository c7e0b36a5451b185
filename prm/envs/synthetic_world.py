"""A procedurally generated multi-hop QA world: the embedded default task for retrieval RL.

One seed gives a small encyclopedia (people, cities, countries, companies, films with typed
relations), one short passage per entity, and questions shaped like the seven Search-R1
benchmarks (search_r1_stepsearch.md §1.7):

    single        one hop ("What is the birthplace of Varo Kelin?")          NQ / TriviaQA / PopQA
    bridge        two chained hops through a bridge entity                   HotpotQA
    comparison    the same attribute of two entities, compared               2WikiMultiHopQA
    compositional three or four chained hops                                 MuSiQue

Every question carries its gold chain (`Hop`: subject, relation, object, supporting passage), so
experts, step rewards and tests can check each step. Names are built from a small syllable set,
and a fraction of entities get a *confusable twin* (a vowel or suffix changed, or a shared family
name), so a query has to name its entity precisely to retrieve the right passage.

Passages are ~20 tokens (11-26) under the world tokenizer, so single, bridge and comparison
trajectories with top-3 documents fit the default policy's 256-token context (3-4 hop ones need
~370-430 tokens). Everything is a pure function of `WorldConfig`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
from collections.abc import Iterable

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st")
_VOWELS = ("a", "e", "i", "o", "u")
_CITY_SUFFIXES = ("by", "ton", "ford", "holm", "wick")
_COUNTRY_SUFFIXES = ("ia", "land", "ora")
_COMPANY_SUFFIXES = ("Group", "Works", "Labs", "Motors")
_FILM_ADJECTIVES = ("Silent", "Golden", "Last", "Broken", "Hidden", "Red", "Distant", "Frozen")
_FILM_NOUNS = ("River", "Crown", "Garden", "Mirror", "Harbor", "Letter", "Storm", "Bridge")

KINDS = ("person", "city", "country", "company", "film")

# relation -> (subject kind, object kind or "year", noun phrase used in questions)
RELATIONS: dict[str, tuple[str, str, str]] = {
    "born_in": ("person", "city", "the birthplace of {}"),
    "works_for": ("person", "company", "the employer of {}"),
    "birth_year": ("person", "year", "the birth year of {}"),
    "country": ("city", "country", "the country of {}"),
    "capital": ("country", "city", "the capital of {}"),
    "headquarters": ("company", "city", "the headquarters of {}"),
    "founder": ("company", "person", "the founder of {}"),
    "founded_year": ("company", "year", "the founding year of {}"),
    "director": ("film", "person", "the director of {}"),
    "release_year": ("film", "year", "the release year of {}"),
}

# Comparison questions: (kind, year relation, template); the earlier year is the answer.
_COMPARISONS = (
    ("person", "birth_year", "Who was born first, {} or {}?"),
    ("company", "founded_year", "Which company was founded first, {} or {}?"),
    ("film", "release_year", "Which film was released first, {} or {}?"),
)

QUESTION_TYPES = ("single", "bridge", "comparison", "compositional")
# "rl": the share `WorldConfig.rl_fraction` of the train questions, kept out of SFT.
SPLITS = ("train", "rl", "dev", "test")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Size and difficulty knobs. All defaults keep the world small enough for a CPU policy."""

    seed: int = 0
    num_persons: int = 120
    num_cities: int = 40
    num_countries: int = 8
    num_companies: int = 30
    num_films: int = 40
    # Fraction of persons/cities/companies that get a twin differing in one syllable.
    confusable_rate: float = 0.3
    # Number of distinct family names; fewer means more persons share one.
    num_family_names: int = 40
    # Questions generated per type (duplicates by text are dropped, so the final count can be lower).
    questions_per_type: tuple[tuple[str, int], ...] = (
        ("single", 600),
        ("bridge", 600),
        ("comparison", 300),
        ("compositional", 300),
    )
    max_hops: int = 4
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, dev, test
    # Share of the train questions moved to split "rl": held back from the SFT demonstrations,
    # so RL trains on questions the warm start never saw (it memorises the ones it did).
    rl_fraction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.confusable_rate <= 1.0:
            raise ValueError(f"confusable_rate must be in [0, 1], got {self.confusable_rate}.")
        if self.max_hops not in (3, 4):
            raise ValueError(
                f"max_hops must be 3 or 4 (compositional questions), got {self.max_hops}."
            )
        if abs(sum(self.split_fractions) - 1.0) > 1e-9 or min(self.split_fractions) < 0:
            raise ValueError(
                f"split_fractions must be >= 0 and sum to 1, got {self.split_fractions}."
            )
        if not 0.0 <= self.rl_fraction < 1.0:
            raise ValueError(f"rl_fraction must be in [0, 1), got {self.rl_fraction}.")
        unknown = {t for t, _ in self.questions_per_type} - set(QUESTION_TYPES)
        if unknown:
            raise ValueError(f"Unknown question types {sorted(unknown)}; valid: {QUESTION_TYPES}.")
        minimum = {
            "num_cities": 2,
            "num_countries": 2,
            "num_persons": 2,
            "num_companies": 2,
            "num_films": 2,
            "num_family_names": 1,
        }
        for field, low in minimum.items():
            if getattr(self, field) < low:
                raise ValueError(f"{field} must be >= {low}, got {getattr(self, field)}.")


@dataclasses.dataclass(frozen=True)
class Entity:
    id: str  # also the id of the entity's passage
    kind: str
    name: str
    aliases: tuple[str, ...]
    facts: dict[str, str | int]  # relation -> object entity id, or a year


@dataclasses.dataclass(frozen=True)
class Hop:
    """One reasoning step: `relation(subject) = object`, stated in passage `doc_id`."""

    subject: str  # entity id
    relation: str
    object: str | int  # entity id, or a year
    doc_id: str


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: tuple[str, ...]  # gold answer first, then aliases
    qtype: str
    hops: tuple[Hop, ...]
    split: str

    @property
    def gold_doc_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h.doc_id for h in self.hops))

    @property
    def bridge_entities(self) -> tuple[str, ...]:
        """Entity ids reached by every hop but the last (empty for single and comparison)."""
        if self.qtype == "comparison":
            return ()
        return tuple(str(h.object) for h in self.hops[:-1])


class World:
    """Entities, passages and split questions generated from a `WorldConfig`."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        rng = random.Random(config.seed)
        self.entities: dict[str, Entity] = _generate_entities(config, rng)
        self.passages: dict[str, tuple[str, str]] = {
            e.id: (e.name, _passage_text(e, self.entities)) for e in self.entities.values()
        }
        self.questions: list[Question] = _generate_questions(config, self.entities, rng)

    def name(self, value: str | int) -> str:
        """Surface form of a hop object: the entity name, or the year as text."""
        return str(value) if isinstance(value, int) else self.entities[value].name

    def split(self, split: str) -> list[Question]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        return [q for q in self.questions if q.split == split]

    def corpus_rows(self) -> list[dict[str, str]]:
        """Search-R1 collection rows: `{"id", "contents": '"Title"\\ntext'}` (§1.6)."""
        return [
            {"id": doc_id, "contents": f'"{title}"\n{text}'}
            for doc_id, (title, text) in self.passages.items()
        ]

    def question_rows(self, split: str) -> list[dict]:
        """Search-R1 / FlashRAG question rows (§1.7): id, question, golden_answers, data_source,
        plus the gold chain under `metadata` for step-level rewards and analysis."""
        return [
            {
                "id": q.id,
                "question": q.text,
                "golden_answers": list(q.answers),
                "data_source": f"synthetic_{q.qtype}",
                "metadata": {
                    "split": q.split,
                    "gold_doc_ids": list(q.gold_doc_ids),
                    "hops": [
                        {
                            "subject": self.entities[h.subject].name,
                            "relation": h.relation,
                            "object": self.name(h.object),
                            "doc_id": h.doc_id,
                        }
                        for h in q.hops
                    ],
                },
            }
            for q in self.split(split)
        ]

    def texts(self) -> Iterable[str]:
        """Every string the world can show a policy (passages and questions), for tokenizers."""
        for row in self.corpus_rows():
            yield row["contents"]
        for q in self.questions:
            yield q.text
            yield from q.answers


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(_syllable(rng) for _ in range(syllables)).capitalize()


def _twin(word: str, rng: random.Random) -> str:
    """`word` with its last vowel changed: 'Kelin' -> 'Kelan' (a confusable name)."""
    vowel_positions = [i for i, c in enumerate(word) if c in "aeiou"]
    i = vowel_positions[-1]
    new = rng.choice([v for v in _VOWELS if v != word[i]])
    return word[:i] + new + word[i + 1 :]


def _unique_names(
    field: str, count: int, make, twin, confusable_rate: float, rng: random.Random
) -> list[str]:
    """`count` distinct names; about `confusable_rate` of them are twins of an earlier name.

    Twins of one name are few (a vowel or a suffix changed), so after a run of collisions the
    next name is drawn fresh; a count no draw can reach raises instead of looping forever.
    """
    names: list[str] = []
    seen: set[str] = set()
    collisions = 0  # in a row
    while len(names) < count:
        if names and collisions < 20 and rng.random() < confusable_rate:
            candidate = twin(rng.choice(names), rng)
        else:
            candidate = make(rng)
        if candidate in seen:
            collisions += 1
            if collisions > 1000:
                raise ValueError(
                    f"Cannot draw {count} distinct names for {field} from the syllable set; "
                    f"lower {field}."
                )
            continue
        collisions = 0
        seen.add(candidate)
        names.append(candidate)
    return names


def _generate_entities(config: WorldConfig, rng: random.Random) -> dict[str, Entity]:
    c = config
    families = _unique_names(
        "num_family_names", c.num_family_names, lambda r: _word(r, 2), _twin, 0.0, rng
    )

    def person_name(r: random.Random) -> str:
        return f"{_word(r, 2)} {r.choice(families)}"

    def person_twin(name: str, r: random.Random) -> str:
        given, family = name.split(" ")
        return f"{_twin(given, r)} {family}"

    def city_name(r: random.Random) -> str:
        return _word(r, 2) + r.choice(_CITY_SUFFIXES)

    def city_twin(name: str, r: random.Random) -> str:
        stem = next(name[: -len(s)] for s in _CITY_SUFFIXES if name.endswith(s))
        return stem + r.choice([s for s in _CITY_SUFFIXES if not name.endswith(s)])

    def company_name(r: random.Random) -> str:
        return f"{_word(r, 2)} {r.choice(_COMPANY_SUFFIXES)}"

    def company_twin(name: str, r: random.Random) -> str:
        stem, suffix = name.split(" ")
        return f"{stem} {r.choice([s for s in _COMPANY_SUFFIXES if s != suffix])}"

    films = [f"{a} {n}" for a in _FILM_ADJECTIVES for n in _FILM_NOUNS]
    if c.num_films > len(films):
        raise ValueError(f"num_films must be <= {len(films)}, got {c.num_films}.")
    rate = c.confusable_rate
    names = {
        "person": _unique_names("num_persons", c.num_persons, person_name, person_twin, rate, rng),
        "city": _unique_names("num_cities", c.num_cities, city_name, city_twin, rate, rng),
        "country": _unique_names(
            "num_countries",
            c.num_countries,
            lambda r: _word(r, 2) + r.choice(_COUNTRY_SUFFIXES),
            _twin,
            0.0,
            rng,
        ),
        "company": _unique_names(
            "num_companies", c.num_companies, company_name, company_twin, rate, rng
        ),
        "film": rng.sample(films, c.num_films),
    }
    ids = {kind: [f"{kind}_{i:03d}" for i in range(len(names[kind]))] for kind in KINDS}

    # Each country gets at least one city (its capital); the rest are spread at random.
    city_country = {cid: ids["country"][i % c.num_countries] for i, cid in enumerate(ids["city"])}
    capital = {country: ids["city"][i] for i, country in enumerate(ids["country"])}
    facts: dict[str, dict[str, str | int]] = {}
    for pid in ids["person"]:
        facts[pid] = {
            "born_in": rng.choice(ids["city"]),
            "works_for": rng.choice(ids["company"]),
            "birth_year": rng.randrange(1900, 2000),
        }
    for cid in ids["city"]:
        facts[cid] = {"country": city_country[cid]}
    for country in ids["country"]:
        facts[country] = {"capital": capital[country]}
    for mid in ids["company"]:
        facts[mid] = {
            "founder": rng.choice(ids["person"]),
            "headquarters": rng.choice(ids["city"]),
            "founded_year": rng.randrange(1800, 2000),
        }
    for fid in ids["film"]:
        facts[fid] = {
            "director": rng.choice(ids["person"]),
            "release_year": rng.randrange(1930, 2020),
        }

    short = {
        eid: _short_name(kind, name) for kind in KINDS for eid, name in zip(ids[kind], names[kind])
    }
    # A short form is an alias only when no other entity shares it (twins often do).
    short_counts = collections.Counter(short.values())
    all_names = {name for kind in KINDS for name in names[kind]}
    entities = {}
    for kind in KINDS:
        for eid, name in zip(ids[kind], names[kind]):
            alias = short[eid]
            unique = alias is not None and short_counts[alias] == 1 and alias not in all_names
            aliases = (name, alias) if unique else (name,)
            entities[eid] = Entity(eid, kind, name, aliases, facts[eid])
    return entities


def _short_name(kind: str, name: str) -> str | None:
    if kind == "person":
        given, family = name.split(" ")
        return f"{given[0]}. {family}"
    if kind == "company":
        return name.split(" ")[0]
    return None


def _passage_text(entity: Entity, entities: dict[str, Entity]) -> str:
    f, n = entity.facts, entity.name

    def name(key: str) -> str:
        return entities[f[key]].name

    if entity.kind == "person":
        return (
            f"{n} was born in {name('born_in')} in {f['birth_year']} "
            f"and works for {name('works_for')}."
        )
    if entity.kind == "city":
        return f"{n} is a city in {name('country')}."
    if entity.kind == "country":
        return f"{n} is a country. Its capital is {name('capital')}."
    if entity.kind == "company":
        return (
            f"{n} was founded by {name('founder')} in {f['founded_year']}. "
            f"It is based in {name('headquarters')}."
        )
    return f"{n} is a film directed by {name('director')}, released in {f['release_year']}."


def _answers(value: str | int, entities: dict[str, Entity]) -> tuple[str, ...]:
    return (str(value),) if isinstance(value, int) else entities[value].aliases


def _walk(start: str, relations: list[str], entities: dict[str, Entity]) -> tuple[Hop, ...]:
    hops, subject = [], start
    for rel in relations:
        obj = entities[subject].facts[rel]
        hops.append(Hop(subject, rel, obj, subject))
        subject = obj
    return tuple(hops)


@functools.cache
def _relation_paths(length: int) -> tuple[tuple[str, ...], ...]:
    """All relation sequences of `length` whose kinds chain (a year ends a path)."""
    paths = [[r] for r in RELATIONS]
    for _ in range(length - 1):
        paths = [
            p + [r]
            for p in paths
            for r, (subject_kind, _, _) in RELATIONS.items()
            if RELATIONS[p[-1]][1] == subject_kind
        ]
    # A hop straight back to where it came from (capital of the country of X) is trivial.
    return tuple(
        tuple(p)
        for p in paths
        if not any({a, b} == {"country", "capital"} for a, b in zip(p, p[1:]))
    )


def _chain_question(hops: tuple[Hop, ...], entities: dict[str, Entity]) -> str:
    phrase = entities[hops[0].subject].name
    for hop in hops:
        phrase = RELATIONS[hop.relation][2].format(phrase)
    return f"What is {phrase}?"


def _generate_questions(
    config: WorldConfig, entities: dict[str, Entity], rng: random.Random
) -> list[Question]:
    by_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    for e in entities.values():
        by_kind[e.kind].append(e.id)
    drafts: dict[str, tuple[str, tuple[str, ...], tuple[Hop, ...]]] = {}
    for qtype, count in config.questions_per_type:
        for _ in range(count):
            if qtype == "comparison":
                kind, rel, template = rng.choice(_COMPARISONS)
                a, b = rng.sample(by_kind[kind], 2)
                ya, yb = entities[a].facts[rel], entities[b].facts[rel]
                if ya == yb:
                    continue
                text = template.format(entities[a].name, entities[b].name)
                hops = (Hop(a, rel, ya, a), Hop(b, rel, yb, b))
                answers = entities[a if ya < yb else b].aliases
            else:
                length = {"single": 1, "bridge": 2}.get(qtype) or rng.randint(3, config.max_hops)
                relations = rng.choice(_relation_paths(length))
                start = rng.choice(by_kind[RELATIONS[relations[0]][0]])
                hops = _walk(start, relations, entities)
                text = _chain_question(hops, entities)
                answers = _answers(hops[-1].object, entities)
            drafts.setdefault(text, (qtype, answers, hops))
    texts = list(drafts)
    rng.shuffle(texts)
    n_train = round(config.split_fractions[0] * len(texts))
    n_dev = round(config.split_fractions[1] * len(texts))
    n_sft = n_train - round(config.rl_fraction * n_train)
    questions = []
    for i, text in enumerate(texts):
        if i < n_train:
            split = "train" if i < n_sft else "rl"
        else:
            split = "dev" if i < n_train + n_dev else "test"
        qtype, answers, hops = drafts[text]
        questions.append(Question(f"synthetic-{i:05d}", text, answers, qtype, hops, split))
    return questions
