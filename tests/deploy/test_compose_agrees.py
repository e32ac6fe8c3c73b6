"""The deployment files agree with each other and pass their own tools' checks.

docker-compose.yml and deploy/cluster.sh (via `cluster.sh plan`, the very lists `up` runs)
must describe the same cluster: the same services, ports, environment, health checks and
start order, from the one deploy/cluster.env. The Kubernetes config carries the same
settings; haproxy.cfg passes `haproxy -c` with either side's variables; nginx.conf passes
`nginx -t`; the systemd units and the Dockerfile keep the properties docs/deploy.md promises.

No process is left running: every tool here is a one-shot check.
"""
import os
import re
import shutil
import subprocess

import pytest

yaml = pytest.importorskip("yaml")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
COMPOSE_CLUSTER = os.path.join(ROOT, "docker-compose.cluster.yml")
CLUSTER_INIT = os.path.join(DEPLOY, "redis-cluster-init.sh")
CLUSTER_SH = os.path.join(DEPLOY, "cluster.sh")
CLUSTER_ENV = os.path.join(DEPLOY, "cluster.env")
HAPROXY_CFG = os.path.join(DEPLOY, "haproxy.cfg")
NGINX_CONF = os.path.join(DEPLOY, "nginx.conf")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")

SERVICES = {"redis", "node1", "node2", "node3", "lb", "admin"}
# The demo page and its files: what every load balancer forwards besides /ws.
DEMO_PATHS = {"/", "/index.html", "/switchboard.js", "/demo.js", "/demo.css"}
PRIVATE_PATHS = ["/livez", "/readyz", "/metrics", "/admin/", "/ws/x", "/index.htm", "/x.js"]
NODES = ["node1", "node2", "node3"]
# Where the native cluster must differ from compose: addresses, not settings.
REDIS_PLACEMENT = {"--port", "--bind", "--dir", "--daemonize"}
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


# ---- readers ------------------------------------------------------------------------------

