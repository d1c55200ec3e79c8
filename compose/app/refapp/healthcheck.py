"""Container health check without curl: GET a URL, exit 0 on HTTP 200.

    python -m refapp.healthcheck [URL]     # default http://127.0.0.1:8000/healthz

Prints the status and body, so `docker inspect` shows why a check failed.
The image defines no HEALTHCHECK because the same image runs the API, the
workers, beat and Flower; the compose file sets one per service.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local URL
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        print(f"{url}: {exc}")
        return 1
    print(status, body.decode(errors="replace"))
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
