"""Every role input is declared and documented: each variable of a role's
defaults/main.yml has an entry in meta/argument_specs.yml (so Ansible checks
its type at the role's entry points) and a row in the role's README."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "defaults" / "main.yml").exists())


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_declared_and_documented(role: str) -> None:
    base = ROOT / "roles" / role
    defaults = set(yaml.safe_load((base / "defaults" / "main.yml").read_text()) or {})
    spec = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    readme = (base / "README.md").read_text()
    assert defaults - set(spec) == set(), f"not in argument_specs: {sorted(defaults - set(spec))}"
    assert set(spec) - defaults == set(), f"declared without a default: {sorted(set(spec) - defaults)}"
    undocumented = sorted(name for name in defaults if f"`{name}`" not in readme)
    assert not undocumented, f"not in {role}/README.md: {undocumented}"