def read_env_file(path):
    """KEY=value lines in order, as a dict (the format cluster.sh enforces)."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=([^\s\"'$`]*)", line)
            assert m, f"{path}:{n}: not KEY=value: {line!r}"
            assert m.group(1) not in out, f"{path}:{n}: {m.group(1)} set twice"
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def env():
    return read_env_file(CLUSTER_ENV)


@pytest.fixture(scope="module")
def compose():
    with open(COMPOSE) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def run_plan(extra_env=None):
    """{service: {'argv': [...], 'env': {...}, 'health': str, 'depends': [...],
    'publish': [...]}} and the order of services, from `cluster.sh plan` in a clean
    environment (so cluster.env's defaults apply)."""
    e = dict(BASE_ENV, HOME=os.environ.get("HOME", "/root"))
    e.update(extra_env or {})
    r = subprocess.run(["bash", CLUSTER_SH, "plan"], env=e, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    plan, order = {}, []
    for line in r.stdout.splitlines():
        name, kind, value = line.split("\t", 2)
        if name not in plan:
            order.append(name)
            plan[name] = {"argv": [], "env": {}, "health": None, "depends": [], "publish": []}
        s = plan[name]
        if kind == "env":
            k, _, v = value.partition("=")
            assert k not in s["env"], f"plan: {name} sets {k} twice"
            s["env"][k] = v
        elif kind == "health":
            s["health"] = value
        elif kind in ("argv", "depends", "publish"):
            s[kind].append(value)
        else:
            raise AssertionError(f"plan: unknown kind {kind!r}")
    return plan, order


@pytest.fixture(scope="module")
def plan():
    return run_plan()[0]


def compose_env(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: str(v) for k, v in e.items()}


def env_files(svc):
    f = svc.get("env_file") or []
    if isinstance(f, str):
        f = [f]
    return [os.path.normpath(os.path.join(ROOT, x if isinstance(x, str) else x["path"]))
            for x in f]


def interpolation_default(text, var):
    """The default of ${var:-default} in text; fails when text does not use var that way."""
    m = re.search(r"\$\{" + var + r":-([^}]*)\}", text)
    assert m, f"{text!r} does not read ${{{var}:-...}}"
    return m.group(1)


def hostport(value):
    host, _, port = value.rpartition(":")
    return host, int(port)


def health_of_compose(svc):
    """'redis PORT', 'redis-cluster PORT' or 'http PORT PATH' for a compose health check, like
    the plan's."""
    test = svc["healthcheck"]["test"]
    text = " ".join(test[1:]) if isinstance(test, list) else test
    if "redis-cli" in text:
        m = re.search(r"-p\s+(\d+)", text)
        if re.search(r"cluster info \| grep -q cluster_state:ok$", text):
            return f"redis-cluster {m.group(1) if m else 6379}"
        assert "ping" in text, text
        return f"redis {m.group(1) if m else 6379}"
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*)", text)
    if m:
        return f"http {m.group(1)} {m.group(2).rstrip(chr(39))}"
    m = re.search(r"/dev/tcp/127\.0\.0\.1/(\d+).*?GET (/\S*)", text)
    assert m, f"cannot read health check {text!r}"
    return f"http {m.group(1)} {m.group(2)}"


# ---- compose against the native cluster ---------------------------------------------------

def test_same_services(services):
    assert set(services) == SERVICES
    plan, order = run_plan()
    assert set(plan) == SERVICES
    # The native start order respects compose's dependencies.
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert order.index(dep) < order.index(name), f"{name} starts before {dep}"


def test_nodes_share_one_definition(services):
    images = {services[n]["image"] for n in NODES}
    builds = {repr(services[n].get("build")) for n in NODES}
    assert len(images) == 1 and len(builds) == 1
    assert services["node1"]["build"]["target"] == "node"
    assert services["admin"]["build"]["target"] == "admin"
    for n in NODES + ["admin"]:
        assert services[n]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_shared_settings_come_from_cluster_env(services, plan, env):
    for name in NODES + ["admin"]:
        assert env_files(services[name]) == [CLUSTER_ENV], f"{name}: env_file"
        native = plan[name]["env"]
        for k, v in env.items():
            assert native.get(k) == v, f"native {name}: {k}={native.get(k)!r}, cluster.env {v!r}"
    # Services that are not ours get none of it.
    for name in ("redis", "lb"):
        assert not env_files(services[name])


def test_node_environment_agrees(services, plan, env):
    node_port = int(env["SB_NODE_PORT"])
    redis_port = int(env["SB_REDIS_PORT"])
    for i, name in enumerate(NODES, 1):
        c = compose_env(services[name])
        n = {k: v for k, v in plan[name]["env"].items() if k not in env and k not in BASE_ENV}
        assert set(c) == set(n) == {"SWITCHBOARD_ID", "SWITCHBOARD_LISTEN", "SWITCHBOARD_REDIS"}
        assert c["SWITCHBOARD_ID"] == n["SWITCHBOARD_ID"] == name
        assert hostport(c["SWITCHBOARD_LISTEN"]) == ("0.0.0.0", node_port)
        assert hostport(n["SWITCHBOARD_LISTEN"]) == ("127.0.0.1", node_port + i)
        assert c["SWITCHBOARD_REDIS"] == f"redis://redis:{redis_port}"
        assert n["SWITCHBOARD_REDIS"] == f"redis://127.0.0.1:{redis_port}"
        # Nothing in a node's own environment overrides a shared setting.
        assert not set(c) & set(env)


def test_admin_environment_agrees(services, plan, env):
    c = compose_env(services["admin"])
    n = {k: v for k, v in plan["admin"]["env"].items() if k not in env and k not in BASE_ENV}
    assert set(c) == set(n) == {"SWITCHBOARD_ADMIN_LISTEN", "SWITCHBOARD_ADMIN_REDIS",
                                "SWITCHBOARD_ADMIN_TOKEN"}
    admin_port = int(env["SB_ADMIN_PORT"])
    assert hostport(c["SWITCHBOARD_ADMIN_LISTEN"]) == ("0.0.0.0", admin_port)
    assert hostport(n["SWITCHBOARD_ADMIN_LISTEN"]) == ("127.0.0.1", admin_port)
    assert c["SWITCHBOARD_ADMIN_REDIS"] == f"redis://redis:{env['SB_REDIS_PORT']}"
    assert n["SWITCHBOARD_ADMIN_REDIS"] == f"redis://127.0.0.1:{env['SB_REDIS_PORT']}"
    # No default token in compose: the variable is required.
    assert re.fullmatch(r"\$\{SWITCHBOARD_ADMIN_TOKEN:\?[^}]+\}", c["SWITCHBOARD_ADMIN_TOKEN"])
    assert n["SWITCHBOARD_ADMIN_TOKEN"] == "<secret>"


def test_lb_environment_agrees(services, plan, env):
    c = compose_env(services["lb"])
    n = {k: v for k, v in plan["lb"]["env"].items() if k not in BASE_ENV}
    keys = {"SB_LB_BIND", "SB_LB_MONITOR_BIND", "SB_NODE1_ADDR", "SB_NODE2_ADDR", "SB_NODE3_ADDR"}
    assert set(c) == set(n) == keys
    assert hostport(c["SB_LB_BIND"])[1] == hostport(n["SB_LB_BIND"])[1] == int(env["SB_LB_PORT"])
    assert (hostport(c["SB_LB_MONITOR_BIND"])[1] == hostport(n["SB_LB_MONITOR_BIND"])[1]
            == int(env["SB_LB_MONITOR_PORT"]))
    for i, name in enumerate(NODES, 1):
        var = f"SB_NODE{i}_ADDR"
        assert c[var] == f"{name}:{env['SB_NODE_PORT']}"
        assert n[var] == plan[name]["env"]["SWITCHBOARD_LISTEN"]
    # Both sides set every variable haproxy.cfg needs (those without a default).
    with open(HAPROXY_CFG) as f:
        cfg = re.sub(r"#.*", "", f.read())
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", cfg))
    assert needed and needed <= set(c) and needed <= set(n)
    # And the same file: mounted by compose, passed by cluster.sh.
    assert any(v.split(":")[0] == "./deploy/haproxy.cfg"
               and v.split(":")[1] == "/usr/local/etc/haproxy/haproxy.cfg"
               for v in services["lb"]["volumes"])
    assert services["lb"]["image"] == "haproxy:2.6"
    assert plan["lb"]["argv"][-2:] == ["-f", HAPROXY_CFG]


def test_same_published_ports(services, plan, env):
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    assert {k for k, v in published.items() if v} == {"lb", "admin"}
    (lb,) = published["lb"]
    assert interpolation_default(lb, "SB_LB_PORT") == env["SB_LB_PORT"]
    assert lb.rsplit(":", 1)[1] == str(hostport(compose_env(services["lb"])["SB_LB_BIND"])[1])
    (admin,) = published["admin"]
    assert admin.startswith("127.0.0.1:"), "the admin is published on the host's loopback only"
    assert interpolation_default(admin, "SB_ADMIN_PORT") == env["SB_ADMIN_PORT"]
    assert plan["lb"]["publish"] == [env["SB_LB_PORT"]]
    assert plan["admin"]["publish"] == [env["SB_ADMIN_PORT"]]
    assert not any(plan[n]["publish"] for n in ("redis", *NODES))


def test_health_checks_agree(services, plan, env):
    for name in SERVICES:
        assert "healthcheck" in services[name], f"compose {name} has no health check"
        c = health_of_compose(services[name])
        n = plan[name]["health"]
        ckind, *crest = c.split()
        nkind, *nrest = n.split()
        assert ckind == nkind, f"{name}: {c} vs {n}"
        if ckind == "http":
            assert crest[1] == nrest[1], f"{name}: compose checks {c}, native {n}"
    assert plan["node1"]["health"].endswith(" /readyz")
    assert plan["admin"]["health"].endswith(" /readyz")
    assert plan["lb"]["health"].endswith(" /healthz")
    # Each check probes the port that service listens on.
    assert health_of_compose(services["node1"]).split()[1] == env["SB_NODE_PORT"]
    assert health_of_compose(services["admin"]).split()[1] == env["SB_ADMIN_PORT"]
    assert health_of_compose(services["lb"]).split()[1] == env["SB_LB_MONITOR_PORT"]
    assert health_of_compose(services["redis"]).split()[1] == env["SB_REDIS_PORT"]
    assert plan["node2"]["health"].split()[1] == plan["node2"]["env"]["SWITCHBOARD_LISTEN"].split(":")[1]


def test_depends_on_agree(services, plan):
    for name in SERVICES:
        deps = services[name].get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, cond in deps.items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}: {cond}"
        assert set(deps) == set(plan[name]["depends"]), name
    assert set(plan["lb"]["depends"]) == set(NODES)


