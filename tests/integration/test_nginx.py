"""Role nginx, read back from the running server on the converged host.

Requests go from the host itself to 127.0.0.1 (curl from role common), with
certificate verification off (the local certificate is self-signed). The
application upstream does not exist yet on this host, so accepted requests
answer 502; only the answers nginx makes itself (301, 401, 413, 429) and its
headers are asserted. Basic-auth passwords are read from the controller's
generated secrets (.secrets/local/nginx_basic_auth_<user>, see
inventories/local/group_vars/all/nginx.yml).
"""
from __future__ import annotations

import json
import math
import re
import shlex

import pytest
from stack import SECRETS, default_names

BASE = "https://127.0.0.1"


@pytest.fixture(scope="module", autouse=True)
def web_host(inventory_vars):
    if "web" not in inventory_vars["group_names"]:
        pytest.skip("nginx runs on web hosts only")


@pytest.fixture(scope="module")
def cfg(role_vars, inventory_vars, plan) -> dict:
    values = role_vars("nginx")
    # Templated default: the plan's API processes of this host (role defaults are not rendered here).
    if "nginx_upstream_servers" not in inventory_vars:
        values["nginx_upstream_servers"] = plan["api"]["upstreams"]
    return values


def test_upstreams_are_the_api_processes_of_the_plan(host, cfg, plan):
    conf = host.file("/etc/nginx/conf.d/celery-stack.conf").content_string
    block = conf[conf.index("upstream celery_stack_app {"):]
    block = block[: block.index("}")]
    lines = [line.strip().rstrip(";").split() for line in block.splitlines() if line.strip().startswith("server ")]
    assert [line[1] for line in lines] == cfg["nginx_upstream_servers"]
    # Loopback API processes are never marked unavailable (no "no live upstreams" after a restart).
    assert all(line[2:] == [f"max_fails={cfg['nginx_upstream_max_fails']}", f"fail_timeout={cfg['nginx_upstream_fail_timeout']}s"]
               for line in lines), lines
    expected = [f"{plan['api']['bind_address']}:{plan['api']['port'] + i}" for i in range(plan["inputs"]["api_processes"])]
    assert plan["api"]["upstreams"] == expected


def https_base(cfg) -> str:
    port = int(cfg["nginx_https_port"])
    return BASE if port == 443 else f"{BASE}:{port}"


def curl(host, *args: str) -> str:
    """curl from the host; returns stdout (fails the test on a curl error)."""
    cmd = "curl -sS --max-time 30 " + " ".join(shlex.quote(a) for a in args)
    result = host.run(cmd)
    assert result.rc == 0, f"{cmd}: {result.stderr}"
    return result.stdout


def fetch(host, url: str, *args: str) -> tuple[int, dict[str, str], str]:
    """GET url (insecure TLS): status, lower-cased headers of the final answer, body."""
    out = curl(host, "-k", "-D", "/dev/stdout", "-o", "/dev/null", *args, url)
    blocks = [b for b in re.split(r"\r?\n\r?\n", out.strip()) if b.startswith("HTTP/")]
    lines = blocks[-1].splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, out


def password_of(user: str) -> str:
    path = SECRETS / f"nginx_basic_auth_{user}"
    if not path.exists():
        pytest.skip(f"{path} not found: the password of {user} is not a generated local secret")
    return path.read_text().split(" salt=")[0].strip()


def retry_after(limit: dict) -> int:
    if limit.get("retry_after") is not None:
        return int(limit["retry_after"])
    number, unit = re.fullmatch(r"([0-9]+)r/([sm])", limit["rate"]).groups()
    return max(1, math.ceil((1 if unit == "s" else 60) / int(number)))


def test_nginx_running_and_enabled(host):
    service = host.service("nginx")
    assert service.is_running
    assert service.is_enabled


def test_configuration_is_valid(host):
    result = host.run("nginx -t")
    assert result.rc == 0, result.stderr


def test_listeners(host, cfg):
    assert host.socket(f"tcp://0.0.0.0:{cfg['nginx_http_port']}").is_listening
    assert host.socket(f"tcp://0.0.0.0:{cfg['nginx_https_port']}").is_listening


