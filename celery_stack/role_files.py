"""The capacity role's files, generated from the declaration of the inputs.

:data:`celery_stack.inputs.INPUTS` is the only place a ``capacity_*`` input
is declared.  This module renders from it:

- ``roles/capacity/defaults/main.yml`` (whole file; the comments are the
  declared descriptions);
- ``roles/capacity/meta/argument_specs.yml`` (whole file);
- the list of workload inputs in ``roles/capacity/vars/main.yml`` (between
  the ``BEGIN generated``/``END generated`` comments), from which
  ``tasks/main.yml`` builds the workload dict;
- the variables table of ``roles/capacity/README.md`` (between the same
  markers).

``python -m celery_stack.role_files --write`` rewrites them;
``python -m celery_stack.role_files`` (``--check``) lists the files that
differ and exits 1.  A unit test does the same check.  Standard library
only (the YAML is written by hand, in the repository's style).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable

from celery_stack.inputs import INPUTS, PREFIX, WORKLOAD, Input, PoolKey

ROOT = Path(__file__).resolve().parents[1]
ROLE = Path("roles") / "capacity"
DEFAULTS = ROLE / "defaults" / "main.yml"
ARGUMENT_SPECS = ROLE / "meta" / "argument_specs.yml"
VARS = ROLE / "vars" / "main.yml"
README = ROLE / "README.md"

COMMAND = "python -m celery_stack.role_files --write"
WORKLOAD_LIST = "__capacity_workload_inputs"  # the variable of vars/main.yml listing the workload inputs

_COMMENT_WIDTH = 79
_SPEC_WIDTH = 120  # argument_specs descriptions longer than this are folded (yamllint allows 160)

_SPEC_SHORT_DESCRIPTION = "Compute and check the celery-stack capacity plan"
_SPEC_DESCRIPTION = [
    "Sizes memory, PostgreSQL (PGTune), PgBouncer, Redis and the Celery pools of the host at once and fails, listing"
    " every problem, when the plan does not fit.",
    "Sets the fact capacity_plan consumed by the other roles. Never contacts the host.",
]

# --------------------------------------------------------------------------
# YAML scalars and blocks, in the style of the repository (yamllint --strict)
# --------------------------------------------------------------------------

_PLAIN_RE = re.compile(r"[A-Za-z0-9(][^\n]*")
_RESERVED_RE = re.compile(
    r"(?i:y|n|yes|no|true|false|on|off|null|~)$|[-+]?(\.?[0-9]|\.(inf|nan))|0[box]|[0-9_:.]*$"
)


def _wrap(text: str, width: int, first: str, then: str) -> list[str]:
    """``text`` wrapped at spaces only (a folded scalar reads each line break back as one space)."""
    return textwrap.wrap(
        text, width, initial_indent=first, subsequent_indent=then, break_long_words=False, break_on_hyphens=False
    )


def _plain_ok(text: str) -> bool:
    """True when ``text`` reads back as this string without quotes."""
    return (
        bool(_PLAIN_RE.fullmatch(text))
        and not _RESERVED_RE.match(text)
        and ": " not in text
        and " #" not in text
        and not text.endswith((":", " "))
    )


def scalar(value: Any) -> str:
    """One YAML scalar: null, true/false, a number or a (quoted if needed) string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _plain_ok(text):
        return text
    return "'" + text.replace("'", "''") + "'"


def flow(value: Any) -> str:
    """A value in YAML flow style, for the README: ``[{name: default, queues: [celery]}]``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(item) for item in value) + "]"
    return scalar(value)


def _block(key: str, value: Any, indent: int, wrap: int | None = None) -> list[str]:
    """``key: value`` in block style at ``indent``; long strings folded at ``wrap``."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = [f"{pad}{key}:"]
        for sub_key, sub_value in value.items():
            lines += _block(sub_key, sub_value, indent + 2, wrap)
        return lines
    if isinstance(value, (list, tuple)) and value:
        return [f"{pad}{key}:", *_sequence(value, indent + 2, wrap)]
    if isinstance(value, (list, tuple, dict)):
        return [f"{pad}{key}: {flow(value)}"]
    line = f"{pad}{key}: {scalar(value)}"
    if wrap is None or len(line) <= wrap or not isinstance(value, str):
        return [line]
    return [f"{pad}{key}: >-", *_wrap(value, wrap, pad + "  ", pad + "  ")]


