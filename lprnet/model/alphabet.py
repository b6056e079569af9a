"""Character sets and label <-> index conversion.

An alphabet is an ordered string of characters whose last character is the CTC blank. This module does not
decode network outputs (see decode.py) and does not parse file names (see data.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from lprnet.errors import InputError

BLANK = "-"

# The published LPRNet_Pytorch order: 31 provinces, digits, 24 letters (no I, O), then I, O, and the blank.
CHINESE_68 = (
    "京沪津渝冀晋蒙辽吉黑苏浙皖闽赣鲁豫鄂湘粤桂琼川贵云藏陕甘青宁新"
    "0123456789ABCDEFGHJKLMNPQRSTUVWXYZIO" + BLANK
)
# The synthetic profile: digits and Latin letters without I and O, which plates avoid as they read as 1 and 0.
LATIN_35 = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ" + BLANK

ALPHABETS = {"chinese68": CHINESE_68, "latin": LATIN_35}


@dataclass(frozen=True)
class Alphabet:
    name: str
    chars: str

    @property
    def num_classes(self) -> int:
        return len(self.chars)

    @property
    def blank(self) -> int:
        return len(self.chars) - 1

    @property
    def symbols(self) -> str:
        """The characters a plate may contain (everything but the blank)."""
        return self.chars[:-1]

    def encode(self, text: str) -> list[int]:
        index = {c: i for i, c in enumerate(self.symbols)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise InputError(f"characters {''.join(unknown)!r} of {text!r} are not in alphabet {self.name!r}")
        return [index[c] for c in text]

    def decode(self, indices) -> str:
        return "".join(self.chars[i] for i in indices)


def get_alphabet(name: str) -> Alphabet:
    if name not in ALPHABETS:
        raise InputError(f"unknown alphabet {name!r}; valid names: {', '.join(sorted(ALPHABETS))}")
    return Alphabet(name, ALPHABETS[name])


def alphabet_for_classes(num_classes: int) -> Alphabet:
    """The one known alphabet with this class count (used for bare LPRNet_Pytorch state dicts)."""
    matches = [name for name, chars in ALPHABETS.items() if len(chars) == num_classes]
    if len(matches) != 1:
        raise InputError(f"no unique alphabet has {num_classes} classes; known: "
                         + ", ".join(f"{n} ({len(c)})" for n, c in sorted(ALPHABETS.items())))
    return get_alphabet(matches[0])