def test_stub_status_only_on_loopback(host, cfg):
    if not cfg["nginx_stub_status_enabled"]:
        pytest.skip("stub_status disabled")
    port = int(cfg["nginx_stub_status_port"])
    address = cfg["nginx_stub_status_address"]
    listeners = [s for s in host.socket.get_listening_sockets() if s.startswith("tcp://") and s.endswith(f":{port}")]
    assert listeners, f"nothing listens on port {port}"
    for sock in listeners:
        assert sock in (f"tcp://{address}:{port}", f"tcp://[{address}]:{port}"), f"stub_status listener {sock} is not loopback only"
    body = curl(host, f"http://{address}:{port}{cfg['nginx_stub_status_path']}")
    assert body.startswith("Active connections:")
    assert "server accepts handled requests" in body


def test_server_tokens_off(host, cfg):
    _, headers, _ = fetch(host, f"{https_base(cfg)}/")
    assert headers["server"] == "nginx", headers["server"]
    body = curl(host, "-k", f"{https_base(cfg)}/")  # 502 page of nginx itself
    assert not re.search(r"nginx/[0-9]", body)


def test_http_redirects_to_https(host, cfg):
    port = int(cfg["nginx_http_port"])
    status, headers, _ = fetch(host, f"http://127.0.0.1:{port}/some/path?q=1")
    assert status == 301
    expected_port = "" if int(cfg["nginx_https_port"]) == 443 else f":{cfg['nginx_https_port']}"
    assert headers["location"] == f"https://127.0.0.1{expected_port}/some/path?q=1"
    assert "strict-transport-security" not in headers, "HSTS must only be sent over HTTPS"


def test_security_headers_on_https(host, cfg):
    _, headers, _ = fetch(host, f"{https_base(cfg)}/")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == cfg["nginx_frame_options"]
    assert headers["referrer-policy"] == cfg["nginx_referrer_policy"]
    hsts = headers["strict-transport-security"]
    assert hsts.split(";")[0] == f"max-age={cfg['nginx_hsts_max_age']}"
    if cfg["nginx_content_security_policy"]:
        assert headers["content-security-policy"] == cfg["nginx_content_security_policy"]
    else:
        assert "content-security-policy" not in headers
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])


def test_tls_protocols_and_certificate(host, cfg, inventory_vars):
    port = cfg["nginx_https_port"]
    for proto in ("tls1_2", "tls1_3"):
        flag = "TLSv" + proto[3:].replace("_", ".")
        result = host.run(f"openssl s_client -connect 127.0.0.1:{port} -{proto} </dev/null 2>&1")
        enabled = flag in cfg["nginx_tls_protocols"]
        assert (result.rc == 0) == enabled, result.stdout[-500:]
    # TLS 1.1 is refused by the server (the client is allowed to offer it).
    old = host.run(f"openssl s_client -connect 127.0.0.1:{port} -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' </dev/null 2>&1")
    assert old.rc != 0
    if cfg["nginx_tls_self_signed"]:
        san = host.run(
            f"openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null"
            " | openssl x509 -noout -ext subjectAltName"
        )
        assert san.rc == 0, san.stderr
        assert f"DNS:{inventory_vars['inventory_hostname']}" in san.stdout
        assert "DNS:localhost" in san.stdout and "IP Address:127.0.0.1" in san.stdout


@pytest.mark.parametrize("name", default_names("nginx", "nginx_rate_limits"))
def test_burst_above_the_limit_gets_429_with_retry_after(host, cfg, name):
    limits = {limit["name"]: limit for limit in cfg["nginx_rate_limits"]}
    if name not in limits:
        pytest.skip(f"rate limit {name} not configured in this inventory")
    limit = limits[name]
    burst = int(limit.get("burst", 0))
    count = max(60, 3 * (burst + 1))
    url = f"{https_base(cfg)}{limit['path']}ratelimit-probe"
    # All requests at once (one curl, parallel): the zone admits 1 + burst of them.
    config = "".join(f'url = "{url}"\noutput = "/dev/null"\n' for _ in range(count))
    result = host.run(
        f"printf '%s' {shlex.quote(config)} | curl -sk --max-time 60 --parallel --parallel-max {count} "
        "-w '%{http_code} %header{retry-after}\\n' -K -"
    )
    assert result.rc == 0, result.stderr
    answers = [line.split(" ", 1) for line in result.stdout.splitlines() if line.strip()]
    codes = [int(code) for code, _ in answers]
    assert len(codes) == count
    limited = [value.strip() for code, value in answers if code == "429"]
    assert limited, f"no 429 among {count} requests at once to {limit['path']} ({limit['rate']}, burst {burst})"
    assert 503 not in codes, "rejections must be 429 (limit_req_status), not 503"
    # The zone admits at most 1 + burst at once (plus what the rate refills meanwhile).
    assert count - len(limited) <= burst + 1 + 10
    assert set(limited) == {str(retry_after(limit))}, f"Retry-After of the 429 answers: {set(limited)}"


