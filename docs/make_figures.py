"""Regenerate the figures shown in the docs from the embedded default model (SmolLM2-135M-Instruct).

.venv/bin/python docs/make_figures.py
"""

from pathlib import Path

from workbench import load_model, run
from workbench.export import static_export, write_figure
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens

IMG = Path(__file__).parent / "img"
PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("[0, 9]", "[0, 5]")


def main() -> None:
    model = load_model("smollm2")
    observed = run(model, PROMPT, [LogitLens(), AttentionCapture()])
    lens, attention = observed["logit_lens"], observed["attention"]
    figures = {
        "logit_lens_top_tokens": lens.figure("top_tokens"),
        "logit_lens_targets": lens.figure("targets"),
        "attention_block_14": attention.figure("heads", block=14, hide_sink=True, hide_diagonal=True, renormalise=True),
        "attention_sink": attention.figure("sink"),
        "block_replacement": run(model, PROMPT, BlockReplacement(blocks=[21]))["block_replacement"].figure(),
        "attention_mask": run(model, PROMPT, AttentionMask(keys="9"))["attention_mask"].figure(),
        "patch": run(model, PROMPT, ActivationPatch(source=SOURCE, blocks=[6, 14, *range(21, 30)]))["patch"].figure(),
    }
    with static_export():
        for name, fig in figures.items():
            write_figure(fig, IMG / f"{name}.png", scale=1)


if __name__ == "__main__":
    main()
