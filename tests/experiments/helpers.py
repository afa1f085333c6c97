"""Rows of paraphrases × bounds for tiny models: several token lengths, each with a source prompt whose
bound differs (same length), so one description (templates) serves every row."""

from __future__ import annotations

PARAPHRASES = (
    "I'm generating a random number between [0, {b}]. The number is ",
    "Pick a number from 0 to {b}: ",
    "Choose any number between 0 and {b}. I choose ",
    "A random number in [0, {b}] is ",
)


def rows(bounds=("9", "8", "7"), source_offset: int = 4, paraphrases=PARAPHRASES) -> list[dict]:
    out = []
    for i, text in enumerate(paraphrases):
        for bound in bounds:
            source_bound = str(int(bound) - source_offset)
            out.append(
                {
                    "prompt": text.format(b=bound),
                    "source": text.format(b=source_bound),
                    "bound": bound,
                    "source_bound": source_bound,
                    "paraphrase": i,
                }
            )
    return out
