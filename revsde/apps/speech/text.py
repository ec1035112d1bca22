"""English sentences for the synthetic speech corpus (``speech_data``): a fixed list plus a generator
that fills grammatical templates from word lists, deterministic by seed.

The test split never shares a sentence with the training split, by construction: the test-only
nouns, names and templates (``HELD_OUT_*``) never appear in a training sentence, and every test
sentence's noun and name slots are filled from the held-out words only. Every template has at least
one such slot, so no generated test sentence can equal a training one; the fixed lists are disjoint
by hand (and ``sentences`` checks it).

    sentences(split, n, seed=0) -> list[str]   the first n distinct sentences of a split's stream
"""
from __future__ import annotations

import functools

import numpy as np

SPLITS = ("train", "test")

#: hand-written sentences, spoken before any generated one (train first 24, test last 8)
FIXED_SENTENCES = (
    "The early train was late again this morning.",
    "A cup of warm tea helps on a rainy day.",
    "She kept the old letters in a wooden box.",
    "Turn left at the bakery and walk past the church.",
    "The children counted the stars until midnight.",
    "Our neighbour grows tomatoes on the balcony.",
    "Please close the window before the storm arrives.",
    "He forgot his umbrella on the bus to work.",
    "The river was wide and the water was cold.",
    "We painted the fence white last summer.",
    "A small dog barked at the passing cars.",
    "The museum opens at ten on weekdays.",
    "My brother fixed the broken bicycle in an hour.",
    "The soup needs a little more salt and pepper.",
    "They sold fresh bread at the corner shop.",
    "Nobody heard the phone ringing in the hall.",
    "The meeting has been moved to Thursday afternoon.",
    "Bright lights flickered along the harbour wall.",
    "Keep the receipt in case the shoes do not fit.",
    "The wind blew the hat right off his head.",
    "Four boats sailed slowly into the bay.",
    "Read the instructions twice before you begin.",
    "The garden smells of roses after the rain.",
    "Dinner will be ready in about twenty minutes.",
)
FIXED_TEST_SENTENCES = (
    "The lighthouse keeper climbed the spiral stairs at dusk.",
    "Fresh snow covered the quiet village overnight.",
    "Her grandfather played the accordion at the wedding.",
    "Two owls watched the orchard from the barn roof.",
    "The parcel from Lisbon arrived three days early.",
    "A violinist practised scales beside the fountain.",
    "Thick fog delayed every flight out of the airport.",
    "The librarian stamped the books with a loud thud.",
)

NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo",
         "Maria", "Noah", "Olivia", "Peter", "Rosa", "Sam", "Tom", "Vera", "Yusuf", "Zoe", "Ingrid", "Marcus")
AGENTS = ("farmer", "teacher", "doctor", "pilot", "baker", "driver", "child", "neighbour", "student", "painter",
          "sailor", "singer", "nurse", "waiter", "horse", "puppy", "captain", "clerk", "gardener", "fisherman",
          "porter", "dentist", "tailor", "jeweller", "shepherd", "goose")
THINGS = ("book", "letter", "box", "key", "lamp", "cup", "map", "bag", "basket", "coat", "chair", "table",
          "window", "boat", "bicycle", "ticket", "apple", "bottle", "hammer", "kettle", "candle", "ladder",
          "parcel", "rope", "wheel", "blanket", "camera", "umbrella", "envelope", "helmet", "trumpet", "lantern",
          "compass", "saddle")
IRREGULAR_PLURALS = {"child": "children", "fisherman": "fishermen", "goose": "geese", "box": "boxes",
                     "puppy": "puppies", "compass": "compasses"}

#: words and templates that only the test split uses
HELD_OUT_NAMES = ("Yusuf", "Zoe", "Ingrid", "Marcus")
HELD_OUT_AGENTS = ("porter", "dentist", "tailor", "jeweller", "shepherd", "goose")
HELD_OUT_THINGS = ("envelope", "helmet", "trumpet", "lantern", "compass", "saddle")
HELD_OUT_TEMPLATES = (10, 11)

PERSON_ADJECTIVES = ("old", "young", "tall", "quiet", "careful", "tired", "happy", "clever", "brave", "gentle",
                     "busy", "cheerful", "sleepy", "friendly")
THING_ADJECTIVES = ("old", "small", "bright", "heavy", "red", "green", "cold", "wooden", "shiny", "narrow",
                    "yellow", "broken", "new", "dusty")
TRANSITIVE = (("carried", "carry"), ("found", "find"), ("painted", "paint"), ("opened", "open"),
              ("lifted", "lift"), ("sold", "sell"), ("bought", "buy"), ("cleaned", "clean"), ("dropped", "drop"),
              ("repaired", "repair"), ("moved", "move"), ("hid", "hide"), ("borrowed", "borrow"),
              ("washed", "wash"), ("pushed", "push"), ("packed", "pack"), ("noticed", "notice"),
              ("wrapped", "wrap"), ("chose", "choose"), ("watched", "watch"))
INTRANSITIVE = ("laughed", "waited", "slept", "smiled", "shouted", "danced", "arrived", "left", "sang",
                "listened", "whistled", "stumbled", "hurried", "sighed")
ADVERBS = ("slowly", "quietly", "happily", "suddenly", "carefully", "again", "at last", "without a word",
           "for a while", "very loudly")
