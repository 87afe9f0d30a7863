"""The reference world's hand-written lexicon: every caption in seven languages comes from these words.

A translation is a fact, so each entry here was written to be what a native speaker would say, with the
grammar it needs (gender agreement of articles and adjectives in Spanish, French, Italian, German and Dutch;
adjective order per language). "pizza" is the same word in every language: the paper's keyword effect.
"""

from __future__ import annotations

from dataclasses import dataclass

COLOURS = ("red", "green", "blue", "yellow", "white")
SHAPES = ("circle", "square", "triangle", "pizza")
SIZES = ("small", "big")
POSITIONS = ("left", "middle", "right")

#: the concept spelled identically in every language (the paper's "pizza" effect)
SHARED_WORD = "pizza"


@dataclass(frozen=True)
class Language:
    """One language of the world: its words and how a caption is put together."""

    code: str
    name: str
    # shape -> (noun, grammatical gender: "m", "f" or "n"; "-" for languages without gender)
    shapes: dict[str, tuple[str, str]]
    # colour -> {gender: adjective form}
    colours: dict[str, dict[str, str]]
    sizes: dict[str, dict[str, str]]
    articles: dict[str, str]
    positions: dict[str, str]
    # field order of the noun phrase, e.g. ("article", "size", "colour", "shape")
    order: tuple[str, ...]

    def caption(self, colour: str, shape: str, size: str, position: str) -> str:
        """The caption of one scene in this language."""
        noun, gender = self.shapes[shape]
        words = {
            "article": self.articles.get(gender, ""),
            "size": self.sizes[size][gender],
            "colour": self.colours[colour][gender],
            "shape": noun,
        }
        phrase = " ".join(words[field] for field in self.order if words[field])
        return f"{phrase} {self.positions[position]}"


def _same(word: str, genders: str) -> dict[str, str]:
    return dict.fromkeys(genders, word)


EN = Language(
    code="en",
    name="English",
    shapes={
        "circle": ("circle", "-"),
        "square": ("square", "-"),
        "triangle": ("triangle", "-"),
        "pizza": ("pizza", "-"),
    },
    colours={c: _same(c, "-") for c in COLOURS},
    sizes={"small": _same("small", "-"), "big": _same("big", "-")},
    articles={"-": "a"},
    positions={"left": "on the left", "middle": "in the middle", "right": "on the right"},
    order=("article", "size", "colour", "shape"),
)

ES = Language(
    code="es",
    name="Spanish",
    shapes={
        "circle": ("círculo", "m"),
        "square": ("cuadrado", "m"),
        "triangle": ("triángulo", "m"),
        "pizza": ("pizza", "f"),
    },
    colours={
        "red": {"m": "rojo", "f": "roja"},
        "green": _same("verde", "mf"),
        "blue": _same("azul", "mf"),
        "yellow": {"m": "amarillo", "f": "amarilla"},
        "white": {"m": "blanco", "f": "blanca"},
    },
    sizes={"small": {"m": "pequeño", "f": "pequeña"}, "big": _same("grande", "mf")},
    articles={"m": "un", "f": "una"},
    positions={"left": "a la izquierda", "middle": "en el centro", "right": "a la derecha"},
    order=("article", "shape", "colour", "size"),
)

FR = Language(
    code="fr",
    name="French",
    shapes={
        "circle": ("cercle", "m"),
        "square": ("carré", "m"),
        "triangle": ("triangle", "m"),
        "pizza": ("pizza", "f"),
    },
    colours={
        "red": _same("rouge", "mf"),
        "green": {"m": "vert", "f": "verte"},
        "blue": {"m": "bleu", "f": "bleue"},
        "yellow": _same("jaune", "mf"),
        "white": {"m": "blanc", "f": "blanche"},
    },
    # petit and grand go before the noun in French
    sizes={"small": {"m": "petit", "f": "petite"}, "big": {"m": "grand", "f": "grande"}},
    articles={"m": "un", "f": "une"},
    positions={"left": "à gauche", "middle": "au centre", "right": "à droite"},
    order=("article", "size", "shape", "colour"),
)

