"""Ansible filters of the monitoring wiring (playbooks/vars/monitoring.yml).

- ``groups | celery_stack_scrape_targets(addresses, ports, redis_ports, flower)``:
  Prometheus static configs per job (celery_stack.monitoring.scrape_targets).
- ``pools_by_host | celery_stack_exporter_queues``: the Celery queues of every
  workers host's plan, for the broker's queue-length script.
- ``pools | celery_stack_runtime_buckets(ratio)``: Flower's task runtime
  histogram buckets, resolving each pool's time limit and alert threshold.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

_REPO_ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from celery_stack.monitoring import exporter_queues, runtime_buckets, scrape_targets  # noqa: E402


class FilterModule:
    """celery-stack monitoring filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "celery_stack_scrape_targets": scrape_targets,
            "celery_stack_exporter_queues": exporter_queues,
            "celery_stack_runtime_buckets": runtime_buckets,
        }
