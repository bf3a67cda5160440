#!/usr/bin/env python3
"""Checks of the PayFlow dashboards and alert rules (run by scripts/check-observability.sh).

  static                 rules (promtool check/test of every rules file, plain file == PrometheusRule,
                         runbook anchors), dashboards (JSON, uids, variables, datasource and namespace
                         filters), every kustomization under grafana/ (renders; release label and
                         namespace of each install flavour), the scrape monitors (they select exactly
                         the operator's pods and Service that serve metrics)
  traffic GATEWAY [PROM NS]  registers two users, sends money (and one refused transfer), reads
                         notifications; with PROM, lets Prometheus see the first transfer's series first
  scraped PROM NS N      waits until Prometheus has scraped N targets of namespace NS
  exported URL...        every metric name used by a dashboard or rule is in one of these /metrics
  queries PROM NS        every dashboard query returns a series from Prometheus PROM (namespace NS)
  names                  prints the metric names used, with where they are used

Standard library plus PyYAML (Debian python3-yaml). Metric names come from the PromQL itself,
never from a hand-kept list.
"""
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = GRAFANA / "alerts" / "payflow.rules.yaml"
PROMETHEUS_RULE = GRAFANA / "alerts" / "prometheusrule.yaml"
RULE_TESTS = GRAFANA / "alerts" / "tests.yaml"
MONITORS = GRAFANA / "monitors"
# The operator's desired objects for a full PayFlow, as its golden test keeps them.
OPERATOR_GOLDEN = ROOT / "operator" / "tests" / "golden" / "full.yaml"
OPERATOR_MANIFESTS = ROOT / "manifests" / "operator"
# Install flavours: kustomization -> (namespace, release label the Prometheus selects).
FLAVOURS = {"kube-prometheus-stack": ("monitoring", "kube-prometheus-stack"), "microk8s": ("observability", "kube-prom-stack")}
MONITORING_KINDS = ("PrometheusRule", "PodMonitor", "ServiceMonitor")
# Series Prometheus makes itself for every target: used by rules, exported by nobody.
SYNTHETIC = {"up"}
RUNBOOK = ROOT / "docs" / "runbook.md"
# Where metric names are defined (only to explain a missing name, never as the list to check).
SOURCES = [p for d in ("services", "operator") for p in (ROOT / d).glob("**/src/**/*.rs")]
# Operator series describe PayFlows in other namespaces; they carry that namespace here.
NAMESPACE_FILTERS = ('namespace="$namespace"', 'payflow_namespace="$namespace"')
DS_VAR = "${datasource}"