def _sequence(items: Iterable[Any], indent: int, wrap: int | None = None) -> list[str]:
    """A block sequence at ``indent`` (mappings start on the dash line)."""
    pad = " " * indent
    lines: list[str] = []
    for item in items:
        if isinstance(item, dict) and item:
            body = [line for key, value in item.items() for line in _block(key, value, indent + 2, wrap)]
            lines += [f"{pad}- {body[0].lstrip()}", *body[1:]]
        elif wrap is not None and isinstance(item, str) and len(f"{pad}- {scalar(item)}") > wrap:
            lines += [f"{pad}- >-", *_wrap(item, wrap, pad + "  ", pad + "  ")]
        else:
            lines.append(f"{pad}- {scalar(item)}")
    return lines


def _comment(text: str, indent: str = "", width: int = _COMMENT_WIDTH) -> list[str]:
    """``text`` as wrapped ``#`` comment lines (continuations indented by ``indent``)."""
    return _wrap(text, width, "# " + indent, "# " + indent + ("  " if indent else ""))


# --------------------------------------------------------------------------
# What each file says about an input
# --------------------------------------------------------------------------


def _pool_key_default(item: PoolKey) -> str:
    """How the README and the comments show a pool key's default."""
    return "required" if item.required else f"default {flow(item.default)}"


def _readme_type(item: Input | PoolKey) -> str:
    """``int``, ``str (ssd, nvme, hdd)``, ``list of str``..."""
    text = item.type
    if item.elements:
        text += f" of {item.elements}"
    choices = getattr(item, "choices", ())
    if choices:
        text += " (" + ", ".join(str(choice) for choice in choices) + ")"
    return text


def _readme_description(item: Input) -> str:
    """The README description (pools point to the table of their keys)."""
    return f"{item.description} Keys: see the table below." if item.pool_keys else item.description


def _spec_description(item: Input) -> str:
    """The argument_specs description (pools list their keys)."""
    if not item.pool_keys:
        return item.description
    keys = ", ".join(f"{key.key} ({_pool_key_default(key)})" for key in item.pool_keys)
    return f"{item.description} Keys: {keys}; see options."


def _spec_option(item: Input) -> dict[str, Any]:
    """One entry of argument_specs ``options``."""
    option: dict[str, Any] = {"type": item.type}
    if item.elements:
        option["elements"] = item.elements
    if item.choices and item.default is not None:
        # Ansible checks choices on null values too: a null default (automatic) is checked by the plan instead.
        option["choices"] = list(item.choices)
    option["required"] = False
    option["default"] = item.default
    option["description"] = _spec_description(item)
    if item.pool_keys:
        option["options"] = {key.key: _spec_pool_key(key) for key in item.pool_keys}
    return option


def _spec_pool_key(item: PoolKey) -> dict[str, Any]:
    """One suboption of ``capacity_celery_pools`` (no default: the plan applies them)."""
    option: dict[str, Any] = {"type": item.type}
    if item.elements:
        option["elements"] = item.elements
    if item.required:
        option["required"] = True
    suffix = "" if item.required else f" Default: {flow(item.default)}."
    option["description"] = item.description + suffix
    return option


# --------------------------------------------------------------------------
# The files
# --------------------------------------------------------------------------


def defaults_yaml() -> str:
    """``roles/capacity/defaults/main.yml``."""
    lines = [
        "---",
        "# Inputs of the capacity plan (docs/capacity.md), generated from their",
        "# declaration (INPUTS in celery_stack/inputs.py): edit them there, then run",
        f"# `{COMMAND}`; a unit test fails when this",
        "# file differs.  null means \"automatic\"; every automatic rule is given next",
        "# to the variable and in docs/capacity.md.  Memory is in MB unless the name",
        "# says otherwise.",
    ]
    section = None
    for item in INPUTS:
        if item.section != section:
            section = item.section
            title = f"# --- {section} "
            lines += ["", title + "-" * (_COMMENT_WIDTH - len(title))]
        lines += _comment(item.description)
        if item.pool_keys:
            lines.append("# Keys of each pool:")
            for key in item.pool_keys:
                lines += _comment(f"{key.key} ({_pool_key_default(key)}): {key.description}", indent="  ")
        lines += _block(item.variable, item.default, 0)
    return "\n".join(lines) + "\n"


