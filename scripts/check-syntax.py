#!/usr/bin/env python3
"""Compile every tracked Python file with the interpreter that runs the tests.

Integration tests are only imported once a Molecule scenario has converged; a syntax error there
would cost a whole converge before anyone sees it. This fails in seconds instead.
"""
import subprocess
import sys

files = subprocess.run(["git", "ls-files", "*.py"], check=True, capture_output=True, text=True).stdout.split()
errors = []
for name in files:
    try:
        with open(name, encoding="utf-8") as handle:
            compile(handle.read(), name, "exec", dont_inherit=True)
    except SyntaxError as error:
        errors.append(f"{name}:{error.lineno}: {error.msg}")
print("\n".join(errors) or f"{len(files)} Python files parse with Python {sys.version.split()[0]}")
sys.exit(1 if errors else 0)
