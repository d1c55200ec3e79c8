"""Each role owns its data: no role reads another role's internals, runtime facts or variables.

Roles get what they need from other roles only through the capacity plan
(`capacity_plan`, computed once per host by role capacity), the shared
`celery_stack_*` names (filters, the local fact celery_stack_release) and
explicit parameters the playbooks pass (playbooks/vars/application.yml).
This test reads every role file as text:

* ``__<other>_...`` (another role's internals) may appear nowhere;
* a variable another role registers or sets at run time may appear nowhere;
* inside Jinja expressions (``{{ ... }}``, ``when:``, ``that:``, ``loop:``)
  no ``<other>_...`` variable is read, except ``capacity_plan``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
SHARED = {"capacity_plan"}
# A variable name, not a string literal ('postgresql_version'), an attribute or a path.
_NAME = re.compile(r"(?<![\w.$'\"/-])(__)?(%s)_[a-z0-9_]*[a-z0-9]" % "|".join(ROLES))
_JINJA = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
_BARE = re.compile(r"^\s*-?\s*(?:when|that|loop|until|changed_when|failed_when):\s*(.+)$", re.M)
_LIST_ITEM = re.compile(r"^(\s*)(?:when|that):\s*$")


def role_files(role: str) -> list[Path]:
    return sorted(
        path
        for path in (ROOT / "roles" / role).rglob("*")
        if path.is_file() and path.name != "README.md" and path.suffix != ".pyc"
    )


def expressions(text: str) -> list[str]:
    """The Jinja expressions of a role file: {{ }}, {% %} and the bare conditions of tasks."""
    found = [a or b for a, b in _JINJA.findall(text)]
    found += _BARE.findall(text)
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _LIST_ITEM.match(line)
        if not match:
            continue
        for item in lines[index + 1 :]:
            if not item.strip().startswith("- ") or len(item) - len(item.lstrip()) <= len(match.group(1)):
                break
            found.append(item.strip()[2:])
    return found


def runtime_names(role: str) -> set[str]:
    """Variables the role registers or sets with set_fact."""
    names: set[str] = set()
    for path in role_files(role):
        if path.suffix != ".yml":
            continue
        text = path.read_text()
        names |= set(re.findall(r"^\s*register:\s*(\w+)", text, re.M))
        for block in re.findall(r"ansible\.builtin\.set_fact:\n((?:\s{4,}.*\n)+)", text):
            names |= set(re.findall(r"^\s{4}(\w+):", block, re.M)) - {"cacheable"}
    return names


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reads_another_roles_internals(role: str) -> None:
    others = [r for r in ROLES if r != role]
    found = []
    for path in role_files(role):
        for match in re.finditer(r"__(%s)_\w+" % "|".join(others), path.read_text()):
            found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not found, found


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reads_another_roles_runtime_facts(role: str) -> None:
    foreign = set().union(*(runtime_names(r) for r in ROLES if r != role)) - SHARED
    found = []
    for path in role_files(role):
        text = path.read_text()
        for name in foreign:
            if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    assert not found, found


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reads_another_roles_variables(role: str) -> None:
    found = []
    for path in role_files(role):
        for expression in expressions(path.read_text()):
            for match in _NAME.finditer(expression):
                name = match.group(0)
                if match.group(2) != role and name not in SHARED and not name.startswith("celery_stack_"):
                    found.append(f"{path.relative_to(ROOT)}: {name}")
    assert not found, found


def test_the_checks_see_a_violation() -> None:
    assert [m.group(0) for e in expressions("x: \"{{ app_env_file }}\"\nwhen: nginx_port > 1\n") for m in _NAME.finditer(e)] == [
        "app_env_file",
        "nginx_port",
    ]
    assert "__celery_stale_pools" in runtime_names("celery")