IT = Language(
    code="it",
    name="Italian",
    shapes={
        "circle": ("cerchio", "m"),
        "square": ("quadrato", "m"),
        "triangle": ("triangolo", "m"),
        "pizza": ("pizza", "f"),
    },
    colours={
        "red": {"m": "rosso", "f": "rossa"},
        "green": _same("verde", "mf"),
        "blue": _same("blu", "mf"),
        "yellow": {"m": "giallo", "f": "gialla"},
        "white": {"m": "bianco", "f": "bianca"},
    },
    sizes={"small": {"m": "piccolo", "f": "piccola"}, "big": _same("grande", "mf")},
    articles={"m": "un", "f": "una"},
    positions={"left": "a sinistra", "middle": "al centro", "right": "a destra"},
    order=("article", "shape", "colour", "size"),
)

# German: indefinite article, nominative; strong adjective endings -er (m), -es (n), -e (f)
DE = Language(
    code="de",
    name="German",
    shapes={
        "circle": ("Kreis", "m"),
        "square": ("Quadrat", "n"),
        "triangle": ("Dreieck", "n"),
        "pizza": ("Pizza", "f"),
    },
    colours={
        "red": {"m": "roter", "n": "rotes", "f": "rote"},
        "green": {"m": "grüner", "n": "grünes", "f": "grüne"},
        "blue": {"m": "blauer", "n": "blaues", "f": "blaue"},
        "yellow": {"m": "gelber", "n": "gelbes", "f": "gelbe"},
        "white": {"m": "weißer", "n": "weißes", "f": "weiße"},
    },
    sizes={
        "small": {"m": "kleiner", "n": "kleines", "f": "kleine"},
        "big": {"m": "großer", "n": "großes", "f": "große"},
    },
    articles={"m": "ein", "n": "ein", "f": "eine"},
    positions={"left": "links", "middle": "in der Mitte", "right": "rechts"},
    order=("article", "size", "colour", "shape"),
)

# Finnish: no articles, no gender; adjectives precede the noun; position by adessive adverbs
FI = Language(
    code="fi",
    name="Finnish",
    shapes={
        "circle": ("ympyrä", "-"),
        "square": ("neliö", "-"),
        "triangle": ("kolmio", "-"),
        "pizza": ("pizza", "-"),
    },
    colours={
        "red": _same("punainen", "-"),
        "green": _same("vihreä", "-"),
        "blue": _same("sininen", "-"),
        "yellow": _same("keltainen", "-"),
        "white": _same("valkoinen", "-"),
    },
    sizes={"small": _same("pieni", "-"), "big": _same("iso", "-")},
    articles={},
    positions={"left": "vasemmalla", "middle": "keskellä", "right": "oikealla"},
    order=("size", "colour", "shape"),
)

# Dutch: "een" + adjective; de-words take -e, het-words (vierkant) take the bare form after "een"
NL = Language(
    code="nl",
    name="Dutch",
    shapes={
        "circle": ("cirkel", "m"),
        "square": ("vierkant", "n"),
        "triangle": ("driehoek", "m"),
        "pizza": ("pizza", "m"),
    },
    colours={
        "red": {"m": "rode", "n": "rood"},
        "green": {"m": "groene", "n": "groen"},
        "blue": {"m": "blauwe", "n": "blauw"},
        "yellow": {"m": "gele", "n": "geel"},
        "white": {"m": "witte", "n": "wit"},
    },
    sizes={"small": {"m": "kleine", "n": "klein"}, "big": {"m": "grote", "n": "groot"}},
    articles={"m": "een", "n": "een"},
    positions={"left": "links", "middle": "in het midden", "right": "rechts"},
    order=("article", "size", "colour", "shape"),
)

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (EN, ES, DE, FR, IT, FI, NL)}

DOMINANT = "en"
#: never in any training set: tests shared ignorance
HELD_OUT = ("nl",)
#: share of each language in the world's "web" corpus (as uneven as the web's)
FREQUENCIES: dict[str, float] = {
    "en": 0.60,
    "es": 0.14,
    "de": 0.12,
    "fr": 0.07,
    "it": 0.04,
    "fi": 0.03,
    "nl": 0.0,
}