def redis_options(argv):
    """{--option: value} of a redis-server command line (every option takes one value)."""
    args = [a for a in argv if a != "redis-server" and not a.endswith("/redis-server")]
    assert len(args) % 2 == 0, argv
    return dict(zip(args[::2], args[1::2]))


def test_redis_configuration_agrees(services, plan, env):
    cmd = services["redis"]["command"]
    c = redis_options(cmd if isinstance(cmd, list) else cmd.split())
    n = redis_options(plan["redis"]["argv"])
    assert set(n) - set(c) <= REDIS_PLACEMENT
    assert interpolation_default(c.pop("--maxmemory"), "SB_REDIS_MAXMEMORY") == env["SB_REDIS_MAXMEMORY"]
    assert n.pop("--maxmemory") == env["SB_REDIS_MAXMEMORY"]
    assert c == {k: v for k, v in n.items() if k not in REDIS_PLACEMENT}
    assert c["--maxmemory-policy"] == "noeviction"
    assert c["--save"] == "" and c["--appendonly"] == "no"
    assert services["redis"]["image"] == "redis:7"
    assert n["--bind"] == "127.0.0.1" and n["--port"] == env["SB_REDIS_PORT"]


def test_ports_can_be_moved_and_stay_consistent():
    plan, _ = run_plan({"SB_PORTS": "auto", "SB_LB_PORT": "18000"})
    ports = set()
    for name in NODES:
        ports.add(plan[name]["env"]["SWITCHBOARD_LISTEN"].split(":")[1])
        assert plan[name]["env"]["SWITCHBOARD_REDIS"] == \
            "redis://127.0.0.1:" + plan["redis"]["health"].split()[1]
    assert len(ports) == 3
    assert plan["lb"]["env"]["SB_LB_BIND"] == "127.0.0.1:18000"
    assert [plan["lb"]["env"][f"SB_NODE{i}_ADDR"] for i in (1, 2, 3)] == \
        [plan[n]["env"]["SWITCHBOARD_LISTEN"] for n in NODES]