def test_rate_limited_answer_has_security_headers(host, cfg):
    if not cfg["nginx_rate_limits"]:
        pytest.skip("no rate limits")
    limit = cfg["nginx_rate_limits"][0]
    url = f"{https_base(cfg)}{limit['path']}ratelimit-headers"
    count = 3 * (int(limit.get("burst", 0)) + 1) + 20
    # A parallel burst; curl writes each answer's status and headers (JSON) between markers.
    config = "".join(f'url = "{url}"\noutput = "/dev/null"\n' for _ in range(count))
    result = host.run(
        f"printf '%s' {shlex.quote(config)} | curl -sk --max-time 60 --parallel --parallel-max {count} "
        "-w '<<%{http_code}|%{header_json}>>\n' -K -"
    )
    assert result.rc == 0, result.stderr
    answers = [(int(code), json.loads(headers)) for code, headers in re.findall(r"<<([0-9]+)\|(.*?)>>", result.stdout, re.S)]
    assert len(answers) == count
    limited = [headers for code, headers in answers if code == 429]
    assert limited, "no 429 answer"
    headers = {name: values[0] for name, values in limited[0].items()}
    assert headers["retry-after"] == str(retry_after(limit))
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" in headers


@pytest.mark.parametrize("name", default_names("nginx", "nginx_protected_locations"))
def test_protected_location_needs_credentials(host, cfg, name):
    uis = {ui["name"]: ui for ui in cfg["nginx_protected_locations"]}
    if name not in uis:
        pytest.skip(f"{name} is not a protected location in this inventory")
    url = f"{https_base(cfg)}{uis[name]['path']}"
    status, headers, _ = fetch(host, url)
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic ")
    user = cfg["nginx_basic_auth_users"][0]["name"]
    status, _, _ = fetch(host, url, "-u", f"{user}:not-the-password")
    assert status == 401
    status, _, _ = fetch(host, url, "-u", f"{user}:{password_of(user)}")
    # Authenticated: whatever the backend answers (502 while it does not run), but not 401.
    assert status != 401
    assert status in (200, 301, 302, 404, 502, 503, 504), status


def test_htpasswd_file(host, cfg):
    htpasswd = host.file("/etc/nginx/celery-stack.htpasswd")
    assert htpasswd.user == "root" and htpasswd.group == "www-data" and htpasswd.mode == 0o640
    users = [line.split(":", 1)[0] for line in htpasswd.content_string.splitlines() if ":" in line]
    assert users == [u["name"] for u in cfg["nginx_basic_auth_users"]]
    for user in cfg["nginx_basic_auth_users"]:
        path = SECRETS / f"nginx_basic_auth_{user['name']}"
        if path.exists():
            assert password_of(user["name"]) not in htpasswd.content_string


def test_static_files_are_cached(host, cfg):
    if not cfg["nginx_static_enabled"]:
        pytest.skip("static files disabled")
    name = "celery-stack-testinfra.txt"
    path = cfg["nginx_static_root"] + name
    host.run(f"echo ok > {shlex.quote(path)}")
    try:
        status, headers, _ = fetch(host, f"{https_base(cfg)}{cfg['nginx_static_path']}{name}")
    finally:
        host.run(f"rm -f {shlex.quote(path)}")
    assert status == 200
    directives = [d.strip() for d in headers["cache-control"].split(",")]
    assert f"max-age={cfg['nginx_static_max_age']}" in directives
    assert ("immutable" in directives) == bool(cfg["nginx_static_immutable"])
    assert headers["x-content-type-options"] == "nosniff"


def size_in_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"([0-9]+)([kKmMgG]?)", str(size)).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def test_request_body_limit(host, cfg):
    limit = size_in_bytes(cfg["nginx_client_max_body_size"])
    if limit == 0 or limit > 64 * 1024**2:
        pytest.skip(f"client_max_body_size {cfg['nginx_client_max_body_size']} is unlimited or too large to test")
    url = f"{https_base(cfg)}/body-limit-probe"
    too_big = host.run(
        f"head -c {limit + 1024} /dev/zero | curl -sk -o /dev/null -w '%{{http_code}}' -X POST --data-binary @- {url}"
    )
    assert too_big.stdout.strip() == "413"
    small = host.run(f"head -c 1024 /dev/zero | curl -sk -o /dev/null -w '%{{http_code}}' -X POST --data-binary @- {url}")
    assert small.stdout.strip() != "413"


