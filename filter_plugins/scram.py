"""Ansible filter: SCRAM-SHA-256 verifiers computed on the controller.

- ``password | celery_stack_scram_secret(current, iterations)``: the
  verifier to store for ``password`` — ``current`` (the verifier stored now,
  or empty) when it matches the password with ``iterations``, else a new one
  with a random salt. Roles postgresql (login roles, pg_authid) and pgbouncer
  (console users, auth_file) use it; see celery_stack/scram.py.
"""
from __future__ import annotations

import os
import sys

_REPO_ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from ansible.errors import AnsibleFilterError  # noqa: E402

from celery_stack.scram import DEFAULT_ITERATIONS, scram_secret  # noqa: E402


def celery_stack_scram_secret(password, current=None, iterations=DEFAULT_ITERATIONS) -> str:
    if not isinstance(password, str) or not password.isascii():
        raise AnsibleFilterError("celery_stack_scram_secret: the password must be an ASCII string")
    try:
        return scram_secret(password, current or None, int(iterations))
    except ValueError as exc:
        raise AnsibleFilterError(f"celery_stack_scram_secret: {exc}") from exc


class FilterModule:
    """celery-stack SCRAM filter."""

    def filters(self):
        return {"celery_stack_scram_secret": celery_stack_scram_secret}
