"""The runtime type checker the test session applies to every annotated function of ``workbench``.

pytest's ``--jaxtyping-packages=workbench,workbench_typecheck.typechecker`` (pyproject addopts): jaxtyping's
import hook wraps each function and dataclass with this beartype, so tensor shapes and dtypes are checked at
call time. PEP 484's numeric tower is on (an ``int`` is a valid ``float``), as every static checker reads it.
"""

import typer
from beartype import BeartypeConf, FrozenDict, beartype

# Typer's docs ask commands to annotate ``ctx: typer.Context``, but Typer passes an instance of the click Context
# it subclasses (its vendored one): check such a parameter against that base class.
_TYPER_CONTEXT_BASE = typer.Context.__mro__[1]

typechecker = beartype(
    conf=BeartypeConf(is_pep484_tower=True, hint_overrides=FrozenDict({typer.Context: _TYPER_CONTEXT_BASE}))
)


def unchecked(target):
    """``target`` (a function or a class) without the session's runtime type check: for the tests of the
    workbench's own validation of a wrongly typed argument, which the checker would otherwise reject first
    (a user without the checker gets the workbench's message, and that message is what such a test checks)."""
    import inspect

    if inspect.isclass(target):
        init = inspect.unwrap(target.__init__)

        def build(*args, **kwargs):
            obj = object.__new__(target)
            init(obj, *args, **kwargs)
            return obj

        return build
    return inspect.unwrap(target)