def test_workers_and_file_limit(host, cfg):
    workers = host.process.filter(comm="nginx", user="www-data")
    assert workers, "no nginx worker processes"
    if str(cfg["nginx_worker_processes"]) == "auto":
        assert len(workers) == int(host.run("nproc").stdout)
    else:
        assert len(workers) == int(cfg["nginx_worker_processes"])
    limits = host.file(f"/proc/{workers[0].pid}/limits").content_string
    soft = re.search(r"^Max open files\s+([0-9]+)\s+([0-9]+)", limits, re.M)
    assert int(soft.group(1)) == int(cfg["nginx_worker_rlimit_nofile"])


def test_memory_cap_is_the_plan(host, cfg, plan):
    configured = cfg["nginx_memory_max_mb"]
    expected = plan["memory"]["nginx"] if isinstance(configured, str) else configured
    value = host.run("systemctl show nginx --property=MemoryMax --value").stdout.strip()
    if expected is None:
        assert value == "infinity"
    else:
        assert int(value) == int(expected) * 1024 * 1024


ECHO_SERVER = r"""
import http.server, json, sys

class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"port": self.client_address[1], "version": self.request_version,
                           "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo)
server.timeout = 1
for _ in range(60):
    server.handle_request()
"""


def test_upstream_proxy_headers_and_keepalive(host, cfg):
    """Throw-away echo servers on the upstream ports see what the application will see."""
    matches = [re.fullmatch(r"127\.0\.0\.1:([0-9]+)", server.split()[0]) for server in cfg["nginx_upstream_servers"]]
    if not all(matches):
        pytest.skip("an upstream is not on this host's loopback")
    ports = [match.group(1) for match in matches]
    for port in ports:
        if host.run(f"ss -Htln 'sport = :{port}'").stdout.strip():
            pytest.skip(f"port {port} is in use (the application runs): not replacing it with an echo server")
    host.run(f"cat > /tmp/celery-stack-echo.py <<'EOF'\n{ECHO_SERVER}\nEOF")
    # One echo server per upstream: nginx balances over all of them.
    pids = [
        host.run(f"setsid timeout 60 python3 /tmp/celery-stack-echo.py {port} </dev/null >/dev/null 2>&1 & echo $!").stdout.strip()
        for port in ports
    ]
    try:
        for port in ports:
            wait = f"for i in $(seq 50); do ss -Htln 'sport = :{port}' | grep -q . && exit 0; sleep 0.1; done; exit 1"
            assert host.run(wait).rc == 0
        # Requests of earlier tests found no upstream and marked the servers
        # unavailable for fail_timeout (10 s): wait until nginx uses them again.
        warmup = f"{https_base(cfg)}/echo/warmup"
        ready = (f"for i in $(seq 60); do [ \"$(curl -sk -o /dev/null -w '%{{http_code}}' {warmup})\" = 200 ] && exit 0; "
                 "sleep 0.5; done; exit 1")
        assert host.run(ready).rc == 0, "nginx did not reach the echo servers within 30 s"
        urls = [f"{https_base(cfg)}/echo/{i}" for i in range(10)]
        out = curl(host, "-k", "-H", "X-Request-ID: testinfra-request-0001", *urls)
        answers = [json.loads(part) for part in out.replace("}{", "}\n{").splitlines()]
    finally:
        # timeout(1) passes the signal on to the echo servers.
        host.run(f"kill {' '.join(str(int(pid)) for pid in pids)}; rm -f /tmp/celery-stack-echo.py")
    assert len(answers) == 10
    for answer in answers:
        headers = {k.lower(): v for k, v in answer["headers"].items()}
        assert answer["version"] == "HTTP/1.1"
        assert headers.get("connection", "").lower() != "close", "upstream keep-alive needs Connection \"\""
        assert headers["host"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-request-id"] == "testinfra-request-0001"
    # Keep-alive: the ten requests reuse upstream connections (at most one per worker and upstream).
    workers = len(host.process.filter(comm="nginx", user="www-data"))
    assert len({a["port"] for a in answers}) <= workers * len(ports)