def test_cluster_env_format_is_enforced(tmp_path):
    """cluster.sh refuses what compose would read differently (quotes, spaces, ${})."""
    root = tmp_path / "repo"
    (root / "deploy").mkdir(parents=True)
    shutil.copy(CLUSTER_SH, root / "deploy" / "cluster.sh")
    shutil.copy(HAPROXY_CFG, root / "deploy" / "haproxy.cfg")
    with open(CLUSTER_ENV) as f:
        text = f.read()
    (root / "deploy" / "cluster.env").write_text(text + 'SWITCHBOARD_LOG_LEVEL2="debug"\n')
    r = subprocess.run(["bash", str(root / "deploy" / "cluster.sh"), "plan"], env=BASE_ENV,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "not KEY=value" in r.stderr


# ---- the load balancer configs ------------------------------------------------------------

HAPROXY_ENV = {"SB_LB_BIND": "127.0.0.1:18000", "SB_LB_MONITOR_BIND": "127.0.0.1:18404",
               "SB_NODE1_ADDR": "127.0.0.1:18081", "SB_NODE2_ADDR": "127.0.0.1:18082",
               "SB_NODE3_ADDR": "127.0.0.1:18083"}


def haproxy_check(extra):
    if not shutil.which("haproxy"):
        pytest.skip("haproxy is not installed (deploy/install-deps.sh installs it)")
    return subprocess.run(["haproxy", "-c", "-f", HAPROXY_CFG], env=dict(BASE_ENV, **extra),
                          capture_output=True, text=True, timeout=30)


def test_haproxy_cfg_is_valid_with_native_and_compose_variables(services, plan):
    r = haproxy_check({k: v for k, v in plan["lb"]["env"].items() if k.startswith("SB_")})
    assert r.returncode == 0, r.stdout + r.stderr
    # Compose's values, with the service names mapped to loopback addresses so that the check
    # resolves nothing (inside compose Docker's DNS does that).
    c = compose_env(services["lb"])
    mapped = {k: re.sub(r"^node(\d):", lambda m: f"127.0.0.{10 + int(m.group(1))}:", v)
              for k, v in c.items()}
    assert mapped != c
    r = haproxy_check(mapped)
    assert r.returncode == 0, r.stdout + r.stderr


def test_haproxy_cfg_has_no_silent_defaults():
    r = haproxy_check({})
    assert r.returncode != 0, "haproxy.cfg must fail without its addresses"


def active_lines(path):
    with open(path) as f:
        return [re.sub(r"#.*", "", l).strip() for l in f if re.sub(r"#.*", "", l).strip()]


def test_haproxy_rules():
    lines = active_lines(HAPROXY_CFG)
    text = "\n".join(lines)
    assert "mode http" in lines
    assert "balance leastconn" in lines
    assert "timeout tunnel 1h" in lines
    assert "http-check send meth GET uri /readyz" in text
    assert "http-check expect status 200" in lines
    # A node turning unready must not cut its established tunnels (see the comment there).
    assert "shutdown-sessions" not in text
    assert re.search(r"acl path_ws\s+path /ws$", text, re.M)
    m = re.search(r"^acl path_demo\s+path (.+)$", text, re.M)
    assert m and set(m.group(1).split()) == DEMO_PATHS
    assert re.search(r"deny deny_status 404 unless path_ws or path_demo or path_peerjs$", text, re.M)
    assert re.search(r"acl path_peerjs\s+path /peerjs$", text, re.M)
    assert re.search(r"acl path_peerjs\s+path_beg /peerjs/$", text, re.M)
    assert re.search(r"deny deny_status 405 unless method_ok or path_peerjs method_preflight$", text, re.M)
    assert len(re.findall(r"^server node\d ", text, re.M)) == 3


def render_nginx(values):
    with open(NGINX_CONF) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("${" + k + "}", v)
    return text


def test_nginx_conf_is_valid(tmp_path):
    nginx = shutil.which("nginx") or (os.access("/usr/sbin/nginx", os.X_OK) and "/usr/sbin/nginx")
    if not nginx:
        pytest.skip("nginx is not installed (only the HAProxy config is checked by a tool)")
    values = {k: v for k, v in HAPROXY_ENV.items() if k != "SB_LB_MONITOR_BIND"}
    text = render_nginx(values)
    assert "${SB_" not in text, "nginx.conf uses a variable the docs do not list"
    # pid in the temp prefix; everything else as written.
    text = text.replace("pid /run/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    r = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf),
                        "-e", str(tmp_path / "error.log")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nginx_rules():
    text = "\n".join(active_lines(NGINX_CONF))
    assert "least_conn;" in text
    assert "location = /ws {" in text
    assert re.search(r"location / \{\s*return 404;", text)
    # The one regex location: it must take exactly the demo paths (nginx's PCRE and Python's
    # re agree on this simple pattern).
    (pattern,) = re.findall(r"location ~ (\S+) \{", text)
    for path in DEMO_PATHS:
        assert re.search(pattern, path), path
    for path in PRIVATE_PATHS + ["/ws"]:
        assert not re.search(pattern, path), path
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    assert "proxy_read_timeout 1h;" in text
    # PeerJS: /peerjs exactly and everything below /peerjs/ (its WebSocket too).
    assert "location = /peerjs {" in text
    assert "proxy_read_timeout 1h;" in text.split("location /peerjs/ {", 1)[1].split("location", 1)[0]
    # proxy_set_header only at server level (a location with its own would drop these).
    assert not re.search(r"location[^{]*\{[^}]*proxy_set_header", text)
    # The documented envsubst line names exactly the placeholders the file uses.
    used = set(re.findall(r"\$\{(SB_[A-Z0-9_]+)\}", text))
    with open(NGINX_CONF) as f:
        doc = re.search(r"envsubst '([^']+)'", f.read()).group(1)
    assert set(re.findall(r"\$\{(SB_[A-Z0-9_]+)\}", doc)) == used


# ---- images, units, Kubernetes ------------------------------------------------------------

def words(text):
    return set(re.split(r"[\s\\]+", text))


def test_dockerfile_targets_and_runtime():
    with open(DOCKERFILE) as f:
        # Comment lines out, so a package named only in a comment does not count.
        text = "".join(l for l in f if not l.lstrip().startswith("#"))
    stages = {alias: base for base, alias in
              re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)}
    assert {"build", "runtime", "node", "admin"} <= set(stages)
    assert stages["node"] == stages["admin"] == "runtime"
    runtime = text.split(" AS runtime", 1)[1].split("\nFROM ", 1)[0]
    for pkg in ("libwebsockets-evlib-uv", "libhiredis0.14", "libjansson4", "libuv1", "libjwt0",
                "curl"):
        assert pkg in words(runtime), pkg
    assert re.search(r"^USER\s+(?!0\b|root\b)\S+", runtime, re.M), "runtime runs as root"
    for target, path in (("node", "/livez"), ("admin", "/livez")):
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^HEALTHCHECK .*\\\n\s+CMD curl .*" + path, stage, re.M), target
        assert f'CMD ["switchboard-{target}"]' in stage
    # The build stage installs every build dependency that deploy/install-deps.sh lists.
    with open(os.path.join(DEPLOY, "install-deps.sh")) as f:
        deps = f.read()
    build_pkgs = re.search(r"pkgs=\(([^)]*)\)", deps).group(1).split()
    build = text.split(" AS build", 1)[1].split("\nFROM ", 1)[0]
    for pkg in build_pkgs:
        if pkg.startswith("redis"):
            continue  # a server the tests run, not a build input
        assert pkg in words(build), f"build stage lacks {pkg}"


def unit(path):
    """{key: [values]} of a systemd unit (all sections merged)."""
    out = {}
    for line in active_lines(path):
        if line.startswith("[") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


UNITS = ["switchboard-node.service", "switchboard-node@.service", "switchboard-admin.service"]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit(name, env):
    u = unit(os.path.join(DEPLOY, "systemd", name))
    drain_s = int(env["SWITCHBOARD_DRAIN_TIMEOUT_MS"]) / 1000
    stop = u["TimeoutStopSec"][-1]
    assert stop.endswith("s") and int(stop[:-1]) > drain_s + 5
    assert u["KillSignal"] == ["SIGTERM"]
    assert u["Restart"] == ["on-failure"]
    assert u["LimitNOFILE"] == ["1048576"]
    assert u["NoNewPrivileges"] == ["yes"]
    assert u["ProtectSystem"] == ["strict"]
    assert u["CapabilityBoundingSet"] == [""]
    assert "/etc/switchboard/switchboard.env" in u["EnvironmentFile"]
    binary = "switchboard-admin" if "admin" in name else "switchboard-node"
    assert u["ExecStart"][0].endswith("/" + binary)


def test_systemd_units_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for b in ("switchboard-node", "switchboard-admin"):
        (fake_bin / b).write_text("#!/bin/sh\n")
        (fake_bin / b).chmod(0o755)
    for f in ("switchboard.env", "node.env", "node-1.env", "admin.env", "admin.token"):
        (tmp_path / f).write_text("")
    names = []
    for name in UNITS:
        with open(os.path.join(DEPLOY, "systemd", name)) as f:
            text = f.read().replace("/usr/local/bin/", f"{fake_bin}/")
            text = text.replace("/etc/switchboard/", f"{tmp_path}/")
        name = name.replace("@.", "@1.")
        (tmp_path / name).write_text(text)
        names.append(f"./{name}")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values: any complaint about our files counts.
    complaints = [l for l in (r.stdout + r.stderr).splitlines() if str(tmp_path) in l]
    assert r.returncode == 0 and not complaints, "\n".join(complaints) or r.stderr


def k8s_documents():
    docs = []
    kdir = os.path.join(DEPLOY, "k8s")
    with open(os.path.join(kdir, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    if shutil.which("kubectl"):
        r = subprocess.run(["kubectl", "kustomize", kdir], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    else:
        for res in kust["resources"]:
            with open(os.path.join(kdir, res)) as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_kubernetes(env):
    docs = k8s_documents()
    cm = docs[("ConfigMap", "switchboard-config")]["data"]
    assert cm == {k: v for k, v in env.items() if k.startswith("SWITCHBOARD_")}

    node = docs[("Deployment", "switchboard-node")]["spec"]["template"]["spec"]
    (c,) = node["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    drain_s = int(env["SWITCHBOARD_DRAIN_TIMEOUT_MS"]) / 1000
    assert node["terminationGracePeriodSeconds"] > drain_s + int(pre[1])
    assert {"configMapRef": {"name": "switchboard-config"}} in c["envFrom"]
    own = {e["name"] for e in c["env"]}
    assert own == {"SWITCHBOARD_ID", "SWITCHBOARD_LISTEN", "SWITCHBOARD_REDIS"}

    admin = docs[("Deployment", "switchboard-admin")]["spec"]["template"]["spec"]
    (a,) = admin["containers"]
    assert a["readinessProbe"]["httpGet"]["path"] == "/readyz"
    token = {e["name"]: e.get("value") for e in a["env"]}["SWITCHBOARD_ADMIN_TOKEN_FILE"]
    (vol,) = [v for v in admin["volumes"] if "secret" in v]
    assert vol["secret"]["secretName"] == "switchboard-admin"
    assert any(m["name"] == vol["name"] and token.startswith(m["mountPath"] + "/")
               for m in a["volumeMounts"])
    with open(os.path.join(DEPLOY, "k8s", "admin-secret.yaml")) as f:
        secret = yaml.safe_load(f)
    assert secret["metadata"]["name"] == "switchboard-admin"
    assert token.rsplit("/", 1)[1] in secret["stringData"]

    redis = docs[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"][0]
    opts = redis_options(redis["args"])
    assert opts["--maxmemory-policy"] == "noeviction"
    assert opts["--maxmemory"] == env["SB_REDIS_MAXMEMORY"]

    paths = {p["path"]: p["pathType"]
             for r in docs[("Ingress", "switchboard")]["spec"]["rules"]
             for p in r["http"]["paths"]}
    assert paths == {**{p: "Exact" for p in DEMO_PATHS | {"/ws"}}, "/peerjs": "Prefix"}


def test_load_balancers_forward_the_nodes_static_routes():
    """DEMO_PATHS is what the node serves as its demo page (node/server.c static_routes)."""
    src = os.path.join(ROOT, "node", "server.c")
    if not os.path.exists(src):
        pytest.skip("node/server.c not written yet")
    with open(src) as f:
        m = re.search(r"static_routes\[\]\s*=\s*\{(.*?)\n\};", f.read(), re.S)
    if not m:
        pytest.skip("node/server.c has no static_routes table any more: update DEMO_PATHS by hand")
    routes = {path for path, _ in re.findall(r'\{\s*"([^"]+)"\s*,\s*"([^"]+)"\s*\}', m.group(1))}
    assert routes == DEMO_PATHS


def test_cluster_sh_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    r = subprocess.run(["shellcheck", "-x", CLUSTER_SH, CLUSTER_INIT], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def help_env_vars(binary):
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    return set(re.findall(r"^\s+--[a-z0-9-]+\s+([A-Z][A-Z0-9_]+)\s*$", r.stdout + r.stderr, re.M))


@pytest.mark.parametrize("binary,prefix,own", [
    ("node", "SWITCHBOARD_", {"SWITCHBOARD_ID", "SWITCHBOARD_LISTEN", "SWITCHBOARD_REDIS"}),
    ("admin", "SWITCHBOARD_ADMIN_", {"SWITCHBOARD_ADMIN_LISTEN", "SWITCHBOARD_ADMIN_REDIS",
                                     "SWITCHBOARD_ADMIN_TOKEN_FILE"}),
])
def test_settings_name_real_options(binary, prefix, own, env):
    """The binaries ignore environment variables they do not know, so a misspelt setting in
    cluster.env would silently do nothing: every name must be one `--help` lists."""
    build = os.environ.get("SWITCHBOARD_BUILD", os.path.join(ROOT, "build"))
    path = os.environ.get("SB_NODE_BIN" if binary == "node" else "SB_ADMIN_BIN",
                          os.path.join(build, binary, f"switchboard-{binary}"))
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is not built yet")
    known = help_env_vars(path)
    assert known, f"cannot read the options from {path} --help"
    names = {k for k in env if k.startswith(prefix)} | own
    if binary == "node":
        names = {k for k in names if not k.startswith("SWITCHBOARD_ADMIN_")}
    unknown = sorted(names - known)
    assert not unknown, f"not options of switchboard-{binary}: {unknown}"


# ---- what a real engine needs (tests/deploy/compose.sh runs the file for real) -------------

def test_compose_file_starts_under_every_engine(compose, services):
    """Three faults found by starting the stack with docker.io 20.10 / docker-compose 1.29 and
    podman-compose 1.0.3 offline; the compose suite would catch them late and slowly."""
    # docker-compose 1.x rejects a top-level name (the project name comes from -p or
    # COMPOSE_PROJECT_NAME).
    assert "name" not in compose
    # An engine whose own hard limit is lower cannot grant 1048576 open files: overridable.
    for n in NODES:
        assert interpolation_default(str(services[n]["ulimits"]["nofile"]), "SB_NOFILE") == "1048576"
    # One CMD-SHELL string: podman-compose mangles the quoting of a ["CMD", "bash", "-c", ...].
    test = services["lb"]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD-SHELL" and len(test) == 2
    # No anonymous volume left by down: redis:7 declares /data a volume.
    assert "/data" in services["redis"].get("tmpfs", [])
    assert "volumes" not in services["redis"]


def test_dockerfile_needs_no_registry_frontend():
    with open(DOCKERFILE) as f:
        first = f.readline()
    assert not re.match(r"#\s*syntax\s*=", first, re.I), "BuildKit would fetch a frontend image"


def test_build_context_follows_the_dockerignore():
    """tests/deploy/build_context.py sends the legacy builder what BuildKit would send."""
    import io
    import tarfile
    r = subprocess.run([os.environ.get("PYTHON", "/usr/bin/python3"),
                        os.path.join(ROOT, "tests", "deploy", "build_context.py"), ROOT,
                        os.path.join(DEPLOY, "Dockerfile.dockerignore")],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = tarfile.open(fileobj=io.BytesIO(r.stdout)).getnames()
    tops = {n.split("/", 1)[0] for n in names}
    assert {"CMakeLists.txt", "node", "admin", "common", "lua", "client", "deploy"} <= tops
    assert not tops & {".git", "build", "tests", "docs", ".env"}
    assert not [t for t in tops if t.startswith("build-") or t.startswith("build_")]
    assert not [n for n in names if "/node_modules/" in n or n.endswith(".pyc")]


# ---- the Redis Cluster variant: docker-compose.cluster.yml against SB_REDIS_MODE=cluster ----

REDIS_CLUSTER = ["redis", "redis2", "redis3", "redis4", "redis5", "redis6"]
CLUSTER_SERVICES = SERVICES | set(REDIS_CLUSTER) | {"redis-init"}
# Where a native cluster node must differ from a container: addresses and files.
CLUSTER_PLACEMENT = REDIS_PLACEMENT | {"--cluster-port", "--cluster-config-file"}
NET = "${SB_REDIS_NET:-172.30.77}"


def merge_override(base, override):
    """docker-compose's merge of an override file, for the keys docker-compose.cluster.yml
    uses: environment and depends_on merge by key, tmpfs is a set union, the rest replaces;
    the top-level networks are the override's."""
    out = {name: dict(svc) for name, svc in base["services"].items()}
    out["_networks"] = override["networks"]
    for name, svc in override["services"].items():
        t = out.setdefault(name, {})
        for k, v in svc.items():
            if k in ("environment", "depends_on") and k in t:
                t[k] = {**t[k], **v}
            elif k == "tmpfs" and k in t:
                t[k] = sorted(set(t[k]) | set(v))
            else:
                t[k] = v
    return out


def address_of(svc):
    return svc["networks"]["default"]["ipv4_address"]


@pytest.fixture(scope="module")
def cservices(compose):
    with open(COMPOSE_CLUSTER) as f:
        return merge_override(compose, yaml.safe_load(f))


@pytest.fixture(scope="module")
def cplan_order():
    return run_plan({"SB_REDIS_MODE": "cluster"})


@pytest.fixture(scope="module")
def cplan(cplan_order):
    return cplan_order[0]


def test_cluster_merge_is_what_docker_compose_does(cservices):
    """merge_override above against the real tool, where it is installed."""
    dc = shutil.which("docker-compose") or (os.access("/usr/bin/docker-compose", os.X_OK)
                                            and "/usr/bin/docker-compose")
    if not dc:
        pytest.skip("docker-compose is not installed (tests/deploy/compose.sh installs it)")
    r = subprocess.run([dc, "-f", COMPOSE, "-f", COMPOSE_CLUSTER, "config"], cwd=ROOT,
                       env=dict(BASE_ENV, SWITCHBOARD_ADMIN_TOKEN="x" * 24,
                                COMPOSE_PROJECT_NAME="agree"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    real = yaml.safe_load(r.stdout)["services"]
    cservices = dict(cservices)
    nets = cservices.pop("_networks")
    assert yaml.safe_load(r.stdout)["networks"] == yaml.safe_load(
        yaml.safe_dump(nets).replace(NET, "172.30.77"))
    assert set(real) == set(cservices) == CLUSTER_SERVICES
    for name in CLUSTER_SERVICES:
        # (config also inlines env_file and interpolates: compare what the files declare.)
        renv = compose_env(real[name])
        for k, v in compose_env(cservices[name]).items():
            assert k in renv and ("${" in v or renv[k] == v), (name, k, renv.get(k), v)
        assert set(real[name].get("depends_on", {})) == set(cservices[name].get("depends_on", {}))
        assert sorted(real[name].get("tmpfs", [])) == sorted(cservices[name].get("tmpfs", []))
        if name.startswith("redis") and name != "redis-init":
            assert address_of(real[name]) == address_of(cservices[name]).replace(NET, "172.30.77")
    assert [str(a) for a in real["redis"]["command"]] == \
        [str(a).replace("${SB_REDIS_MAXMEMORY:-256mb}", "256mb")
         .replace("${SB_REDIS_CLUSTER_NODE_TIMEOUT_MS:-3000}", "3000")
         for a in cservices["redis"]["command"]]


def test_cluster_same_services(cservices, cplan_order):
    plan, order = cplan_order
    assert set(cservices) - {"_networks"} == set(plan) == CLUSTER_SERVICES
    for name, svc in cservices.items():
        if name == "_networks":
            continue
        for dep in svc.get("depends_on", {}):
            assert order.index(dep) < order.index(name), f"{name} starts before {dep}"
    # Everything but Redis is docker-compose.yml's, unchanged but for the Redis URL.
    single, _ = run_plan()
    for name in ("node1", "node2", "node3", "admin", "lb"):
        assert plan[name]["argv"] == single[name]["argv"]
        assert {k: v for k, v in plan[name]["env"].items() if "REDIS" not in k} == \
            {k: v for k, v in single[name]["env"].items() if "REDIS" not in k}


def compose_redis_options(svc):
    cmd = svc["command"]
    return redis_options(cmd if isinstance(cmd, list) else cmd.split())


def test_cluster_redis_configuration_agrees(compose, cservices, cplan, env):
    single = compose_redis_options(compose["services"]["redis"])
    for name in REDIS_CLUSTER:
        svc = cservices[name]
        c = compose_redis_options(svc)
        n = redis_options(cplan[name]["argv"])
        assert set(n) - set(c) <= CLUSTER_PLACEMENT, name
        assert interpolation_default(c.pop("--maxmemory"), "SB_REDIS_MAXMEMORY") == \
            n.pop("--maxmemory") == env["SB_REDIS_MAXMEMORY"]
        assert interpolation_default(c.pop("--cluster-node-timeout"),
                                     "SB_REDIS_CLUSTER_NODE_TIMEOUT_MS") == \
            n.pop("--cluster-node-timeout") == env["SB_REDIS_CLUSTER_NODE_TIMEOUT_MS"]
        assert {k: v for k, v in c.items() if k not in CLUSTER_PLACEMENT} == \
            {k: v for k, v in n.items() if k not in CLUSTER_PLACEMENT}, name
        # The single Redis's settings, and the cluster's own.
        for k, v in single.items():
            if k != "--maxmemory":
                assert c[k] == v, (name, k)
        assert c["--cluster-enabled"] == "yes"
        assert c["--cluster-require-full-coverage"] == "no"
        assert svc["image"] == "redis:7"
        assert "/data" in svc.get("tmpfs", []), f"{name}: an anonymous volume at /data"
        # nodes.conf outside the tmpfs, so that a restarted container keeps its identity.
        assert not c["--cluster-config-file"].startswith("/data/")
        assert svc.get("restart") == "unless-stopped"
        assert n["--bind"] == "127.0.0.1"
        assert n["--cluster-config-file"] == os.path.join(n["--dir"], "nodes.conf")
    ports = [cplan[x]["argv"][cplan[x]["argv"].index("--port") + 1] for x in REDIS_CLUSTER]
    assert ports == [str(int(env["SB_REDIS_PORT"]) + i) for i in range(6)]
    # Fixed, distinct addresses (what each announces and what the seeds name), outside the
    # range the other containers are given, inside the network's subnet.
    addrs = [address_of(cservices[x]) for x in REDIS_CLUSTER]
    assert addrs == [f"{NET}.{11 + i}" for i in range(6)]
    (ipam,) = cservices["_networks"]["default"]["ipam"]["config"]
    assert ipam == {"subnet": f"{NET}.0/24", "ip_range": f"{NET}.128/25"}


def seeds(url):
    assert url.startswith("redis-cluster://"), url
    return url[len("redis-cluster://"):].split(",")


def test_cluster_seeds_name_every_redis(cservices, cplan):
    """Every Redis, by address (a name would be resolved on the node's event loop)."""
    native_port = {x: cplan[x]["argv"][cplan[x]["argv"].index("--port") + 1]
                   for x in REDIS_CLUSTER}
    for name, var in [(n, "SWITCHBOARD_REDIS") for n in NODES] + \
            [("admin", "SWITCHBOARD_ADMIN_REDIS")]:
        assert seeds(compose_env(cservices[name])[var]) == \
            [f"{address_of(cservices[x])}:6379" for x in REDIS_CLUSTER]
        assert seeds(cplan[name]["env"][var]) == \
            [f"127.0.0.1:{native_port[x]}" for x in REDIS_CLUSTER]


def test_cluster_init_is_one_script_with_the_same_arguments(cservices, cplan):
    svc = cservices["redis-init"]
    mount = "/usr/local/bin/redis-cluster-init.sh"
    assert f"./deploy/redis-cluster-init.sh:{mount}:ro" in svc["volumes"]
    assert svc["entrypoint"] == ["sh", mount]
    assert svc["restart"] == "no" and "healthcheck" not in svc
    argv = cplan["redis-init"]["argv"]
    assert argv[0] == CLUSTER_INIT and os.access(CLUSTER_INIT, os.X_OK)
    native_port = {cplan[x]["argv"][cplan[x]["argv"].index("--port") + 1]: x
                   for x in REDIS_CLUSTER}
    # Each native address stands for the service of that port, in the same order.
    mapped = [a if ":" not in a else f"{address_of(cservices[native_port[a.split(':')[1]]])}:6379"
              for a in argv[1:]]
    assert [str(a) for a in svc["command"]] == mapped
    assert mapped[:2] == ["-r", "1"]
    assert cplan["redis-init"]["health"] == "exit 0"


def test_cluster_health_checks_and_start_order_agree(cservices, cplan):
    for name in CLUSTER_SERVICES - {"redis-init"}:
        c = health_of_compose(cservices[name])
        n = cplan[name]["health"]
        assert c.split()[0] == n.split()[0], f"{name}: {c} vs {n}"
        if name.startswith("redis"):
            assert c == "redis-cluster 6379"
            # Unhealthy until redis-init formed the cluster: that must not count as failing.
            assert cservices[name]["healthcheck"]["start_period"] in ("60s", "1m")
    for name in CLUSTER_SERVICES:
        deps = cservices[name].get("depends_on", {})
        assert set(deps) == set(cplan[name]["depends"]), name
        for dep, cond in deps.items():
            want = {"redis-init": "service_completed_successfully"}.get(
                dep, "service_started" if name == "redis-init" else "service_healthy")
            assert cond == {"condition": want}, f"{name} -> {dep}: {cond}"
    for name in NODES + ["admin"]:
        assert set(cplan[name]["depends"]) == {"redis", "redis-init"}
    assert set(cplan["redis-init"]["depends"]) == set(REDIS_CLUSTER)


def test_cluster_ports_can_be_moved_and_stay_consistent():
    plan, _ = run_plan({"SB_REDIS_MODE": "cluster", "SB_PORTS": "auto"})
    ports = [plan[x]["argv"][plan[x]["argv"].index(opt) + 1]
             for x in REDIS_CLUSTER for opt in ("--port", "--cluster-port")]
    assert len(set(ports)) == 12
    assert [a.split(":")[1] for a in plan["redis-init"]["argv"][3:]] == ports[::2]
    assert plan["node2"]["env"]["SWITCHBOARD_REDIS"] == \
        "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[::2])


def test_cluster_mode_is_checked():
    e = dict(BASE_ENV, SB_REDIS_MODE="sharded")
    r = subprocess.run(["bash", CLUSTER_SH, "plan"], env=e, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "SB_REDIS_MODE" in r.stderr