PLACES = ("in the kitchen", "near the station", "under the old bridge", "behind the school", "at the market",
          "on the hill", "by the river", "in the garden", "across the street", "inside the museum",
          "next to the library", "at the harbour", "in the attic", "on the platform")
TIMES = ("yesterday", "this morning", "last winter", "on Sunday", "after lunch", "before dawn", "every evening",
         "at noon", "last night", "on Friday")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")

#: ``{agent}`` the/a [adjective] agent or a name; ``{thing}`` a/the/my/her [adjective] thing (``{a_thing}``
#: always a/an); ``{name}`` a name (never twice in a sentence); ``{things}`` a number and a plural; verbs
#: ``{vt}`` past, ``{vt_base}`` base form, ``{vi}`` past
TEMPLATES = (
    "{agent} {vt} {thing} {place}.",
    "{time}, {agent} {vt} {thing}.",
    "Did {agent} {vt_base} {thing} {time}?",
    "{name} said that {agent} {vi} {adverb}.",
    "Please {vt_base} {thing} {place}.",
    "{agent} {vi} because {agent} {vt} {thing}.",
    "There was {a_thing} {place}, and {name} {vt} it {time}.",
    "{name} and {name} {vt} {things} {time}.",
    "Why did {agent} {vt_base} {thing} {place}?",
    "{agent} {vi} {adverb} while {name} {vt} {thing}.",
    "When {agent} {vi}, {name} {vt} {thing} {place}.",
    "{time}, {name} asked {agent} to {vt_base} {things}.",
)


def _plural(noun: str) -> str:
    return IRREGULAR_PLURALS.get(noun, noun + "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, words):
    return words[int(rng.integers(len(words)))]


def _vocabulary(split: str) -> dict[str, tuple]:
    """The nouns, names and templates a split draws from: the held-out ones for ``"test"``, the rest
    for ``"train"``; the other word lists are shared."""
    if split == "test":
        return {"names": HELD_OUT_NAMES, "agents": HELD_OUT_AGENTS, "things": HELD_OUT_THINGS,
                "templates": tuple(range(len(TEMPLATES)))}
    if split == "train":
        return {"names": tuple(n for n in NAMES if n not in HELD_OUT_NAMES),
                "agents": tuple(a for a in AGENTS if a not in HELD_OUT_AGENTS),
                "things": tuple(t for t in THINGS if t not in HELD_OUT_THINGS),
                "templates": tuple(i for i in range(len(TEMPLATES)) if i not in HELD_OUT_TEMPLATES)}
    raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")


def _fill(template: str, vocab: dict, rng: np.random.Generator) -> str:
    used = set()

    def name():
        name = _pick(rng, [n for n in vocab["names"] if n not in used])
        used.add(name)
        return name

    def agent():
        if rng.random() < 0.25:
            return name()
        noun = _pick(rng, vocab["agents"])
        words = [_pick(rng, PERSON_ADJECTIVES), noun] if rng.random() < 0.5 else [noun]
        return ("the " if rng.random() < 0.7 else _article(words[0]) + " ") + " ".join(words)

    def thing(determiners=("the", "my", "her", "his", "our", "a")):
        noun = _pick(rng, vocab["things"])
        words = [_pick(rng, THING_ADJECTIVES), noun] if rng.random() < 0.6 else [noun]
        det = _pick(rng, determiners)
        return f"{_article(words[0]) if det == 'a' else det} {' '.join(words)}"

    verb = _pick(rng, TRANSITIVE)
    slots = {"agent": agent, "thing": thing, "a_thing": lambda: thing(("a",)), "name": name,
             "things": lambda: f"{_pick(rng, NUMBERS)} {_plural(_pick(rng, vocab['things']))}",
             "vt": lambda: verb[0], "vt_base": lambda: verb[1], "vi": lambda: _pick(rng, INTRANSITIVE),
             "adverb": lambda: _pick(rng, ADVERBS), "place": lambda: _pick(rng, PLACES),
             "time": lambda: _pick(rng, TIMES)}
    parts, out = template.split("{"), []
    out.append(parts[0])
    for part in parts[1:]:
        slot, rest = part.split("}", 1)
        out.append(slots[slot]() + rest)
    text = "".join(out)
    return text[0].upper() + text[1:]


@functools.lru_cache(maxsize=8)
def _stream(split: str, seed: int, n: int) -> tuple[str, ...]:
    vocab = _vocabulary(split)
    fixed = FIXED_TEST_SENTENCES if split == "test" else FIXED_SENTENCES
    out, seen = list(fixed[:n]), set(fixed)
    rng = np.random.default_rng([int(seed), SPLITS.index(split), 0x5E47])
    misses = 0
    while len(out) < n:
        text = _fill(TEMPLATES[_pick(rng, vocab["templates"])], vocab, rng)
        if text in seen:
            misses += 1
            if misses > 100 * n:
                raise ValueError(f"could not compose {n} distinct {split} sentences")
            continue
        seen.add(text)
        out.append(text)
    return tuple(out)


def sentences(split: str, n: int, seed: int = 0) -> list[str]:
    """The first ``n`` distinct sentences of ``split``'s stream: its fixed sentences, then generated
    ones. A prefix of a longer request, so a corpus can grow without changing its first utterances."""
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be a non-negative integer (got {n!r})")
    if set(FIXED_SENTENCES) & set(FIXED_TEST_SENTENCES):
        raise AssertionError("FIXED_SENTENCES and FIXED_TEST_SENTENCES overlap")
    return list(_stream(split, int(seed), n))