def argument_specs_yaml() -> str:
    """``roles/capacity/meta/argument_specs.yml``."""
    spec = {
        "argument_specs": {
            "main": {
                "short_description": _SPEC_SHORT_DESCRIPTION,
                "description": _SPEC_DESCRIPTION,
                "options": {item.variable: _spec_option(item) for item in INPUTS},
            }
        }
    }
    header = [
        "---",
        "# Generated from the declaration of the inputs (INPUTS in celery_stack/inputs.py):",
        f"# edit them there, then run `{COMMAND}`.",
    ]
    body = [line for key, value in spec.items() for line in _block(key, value, 0, _SPEC_WIDTH)]
    return "\n".join(header + body) + "\n"


def _markers(kind: str) -> tuple[str, str]:
    """The comments around a generated block (``#`` for YAML, HTML for Markdown)."""
    text = f"generated from INPUTS in celery_stack/inputs.py by `{COMMAND}`"
    if kind == "md":
        return f"<!-- BEGIN {text} -->", "<!-- END generated -->"
    return f"# BEGIN {text}", "# END generated"


def _replace_block(text: str, kind: str, block: list[str], path: Path) -> str:
    """``text`` with the lines between the markers replaced by ``block``."""
    begin, end = _markers(kind)
    lines = text.split("\n")
    try:
        first, last = lines.index(begin), lines.index(end)
    except ValueError:
        raise ValueError(f"{path}: the lines {begin!r} and {end!r} are missing; add them around the block") from None
    return "\n".join([*lines[: first + 1], *block, *lines[last:]])


def workload_names() -> list[str]:
    """The workload inputs, as listed in vars/main.yml (names without ``capacity_``)."""
    return [item.name for item in INPUTS if item.kind == WORKLOAD]


def vars_block() -> list[str]:
    """The generated part of ``roles/capacity/vars/main.yml``."""
    return [
        *_comment(
            f"The workload inputs of the plan: tasks/main.yml passes {PREFIX}<name> as <name> for each of them "
            "(capacity_postgresql_version: null is first derived from the OS facts)."
        ),
        *_block(WORKLOAD_LIST, workload_names(), 0),
    ]


def _cell(text: str) -> str:
    """A Markdown table cell."""
    return text.replace("|", "\\|")


def readme_block() -> list[str]:
    """The variables table of ``roles/capacity/README.md``."""
    lines = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    lines += [
        f"| `{item.variable}` | {_readme_type(item)} | `{flow(item.default)}` | {_cell(_readme_description(item))} |"
        for item in INPUTS
    ]
    for item in INPUTS:
        if not item.pool_keys:
            continue
        lines += [
            "",
            f"Keys of each `{item.variable}` entry (a key left out takes its default):",
            "",
            "| Key | Type | Default | Description |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{key.key}` | {_readme_type(key)} | "
            f"{'required' if key.required else '`' + flow(key.default) + '`'} | {_cell(key.description)} |"
            for key in item.pool_keys
        ]
    return lines


def rendered(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file (path relative to ``root``) with the content it must have."""
    files: dict[Path, str] = {DEFAULTS: defaults_yaml(), ARGUMENT_SPECS: argument_specs_yaml()}
    partial: dict[Path, tuple[str, Callable[[], list[str]]]] = {
        VARS: ("yaml", vars_block),
        README: ("md", readme_block),
    }
    for path, (kind, block) in partial.items():
        files[path] = _replace_block((root / path).read_text(), kind, block(), path)
    return files


def drift(root: Path = ROOT) -> dict[Path, str]:
    """The generated files whose content differs from the declaration, with the content they must have."""
    stale = {}
    for path, text in rendered(root).items():
        target = root / path
        if not target.exists() or target.read_text() != text:
            stale[path] = text
    return stale


def main(argv: list[str] | None = None) -> int:
    """Check (default) or rewrite the capacity role's generated files."""
    parser = argparse.ArgumentParser(prog="python -m celery_stack.role_files", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the files that differ")
    parser.add_argument("--check", action="store_true", help="only list the files that differ (the default)")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = drift(args.root)
    for path, text in stale.items():
        if args.write:
            (args.root / path).write_text(text)
            print(f"wrote {path}")
        else:
            print(f"{path} differs from celery_stack/inputs.py: run {COMMAND}", file=sys.stderr)
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
