"""Generate one API reference page per public module of ``workbench`` at docs build time (mkdocs-gen-files).

Modules are found on disk, so a new module gets its page at the next build with nothing to edit; a module
or package whose name starts with an underscore is private and skipped, and so is ``workbench.cli`` (its
public interface is the command line, documented by ``--help`` and the guide pages). A package's page
shows its docstring, a table of the names it exports (``__all__``) linked to where each is documented,
and its modules; each name is documented once, on the page of the module that defines it. literate-nav
turns the ``SUMMARY.md`` written here into the "API reference" section of the navigation.
"""

import sys
from pathlib import Path

import griffe
import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).parent))
from sphinx_roles import to_code  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "workbench"
SKIP = ("workbench.cli",)


def public_modules(root: Path = ROOT, package: str = PACKAGE) -> list[str]:
    """Dotted names of every public module and package under ``package``, parents before children."""
    names = []
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if any(part.startswith("_") for part in parts) or any(name == s or name.startswith(s + ".") for s in SKIP):
            continue
        names.append(name)
    return sorted(names, key=lambda n: n.split("."))


def page_path(name: str) -> str:
    """``workbench.probes.base`` → ``api/workbench.probes.base.md``: the URL is the import path."""
    return f"api/{name}.md"


def module_page(name: str, module: griffe.Module, modules: list[str]) -> str:
    if not module.is_init_module:
        return f"# `{name}`\n\n::: {name}\n"
    exported = (
        module.exports
        if module.exports is not None
        else [n for n, m in module.members.items() if not n.startswith("_") and not m.is_module]
    )
    targets = {n: _target(n, module.members[n]) for n in exported if n in module.members}
    # documented here: what the package defines itself, and what it re-exports from a private module
    own = [n for n, t in targets.items() if t is not None and (t.parent is module or _is_private(t))]
    rows = [_row(n, module.members[n], targets[n]) for n in targets if n not in own]
    lines = [f"# `{name}`\n", f"::: {name}", "    options:", f"      members: {own or False}", ""]
    if rows:
        lines += ["## Exported names\n", "| name | what |", "| --- | --- |", *rows, ""]
    children = [m for m in modules if m != name and m.rsplit(".", 1)[0] == name]
    if children:
        lines += [
            "## Modules\n",
            *(f"- [`{c}`][{c}]: {_summary(module.modules[c.rsplit('.', 1)[1]])}" for c in children),
            "",
        ]
    return "\n".join(lines)


def _target(name: str, member: griffe.Object | griffe.Alias) -> griffe.Object | None:
    """What an exported name is at run time, ``None`` for another package's. ``from workbench.run import run``
    in a package makes ``run`` the function, not the submodule of the same name."""
    try:
        target = member.final_target if member.is_alias else member
        if target.is_module and name in target.members:
            inner = target.members[name]
            target = inner.final_target if inner.is_alias else inner
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return target


def _is_private(target: griffe.Object) -> bool:
    """Defined in a module that has no page (a name part starting with an underscore)."""
    return any(part.startswith("_") for part in target.module.path.split("."))


def _row(name: str, member: griffe.Object | griffe.Alias, target: griffe.Object | None) -> str:
    if target is None:
        return f"| `{name}` | `{member.target_path}` |"
    return f"| [`{name}`][{target.path}] | {_summary(target)} |"


def _summary(obj: griffe.Object) -> str:
    """The first paragraph of a docstring, on one line, roles shown as code."""
    text = obj.docstring.value.split("\n\n")[0] if obj.docstring else ""
    return to_code(" ".join(text.split())).replace("|", "\\|")


def _nav_keys(name: str) -> tuple[str, ...]:
    """``workbench.probes.base`` → ``("workbench.probes", "workbench.probes.base")``: a subpackage is a section
    (whose own page is its index) under the top level, titled by import paths."""
    parts = name.split(".")
    return tuple(".".join(parts[: i + 1]) for i in range(1, len(parts))) or (name,)


def _source(name: str) -> str:
    path = ROOT / Path(*name.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(ROOT))


def main() -> None:
    package = griffe.load(PACKAGE, search_paths=[str(ROOT)], resolve_aliases=True, resolve_external=False)
    modules = public_modules()
    nav = mkdocs_gen_files.Nav()
    for name in modules:
        module = package if name == PACKAGE else package[name.split(".", 1)[1]]
        with mkdocs_gen_files.open(page_path(name), "w") as page:
            page.write(module_page(name, module, modules))
        mkdocs_gen_files.set_edit_path(page_path(name), _source(name))
        nav[_nav_keys(name)] = Path(page_path(name)).name
    with mkdocs_gen_files.open("api/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


main()
