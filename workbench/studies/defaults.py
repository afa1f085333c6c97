"""The random-number study's prompts, in one light module: commands use them as defaults without importing the
study (or torch) before their arguments are parsed."""

GENERATE_PROMPT = "Generate a random number between [0, 9]: "
STUDY_PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE_PROMPT = STUDY_PROMPT.replace("9]", "5]")  # the same prompt with the upper bound 5: the patching source
