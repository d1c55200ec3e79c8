"""The capacity role's files agree with the one declaration of the inputs (celery_stack/inputs.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from capacity_cases import ROOT

from celery_stack import role_files
from celery_stack.inputs import (
    HOST,
    HOST_DEFAULTS,
    HOST_VARIABLES,
    INPUTS,
    POOL_DEFAULTS,
    POOL_KEYS,
    SERVICES_INPUT,
    WORKLOAD,
    WORKLOAD_DEFAULTS,
)


def test_role_defaults_equal_python_defaults() -> None:
    defaults = yaml.safe_load((ROOT / "roles" / "capacity" / "defaults" / "main.yml").read_text())
    workload = {key.removeprefix("capacity_"): value for key, value in defaults.items()}
    host = {key: workload.pop(var.removeprefix("capacity_")) for key, var in HOST_VARIABLES.items()}
    assert workload.pop("services") is None
    assert host == HOST_DEFAULTS
    assert workload == WORKLOAD_DEFAULTS


def test_argument_specs_document_every_default() -> None:
    defaults = yaml.safe_load((ROOT / "roles" / "capacity" / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROOT / "roles" / "capacity" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults)
    assert all(option["description"] for option in options.values())
    readme = (ROOT / "roles" / "capacity" / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in defaults)


# ---------------------------------------------------------------- one declaration, generated role files


def _load(path: Path) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def test_each_input_is_declared_once() -> None:
    variables = [item.variable for item in INPUTS]
    assert len(variables) == len(set(variables))
    assert all(variable.startswith("capacity_") for variable in variables)
    names = [item.name for item in INPUTS if item.kind in (HOST, WORKLOAD)]
    assert len(names) == len(set(names))
    assert {item.kind for item in INPUTS} == {HOST, SERVICES_INPUT, WORKLOAD}
    # the Python defaults are derived from the declaration, not written again
    assert HOST_DEFAULTS == {item.name: item.default for item in INPUTS if item.kind == HOST}
    assert WORKLOAD_DEFAULTS == {item.name: item.default for item in INPUTS if item.kind == WORKLOAD}
    assert HOST_VARIABLES == {item.name: item.variable for item in INPUTS if item.kind == HOST}


def test_generated_role_files_are_up_to_date() -> None:
    stale = role_files.drift(ROOT)
    assert not stale, f"{', '.join(map(str, stale))} differ from celery_stack/inputs.py: run {role_files.COMMAND}"


def test_defaults_file_declares_every_input_in_order_with_its_default() -> None:
    defaults = _load(role_files.DEFAULTS)
    assert list(defaults) == [item.variable for item in INPUTS]
    for item in INPUTS:
        assert defaults[item.variable] == item.default and type(defaults[item.variable]) is type(item.default)
    text = (ROOT / role_files.DEFAULTS).read_text()
    assert all(f"{key.key} (" in text for key in POOL_KEYS)  # every pool key is documented in the comments


def test_argument_specs_agree_with_the_declaration() -> None:
    options = _load(role_files.ARGUMENT_SPECS)["argument_specs"]["main"]["options"]
    assert list(options) == [item.variable for item in INPUTS]
    for item in INPUTS:
        option = options[item.variable]
        assert option["type"] == item.type, item.variable
        assert option["required"] is False and option["default"] == item.default, item.variable
        assert option.get("elements") == item.elements, item.variable
        assert option["description"].startswith(item.description), item.variable
        if item.choices and item.default is not None:
            assert option["choices"] == list(item.choices), item.variable
        else:
            assert "choices" not in option, item.variable  # a null default is checked by the plan
    pools = options["capacity_celery_pools"]["options"]
    assert list(pools) == [key.key for key in POOL_KEYS]
    for key in POOL_KEYS:
        assert pools[key.key]["type"] == key.type and pools[key.key].get("required", False) == key.required
        assert pools[key.key]["description"].startswith(key.description)
    assert list(POOL_DEFAULTS) == [key.key for key in POOL_KEYS if not key.required]


def test_vars_list_the_workload_inputs_the_task_passes() -> None:
    names = _load(role_files.VARS)[role_files.WORKLOAD_LIST]
    assert names == list(WORKLOAD_DEFAULTS) == role_files.workload_names()
    tasks = _load(role_files.ROLE / "tasks" / "main.yml")
    collect = next(task for task in tasks if task["name"] == "Collect the workload inputs")
    template = collect["ansible.builtin.set_fact"]["capacity_workload"]
    assert role_files.WORKLOAD_LIST in template
    # no workload input is named one by one, except the version derived from the OS facts
    named = set(re.findall(r"\bcapacity_([a-z0-9_]+)", template)) & set(WORKLOAD_DEFAULTS)
    assert named == {"postgresql_version"}
    resolve = next(task for task in tasks if task["name"] == "Resolve the services and the size of this host")
    host_inputs = resolve["ansible.builtin.set_fact"]["capacity_host_inputs"]
    assert list(host_inputs) == list(HOST_DEFAULTS)
    for key, variable in HOST_VARIABLES.items():
        assert variable in host_inputs[key]


def test_readme_table_agrees_with_the_declaration() -> None:
    readme = (ROOT / role_files.README).read_text()
    rows = [line.split(" | ") for line in readme.splitlines() if line.startswith("| `capacity_")]
    assert [row[0].strip("|` ") for row in rows] == [item.variable for item in INPUTS]
    for row, item in zip(rows, INPUTS):
        assert row[1].split(" ")[0] == item.type and row[2] == f"`{role_files.flow(item.default)}`"
        assert item.description in row[3]
    keys = [line.split(" | ")[0].strip("|` ") for line in readme.splitlines() if line.startswith("| `")]
    assert keys[len(INPUTS) :] == [key.key for key in POOL_KEYS]


def test_generated_yaml_reads_back_as_written() -> None:
    for value in ["ssd", "web", "1.1", "yes", "null", "a: b", "x #y", "[a]", "it's", "-1", "12", "", "PGTune type."]:
        assert yaml.safe_load(f"key: {role_files.scalar(value)}") == {"key": value}, value
    assert yaml.safe_load(role_files.flow(WORKLOAD_DEFAULTS["celery_pools"])) == WORKLOAD_DEFAULTS["celery_pools"]


def test_check_reports_drift_and_write_repairs_it(tmp_path: Path) -> None:
    for path in (role_files.DEFAULTS, role_files.ARGUMENT_SPECS, role_files.VARS, role_files.README):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text())
    assert role_files.main(["--root", str(tmp_path)]) == 0
    readme = tmp_path / role_files.README
    row = "| `capacity_nginx_memory_mb` | int | `128` |"
    readme.write_text(readme.read_text().replace(row, row.replace("128", "64")))
    (tmp_path / role_files.DEFAULTS).unlink()
    assert set(role_files.drift(tmp_path)) == {role_files.README, role_files.DEFAULTS}
    assert role_files.main(["--root", str(tmp_path)]) == 1
    assert role_files.main(["--root", str(tmp_path), "--write"]) == 0
    assert role_files.drift(tmp_path) == {}
    assert readme.read_text() == (ROOT / role_files.README).read_text()