# ------------------------------------------------------------------------- PromQL tokenizer

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "limitk", "limit_ratio",
}
# Keywords followed by a parenthesised list of label names (not metrics).
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(
    r"""(?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      |(?P<matchers>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^}"'])*\})
      |(?P<range>\[[^\]]*\])
      |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.X,
)


def selectors(expr):
    """[(metric name, label matchers text or "")] for every metric selector in a PromQL expression."""
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "space"]
    found, i = [], 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in LABEL_LISTS and nxt[1] == "(":
            i = _skip_parens(tokens, i + 1)
            continue
        if kind == "ident" and text.lower() not in KEYWORDS and nxt[1] != "(":
            found.append((text, nxt[1] if nxt[0] == "matchers" else ""))
        i += 1
    return found


def _skip_parens(tokens, i):
    depth = 0
    while i < len(tokens):
        depth += {"(": 1, ")": -1}.get(tokens[i][1], 0)
        i += 1
        if depth == 0:
            break
    return i


def family(name):
    """The metric family a sample name belongs to (a histogram's _bucket/_sum/_count)."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


# ------------------------------------------------------------------------- sources of PromQL


def dashboard_queries():
    """[(where, expr)] of every panel target of every dashboard, plus the namespace variable."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in panels(board):
            for t in panel.get("targets", []):
                out.append((f"{path.name}: {panel.get('title')} [{t.get('refId')}]", t.get("expr", "")))
    return out


def panels(board):
    for p in board.get("panels", []):
        yield from p.get("panels", []) if p.get("type") == "row" else [p]


def rule_queries():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(f"{RULES.name}: {r.get('alert') or r.get('record')}", r["expr"]) for g in groups for r in g["rules"]]


def variable_queries():
    out = []
    for path in DASHBOARDS:
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v.get("type") == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                m = re.match(r"label_values\((\w+)", q)
                if m:
                    out.append((f"{path.name}: variable {v['name']}", m.group(1)))
    return out


def used_names():
    """{metric name: [where used]} over dashboards, variables and rules."""
    names = {}
    for where, expr in dashboard_queries() + variable_queries() + rule_queries():
        for name, _ in selectors(expr):
            names.setdefault(name, []).append(where)
    return names


# ------------------------------------------------------------------------- checks


class Failures(list):
    def check(self, ok, message):
        if not ok:
            self.append(message)
        return ok

    def report(self, title):
        """Prints the outcome; True when nothing failed."""
        if self:
            print(f"FAIL {title}:")
            for f in self:
                print(f"  - {f}")
            return False
        print(f"ok   {title}")
        return True


def run(cmd, fails):
    r = subprocess.run(cmd, capture_output=True, text=True)
    fails.check(r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def yaml_files(root):
    """{path: document} of every single-document YAML file under root."""
    out = {}
    for path in sorted(root.rglob("*.y*ml")):
        try:
            out[path] = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue  # kustomizations and CRs are single documents; anything else is not ours
    return out


def check_rules_tested():
    """Every plain rules file under grafana/ is a rule_file of a promtool test file, and every test
    file passes: a new rules file without tests fails here."""
    fails = Failures()
    docs = yaml_files(GRAFANA)
    rule_files = [p for p, d in docs.items() if isinstance(d, dict) and "groups" in d and "kind" not in d]
    test_files = [p for p, d in docs.items() if isinstance(d, dict) and "tests" in d and "rule_files" in d]
    fails.check(RULES in rule_files and RULE_TESTS in test_files, f"expected {RULES.name} and {RULE_TESTS.name}")
    tested = {(t.parent / f).resolve() for t in test_files for f in docs[t]["rule_files"]}
    for path in rule_files:
        fails.check(path.resolve() in tested, f"{path.relative_to(ROOT)}: no promtool test file lists it in rule_files")
        run(["promtool", "check", "rules", path], fails)
    for path in test_files:
        # promtool resolves rule_files relative to the test file.
        run(["promtool", "test", "rules", path], fails)
    names = ", ".join(str(p.relative_to(GRAFANA)) for p in rule_files + test_files)
    return fails.report(f"every rules file has promtool tests and passes them ({names})")


def check_rules():
    fails = Failures()
    run(["promtool", "check", "rules", RULES], fails)
    plain = yaml.safe_load(RULES.read_text())
    crd = yaml.safe_load(PROMETHEUS_RULE.read_text())
    fails.check(crd.get("apiVersion") == "monitoring.coreos.com/v1" and crd.get("kind") == "PrometheusRule",
                f"{PROMETHEUS_RULE.name} is not a monitoring.coreos.com/v1 PrometheusRule")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
        yaml.safe_dump({"groups": crd["spec"]["groups"]}, tmp)
        tmp.flush()
        run(["promtool", "check", "rules", tmp.name], fails)
    fails.check(plain["groups"] == crd["spec"]["groups"],
                f"the groups of {PROMETHEUS_RULE.name} differ from {RULES.name}")
    anchors = {slug(m) for m in re.findall(r"^#+\s+(.*?)\s*$", RUNBOOK.read_text(), re.M)}
    tested = set(re.findall(r"alertname:\s*(\S+)", RULE_TESTS.read_text()))
    for g in plain["groups"]:
        for r in g["rules"]:
            name = r.get("alert")
            if not name:
                continue
            labels, notes = r.get("labels", {}), r.get("annotations", {})
            fails.check(labels.get("severity") in ("critical", "warning", "info"), f"{name}: severity")
            for key in ("summary", "description", "runbook_url"):
                fails.check(bool(notes.get(key)), f"{name}: no {key} annotation")
            url = notes.get("runbook_url", "")
            fails.check(url.split("#")[0].endswith("docs/runbook.md") and url.split("#")[-1] in anchors,
                        f"{name}: runbook_url {url} has no matching heading in docs/runbook.md")
            fails.check(name in tested, f"{name}: no test in {RULE_TESTS.name}")
    return fails.report(f"alert rules ({RULES.name}, {PROMETHEUS_RULE.name}, {RULE_TESTS.name})")


def kustomize(path):
    """The objects `kubectl kustomize path` renders, or an error message."""
    r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"kubectl kustomize {path.relative_to(ROOT)}: {r.stderr.strip()}"
    return [d for d in yaml.safe_load_all(r.stdout) if d], None


def check_kustomizations():
    """Every kustomization under grafana/ renders; each install flavour puts everything in its
    namespace with the release label its Prometheus selects, and ships the tested rules as is."""
    fails = Failures()
    dirs = sorted(k.parent for k in GRAFANA.rglob("kustomization.yaml"))
    rendered = {}
    for d in dirs:
        objs, err = kustomize(d)
        if fails.check(err is None, err) and fails.check(objs, f"{d.relative_to(ROOT)} renders nothing"):
            rendered[d] = objs
    plain = yaml.safe_load(RULES.read_text())["groups"]
    for d, objs in rendered.items():
        for o in objs:
            if o.get("kind") == "PrometheusRule":
                fails.check(o["spec"]["groups"] == plain,
                            f"{d.relative_to(ROOT)}: the PrometheusRule's groups differ from {RULES.name}")
    for flavour, (namespace, release) in FLAVOURS.items():
        objs = rendered.get(GRAFANA / flavour)
        if not fails.check(objs, f"no grafana/{flavour} kustomization"):
            continue
        kinds = sorted(o["kind"] for o in objs)
        fails.check(kinds == sorted(["ConfigMap", *MONITORING_KINDS]),
                    f"grafana/{flavour}: expected the dashboards, rules and monitors, got {kinds}")
        for o in objs:
            meta, what = o["metadata"], f"grafana/{flavour}: {o['kind']} {o['metadata'].get('name')}"
            fails.check(meta.get("namespace") == namespace, f"{what}: namespace {meta.get('namespace')}, not {namespace}")
            if o["kind"] in MONITORING_KINDS:
                got = meta.get("labels", {}).get("release")
                fails.check(got == release, f"{what}: label release={got}, not {release}")
    # The bundle without CRDs stays free of them.
    for o in rendered.get(GRAFANA, []):
        fails.check(o["kind"] not in MONITORING_KINDS, f"grafana (no CRDs needed) renders a {o['kind']}")
    return fails.report(f"kustomizations ({', '.join(str(d.relative_to(ROOT)) for d in dirs)})")


def selects(selector, labels):
    """A Kubernetes label selector (matchLabels, matchExpressions) against a label map."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def check_monitors():
    """The PodMonitor selects exactly the operator's pods that serve metrics on its port (checked
    against the operator's own output for a full PayFlow), the ServiceMonitor exactly the
    operator's metrics Service, both in any namespace."""
    fails = Failures()
    objs, err = kustomize(MONITORS)
    if not fails.check(err is None, err):
        return fails.report("scrape monitors")
    by_kind = {o["kind"]: o for o in objs}
    fails.check(sorted(by_kind) == ["PodMonitor", "ServiceMonitor"], f"grafana/monitors renders {sorted(by_kind)}")
    pm, sm = by_kind.get("PodMonitor"), by_kind.get("ServiceMonitor")
    if pm:
        spec = pm["spec"]
        fails.check(spec.get("namespaceSelector") == {"any": True}, "PodMonitor: namespaceSelector is not any: true")
        endpoints = spec.get("podMetricsEndpoints") or []
        fails.check(len(endpoints) == 1, "PodMonitor: expected one podMetricsEndpoint")
        ep = endpoints[0] if endpoints else {}
        # Without it a target label of the same name would rename the services' `service` label.
        fails.check(ep.get("honorLabels") is True, "PodMonitor: honorLabels is not true")
        fails.check(ep.get("path", "/metrics") == "/metrics", "PodMonitor: path is not /metrics")
        pods = []
        for o in yaml.safe_load_all(OPERATOR_GOLDEN.read_text()):
            template = {"CronJob": lambda o: o["spec"]["jobTemplate"]["spec"]["template"]}.get(
                o["kind"], lambda o: o["spec"].get("template"))(o) if o["kind"] in (
                "Deployment", "StatefulSet", "Job", "CronJob") else None
            if template:
                ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
                pods.append((f"{o['kind']} {o['metadata']['name']}", template["metadata"].get("labels", {}), ports))
        serving = {name for name, _, ports in pods if ep.get("port") in ports}
        selected = {name for name, labels, _ in pods if selects(spec.get("selector", {}), labels)}
        deployments = {name for name, _, _ in pods if name.startswith("Deployment ")}
        fails.check(len(deployments) == 6 and deployments <= serving,
                    f"PodMonitor: port {ep.get('port')!r} is not the port of every component ({sorted(serving)})")
        fails.check(selected == serving, f"PodMonitor selects {sorted(selected)}; pods serving on port "
                                         f"{ep.get('port')!r}: {sorted(serving)} ({OPERATOR_GOLDEN.relative_to(ROOT)})")
    if sm:
        spec = sm["spec"]
        fails.check(spec.get("namespaceSelector") == {"any": True}, "ServiceMonitor: namespaceSelector is not any: true")
        operator, err = kustomize(OPERATOR_MANIFESTS)
        if fails.check(err is None, err):
            services = [o for o in operator if o["kind"] == "Service"
                        and selects(spec.get("selector", {}), o["metadata"].get("labels", {}))]
            names = [o["metadata"]["name"] for o in services]
            fails.check(names == ["payflow-operator-metrics"], f"ServiceMonitor selects Services {names}")
            ports = {p.get("name") for o in services for p in o["spec"]["ports"]}
            for ep in spec.get("endpoints") or [{}]:
                fails.check(ep.get("port") in ports, f"ServiceMonitor: port {ep.get('port')!r} not in {sorted(ports)}")
    return fails.report("scrape monitors (PodMonitor, ServiceMonitor against the operator's objects)")


def slug(heading):
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def check_dashboards():
    fails = Failures()
    uids = {}
    for path in DASHBOARDS:
        try:
            board = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            fails.append(f"{path.name}: invalid JSON: {e}")
            continue
        uid = board.get("uid")
        fails.check(uid == path.stem, f"{path.name}: uid {uid!r} is not the file name {path.stem!r}")
        fails.check(uid not in uids, f"{path.name}: uid {uid} also in {uids.get(uid)}")
        uids[uid] = path.name
        fails.check(board.get("id") is None, f"{path.name}: a fixed numeric id breaks provisioning; drop it")
        fails.check(isinstance(board.get("schemaVersion"), int) and board["schemaVersion"] >= 39,
                    f"{path.name}: schemaVersion {board.get('schemaVersion')} is older than Grafana 11's 39")
        variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
        ds = variables.get("datasource", {})
        fails.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
                    f"{path.name}: no datasource variable of type datasource for prometheus")
        ns = variables.get("namespace", {})
        ns_query = ns.get("query", {}).get("query", "") if isinstance(ns.get("query"), dict) else ns.get("query", "")
        fails.check(ns.get("type") == "query" and re.match(r"label_values\(\w+, *namespace\)", ns_query or "")
                    and (ns.get("datasource") or {}).get("uid") == DS_VAR,
                    f"{path.name}: no namespace variable (label_values(..., namespace) on {DS_VAR})")
        ids = [p.get("id") for p in board.get("panels", [])] + [
            p.get("id") for row in board.get("panels", []) for p in row.get("panels", [])]
        fails.check(len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids")
        for panel in panels(board):
            where = f"{path.name}: panel {panel.get('title')!r}"
            fails.check((panel.get("datasource") or {}).get("uid") == DS_VAR, f"{where}: datasource is not {DS_VAR}")
            targets = panel.get("targets") or []
            fails.check(targets, f"{where}: no targets")
            for t in targets:
                tw = f"{where} [{t.get('refId')}]"
                fails.check((t.get("datasource") or {}).get("uid") == DS_VAR, f"{tw}: datasource is not {DS_VAR}")
                sels = selectors(t.get("expr", ""))
                fails.check(sels, f"{tw}: no metric in {t.get('expr')!r}")
                for name, matchers in sels:
                    fails.check(any(f in matchers.replace(" ", "") for f in NAMESPACE_FILTERS),
                                f"{tw}: {name} is not filtered by namespace=\"$namespace\"")
    fails.check(len(DASHBOARDS) >= 2, "expected the overview and operator dashboards")
    # The kustomization must carry the JSON files unchanged (they are the single source).
    r = subprocess.run(["kubectl", "kustomize", str(GRAFANA)], capture_output=True, text=True)
    if fails.check(r.returncode == 0, f"kubectl kustomize grafana: {r.stderr}"):
        cms = [d for d in yaml.safe_load_all(r.stdout) if d and d.get("kind") == "ConfigMap"]
        data = {k: v for cm in cms for k, v in cm.get("data", {}).items()}
        for path in DASHBOARDS:
            fails.check(data.get(path.name) == path.read_text(), f"kustomization does not ship {path.name} as is")
        fails.check(all(cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1" for cm in cms),
                    "dashboard ConfigMaps lack the grafana_dashboard: \"1\" label")
    return fails.report(f"dashboards ({', '.join(p.name for p in DASHBOARDS)})")


# ------------------------------------------------------------------------- traffic


def http(method, url, body=None, token=None, headers=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_until(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.25)


def traffic(gateway, prom=None, namespace=None, transfers=10):
    """With PROM: after the first transfer, waits until Prometheus has the series that are born
    with it, so rate() over the rest sees an increase."""
    run_id = uuid.uuid4().hex[:10]
    users = []
    for who in ("alice", "bob"):
        email, password = f"obscheck-{who}-{run_id}@payflow.local", "Obscheck-Passw0rd"
        status, _ = http("POST", f"{gateway}/api/auth/register", {"email": email, "password": password, "name": who})
        assert status == 201, f"register {who}: {status}"
        status, body = http("POST", f"{gateway}/api/auth/login", {"email": email, "password": password})
        assert status == 200, f"login {who}: {status}"
        users.append((body["accessToken"], body["user"]["id"]))
    (alice, alice_id), (bob, bob_id) = users

    def notified(n):
        status, body = http("GET", f"{gateway}/api/notifications/{bob_id}", token=bob)
        items = body if isinstance(body, list) else (body or {}).get("notifications") or (body or {}).get("data") or []
        return status == 200 and len(items) >= n

    for i in range(transfers):
        status, _ = http("POST", f"{gateway}/api/transactions", {"toUserId": bob_id, "amount": "1.25"}, alice,
                         {"Idempotency-Key": f"obscheck-{run_id}-{i}"})
        assert status == 201, f"transfer {i}: {status}"
        if i == 0 and prom:
            wait_until("the first transfer's notification", lambda: notified(1))
            born = [f'payflow_transactions_settled_total{{namespace="{namespace}"}}',
                    f'payflow_http_request_duration_seconds_bucket{{namespace="{namespace}",method="POST",'
                    f'route="/api/transactions"}}',
                    f'payflow_notification_deliveries_total{{namespace="{namespace}"}}']
            wait_until("Prometheus to scrape the first transfer's series",
                       lambda: all(instant(prom, f"count({b})") for b in born))
    # More than the sign-up credit: refused by the wallet, counted as rejected.
    status, _ = http("POST", f"{gateway}/api/transactions", {"toUserId": alice_id, "amount": "5000.00"}, bob,
                     {"Idempotency-Key": f"obscheck-{run_id}-too-much"})
    assert status >= 400, f"an over-balance transfer was accepted ({status})"
    wait_until(f"{transfers} notifications for the receiver", lambda: notified(transfers))
    http("GET", f"{gateway}/api/transactions", token=alice)
    http("GET", f"{gateway}/api/wallets/{alice_id}", token=alice)
    print(f"ok   traffic: 2 users, {transfers} transfers settled and notified, 1 refused")
    return True


# ------------------------------------------------------------------------- exported names


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {re.split(r"[{\s]", line, 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def check_exported(urls):
    fails = Failures()
    exported = set()
    for url in urls:
        try:
            exported |= scrape(url)
        except OSError as e:
            fails.append(f"cannot scrape {url}: {e}")
    source = "\n".join(p.read_text() for p in SOURCES)
    for name, where in sorted(used_names().items()):
        if name in exported or name in SYNTHETIC:
            continue
        if f'"{family(name)}"' in source:
            why = ("defined in the code but no series yet: a labelled metric with no label value observed "
                   "(the code should pre-initialise its label values)")
        else:
            why = "not defined anywhere under services/*/src or operator/src"
        fails.append(f"{name}: {why}; used by {'; '.join(sorted(set(where)))}")
    return fails.report(f"exported metric names ({len(used_names())} used, {len(exported)} exported by {len(urls)} endpoints)")


# ------------------------------------------------------------------------- queries


def instant(prom, expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    return body["data"]["result"]


def check_queries(prom, namespace, timeout=60.0, rate_interval="1m"):
    subst = {"$namespace": namespace, "$__rate_interval": rate_interval, "$__interval": "1s",
             "${datasource}": "prometheus", "$datasource": "prometheus"}
    pending = {}
    for where, expr in dashboard_queries():
        for k, v in subst.items():
            expr = expr.replace(k, v)
        pending[where] = expr
    errors, nan_only = {}, []
    deadline = time.monotonic() + timeout
    while pending:
        for where, expr in list(pending.items()):
            try:
                result = instant(prom, expr)
                if result:
                    del pending[where]
                    errors.pop(where, None)
                    if all(r["value"][1] == "NaN" for r in result):
                        nan_only.append(where)
            except (OSError, KeyError, ValueError) as e:
                errors[where] = str(e)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(1)
    for where in nan_only:
        # A series, but 0/0: e.g. a latency quantile with no request in the window.
        print(f"note {where}: only NaN values (no events in the last {rate_interval})")
    fails = Failures()
    for where, expr in pending.items():
        fails.append(f"{where}: no series for {expr}" + (f" ({errors[where]})" if where in errors else ""))
    return fails.report(f"dashboard queries against Prometheus ({len(dashboard_queries())} queries, namespace {namespace})")


def main(argv):
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "static":
        ok = all([check_rules_tested(), check_rules(), check_dashboards(), check_kustomizations(), check_monitors()])
    elif cmd == "traffic" and len(args) in (1, 3):
        ok = traffic(args[0].rstrip("/"), *(a.rstrip("/") for a in args[1:]))
    elif cmd == "scraped" and len(args) == 3:
        up = f'count(up{{namespace="{args[1]}"}} == 1) == {int(args[2])}'
        wait_until(f"{args[2]} targets up in Prometheus", lambda: instant(args[0], up), timeout=30)
        ok = True
    elif cmd == "exported" and args:
        ok = check_exported(args)
    elif cmd == "queries" and len(args) == 2:
        ok = check_queries(args[0].rstrip("/"), args[1])
    elif cmd == "names":
        for name, where in sorted(used_names().items()):
            print(f"{name}\t{', '.join(sorted(set(where)))}")
        ok = True
    else:
        print(__doc__)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
