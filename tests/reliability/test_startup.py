"""The command line answers --help and usage errors before the heavy libraries load, and the lazy package
namespaces give the same names as before."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "transformer_lens", "plotly")
PROBE = """
import json, sys
from workbench.cli import main
try:
    main({argv!r})
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["attribute", "--bogus"], ["sweep", "--help"], ["study", "--help"]])
def test_help_and_usage_errors_load_no_heavy_library(argv):
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)], capture_output=True, text=True, timeout=120
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], report
    assert report["code"] in (0, 2)


def test_lazy_namespaces_resolve_every_exported_name():
    import workbench
    import workbench.run
    import workbench.sampling
    import workbench.sampling.generate
    from workbench import run
    from workbench.run import run as run_function
    from workbench.sampling import DEFAULT_PROMPT, generate
    from workbench.sampling.generate import generate as generate_function
    from workbench.studies.defaults import STUDY_PROMPT

    assert run is run_function and workbench.run is run_function  # the submodule does not shadow the function
    assert generate is generate_function
    for package in (workbench, workbench.sampling):
        assert all(getattr(package, name) is not None for name in package.__all__)
        assert set(package.__all__) <= set(dir(package))
    assert DEFAULT_PROMPT == STUDY_PROMPT  # the CLI's default audit prompt is read from the light module
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        workbench.nothing  # noqa: B018
