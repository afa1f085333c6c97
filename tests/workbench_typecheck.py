"""The runtime type checker the test session applies to every annotated function of ``workbench``.

X
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
