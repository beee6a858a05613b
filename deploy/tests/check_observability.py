#!/usr/bin/env python3
"""Checks deploy/prometheus/alerts.yml and deploy/grafana/avap-dashboard.json.

* Structure: the rule file is a Prometheus rule file (groups, rules, `for`,
  severity, summary and description); the dashboard is JSON with what Grafana
  needs to import it (uid, title, schemaVersion, panels with grid positions,
  targets, the data-source and job variables).
* Names: every metric and label the PromQL expressions use is one a real
  `avap serve` exports (its GET /api/v1/metrics after a few requests), plus
  the labels Prometheus adds (job, instance) and its `up` series.

`--self-test` checks that the checker refuses broken inputs, so a pass means
something. Exit 0 when everything holds, 1 with the problems listed.
"""

import argparse
import copy
import json
import os
import re
import sys

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from avap_server import Server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
DASHBOARD = os.path.join(ROOT, "deploy/grafana/avap-dashboard.json")

# Series Prometheus makes itself, and labels it adds to every scraped series.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
SCRAPE_LABELS = {"job", "instance"}

AGGREGATIONS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group"}
FUNCTIONS = {
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "abs", "ceil", "floor",
    "round", "clamp", "clamp_min", "clamp_max", "absent", "absent_over_time", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "last_over_time", "scalar", "vector", "time", "label_replace", "label_join", "sort", "sort_desc",
    "predict_linear", "resets", "changes", "timestamp",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<range>\[[^\]]*\])
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){},=<>])""",
    re.VERBOSE,
)


# --- What the server exports -------------------------------------------------


def parse_exposition(text):
    """{series name: set of label names} from Prometheus text: every family's
    series (a histogram's _bucket, _sum, _count), labels from its samples."""
    series = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            # OpenMetrics names a counter's family without the samples' `_total`.
            names = (
                [name + s for s in ("_bucket", "_sum", "_count")]
                if kind in ("histogram", "summary")
                else [name + "_total"] if kind == "counter" and not name.endswith("_total") else [name]
            )
            for n in names:
                series.setdefault(n, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split()[0]
            labels = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', rest) if rest else []
            series.setdefault(name, set()).update(labels)
    return series


def exported_series(avap):
    """Start a real server, give it traffic that fills every labelled family, read its metrics."""
    with Server(avap) as s:
        assert s.request("POST", "/api/v1/execute", {"script": "n = 1\naddResult(n)\n"})[0] == 200
        endless = "s = 0\nstartLoop(i, 1, 9000000000000)\n  s = s + 1\nendLoop()\naddResult(s)\n"
        assert s.request("POST", "/api/v1/execute", {"script": endless, "limits": {"fuel": 1000}})[0] == 422
        assert s.request("GET", "/api/v1/nope")[0] == 404
        # The application database (the default SQLite file): its pool's series.
        rows = "ormDirect(\"SELECT 1 AS a\", r)\naddResult(r)\n"
        assert s.request("POST", "/api/v1/execute", {"script": rows})[0] == 200
        status, text = s.request("GET", "/api/v1/metrics")
        assert status == 200, (status, text)
    series = parse_exposition(text)
    series.update({k: set(v) for k, v in PROMETHEUS_SERIES.items()})
    for labels in series.values():
        labels.update(SCRAPE_LABELS)
    return series


# --- PromQL names -------------------------------------------------------------


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read the expression at {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    return out


def promql_names(expr):
    """(metric uses [(name, {matcher labels})], grouping labels) of one expression."""
    toks = tokens(expr)
    depth = 0
    for kind, text in toks:
        depth += {"(": 1, ")": -1}.get(text, 0) if kind == "op" else 0
        if depth < 0:
            raise ValueError("a `)` without its `(`")
    if depth:
        raise ValueError("unbalanced parentheses")
    metrics, grouping = [], set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        after = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind != "ident":
            if text == "{":  # a selector without a name: {__name__="…"}
                i, labels = matchers(toks, i)
                metrics.append((None, labels))
                continue
            i += 1
            continue
        if text in GROUPING:
            if after == "(":
                j = i + 2
                while toks[j][1] != ")":
                    if toks[j][0] == "ident":
                        grouping.add(toks[j][1])
                    j += 1
                i = j + 1
            else:
                i += 1
            continue
        if text in KEYWORDS or text in AGGREGATIONS or (text in FUNCTIONS and after == "("):
            i += 1
            continue
        if after == "(":
            raise ValueError(f"unknown function {text}()")
        labels = set()
        i += 1
        if after == "{":
            i, labels = matchers(toks, i)
        metrics.append((text, labels))
    return metrics, grouping


def matchers(toks, i):
    """Label names of the `{…}` starting at toks[i]; the index after it."""
    assert toks[i][1] == "{"
    labels, i = set(), i + 1
    while toks[i][1] != "}":
        kind, text = toks[i]
        if kind == "ident" and toks[i + 1][1] in ("=", "!=", "=~", "!~"):
            labels.add(text)
        i += 1
    return i + 1, labels


def check_expr(where, expr, series, problems):
    if not isinstance(expr, str) or not expr.strip():
        problems.append(f"{where}: no expression")
        return
    try:
        metrics, grouping = promql_names(expr)
    except (ValueError, IndexError) as e:
        problems.append(f"{where}: {e}: {expr!r}")
        return
    if not metrics:
        problems.append(f"{where}: names no metric: {expr!r}")
    known_labels = set()
    for name, labels in metrics:
        if name is None:
            problems.append(f"{where}: a selector without a metric name")
            continue
        if name not in series:
            problems.append(f"{where}: metric {name} is not exported by avap serve")
            continue
        known_labels |= series[name]
        for label in sorted(labels - series[name]):
            problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(series[name])})")
    for label in sorted(grouping - known_labels - {"le"}):
        problems.append(f"{where}: groups by {label!r}, which none of its metrics has")


# --- The rule file ----------------------------------------------------------------


def check_alerts(doc, series, problems):
    if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list) or not doc["groups"]:
        problems.append("alerts.yml: the top level must be exactly `groups:` with a non-empty list")
        return
    group_names, alert_names = set(), set()
    for g, group in enumerate(doc["groups"]):
        where = f"alerts.yml group {g + 1}"
        if not isinstance(group, dict):
            problems.append(f"{where}: not a mapping")
            continue
        extra = set(group) - {"name", "interval", "rules", "limit"}
        if extra:
            problems.append(f"{where}: unknown keys {sorted(extra)}")
        name = group.get("name")
        if not isinstance(name, str) or not name or name in group_names:
            problems.append(f"{where}: needs a unique non-empty name")
        group_names.add(name)
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{where}: needs a non-empty `rules` list")
            continue
        for r, rule in enumerate(rules):
            check_rule(f"{where} rule {r + 1}", rule, series, alert_names, problems)


def check_rule(where, rule, series, alert_names, problems):
    if not isinstance(rule, dict):
        problems.append(f"{where}: not a mapping")
        return
    if "record" in rule:
        problems.append(f"{where}: recording rules are not expected in alerts.yml")
        return
    name = rule.get("alert")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name or ""):
        problems.append(f"{where}: `alert` must be a CamelCase name, got {name!r}")
    elif name in alert_names:
        problems.append(f"{where}: alert {name} is defined twice")
    alert_names.add(name)
    where = f"alerts.yml alert {name}"
    extra = set(rule) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    if extra:
        problems.append(f"{where}: unknown keys {sorted(extra)}")
    duration = str(rule.get("for", ""))
    if not DURATION.match(duration):
        problems.append(f"{where}: `for` must be a duration such as 5m, got {rule.get('for')!r}")
    labels = rule.get("labels") or {}
    if labels.get("severity") not in SEVERITIES:
        problems.append(f"{where}: labels.severity must be one of {sorted(SEVERITIES)}")
    annotations = rule.get("annotations") or {}
    for key in ("summary", "description"):
        if not isinstance(annotations.get(key), str) or not annotations[key].strip():
            problems.append(f"{where}: annotations.{key} is missing")
    check_expr(where, rule.get("expr"), series, problems)


# What the alerts must cover (issue 9): a metric, or a text, each rule set must contain.
REQUIRED_ALERTS = {
    "error rate (5xx ratio)": lambda e: "avap_requests_total" in e and '"5.."' in e,
    "p99 latency": lambda e: "histogram_quantile(0.99" in e.replace(" ", "") and "avap_request_duration_seconds_bucket" in e,
    "limit-hit rate": lambda e: "avap_limit_hits_total" in e and "avap_runs_total" in e,
    "cache hit ratio": lambda e: "avap_compile_cache_hits_total" in e and "avap_compile_cache_misses_total" in e,
    "saturation (in flight / slots)": lambda e: "avap_runs_in_flight" in e and "avap_run_slots" in e,
    # Issue 19: the process and its disk.
    "memory": lambda e: "process_resident_memory_bytes" in e,
    "file descriptors": lambda e: "process_open_fds" in e and "process_max_fds" in e,
    "data directory disk": lambda e: "avap_data_dir_free_bytes" in e,
}


def check_coverage(doc, problems):
    exprs = [r.get("expr", "") for g in doc.get("groups", []) for r in g.get("rules", []) if isinstance(r, dict)]
    for what, covered in REQUIRED_ALERTS.items():
        if not any(covered(str(e)) for e in exprs):
            problems.append(f"alerts.yml: no alert on the {what}")


# --- The dashboard ----------------------------------------------------------------

PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"}


def check_dashboard(dash, series, problems):
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list), ("templating", dict)):
        if not isinstance(dash.get(key), kind):
            problems.append(f"dashboard: `{key}` must be a {kind.__name__}")
    if problems:
        return
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"]):
        problems.append("dashboard: uid must be 1-40 letters, digits, - or _")
    variables = {v.get("name"): v for v in dash["templating"].get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
        problems.append("dashboard: needs a `datasource` variable of type datasource over prometheus")
    ids = set()
    for p, panel in enumerate(dash["panels"]):
        where = f"dashboard panel {p + 1} ({panel.get('title')!r})"
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{where}: unknown type {panel.get('type')!r}")
        if not isinstance(panel.get("id"), int) or panel["id"] in ids:
            problems.append(f"{where}: needs a unique integer id")
        ids.add(panel.get("id"))
        if not panel.get("title"):
            problems.append(f"{where}: needs a title")
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid.get("x", 0) + grid.get("w", 0) > 24:
            problems.append(f"{where}: gridPos needs integer h, w, x, y within 24 columns")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: its datasource must be the ${{datasource}} variable")
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where}: no targets")
            continue
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or not all(ref_ids):
            problems.append(f"{where}: targets need unique refIds")
        for t in targets:
            expr = t.get("expr", "")
            for var in re.findall(r"\$(?!__)(\w+)", expr):
                if var not in variables:
                    problems.append(f"{where}: uses ${var}, which is not a dashboard variable")
            check_expr(f"{where} target {t.get('refId')}", expr, series, problems)
    job = variables.get("job")
    if job:
        query = job.get("query", {})
        query = query.get("query", "") if isinstance(query, dict) else query
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        if not m or m.group(1) not in series or m.group(2) not in series[m.group(1)]:
            problems.append(f"dashboard: the job variable's query {query!r} names no exported metric and label")


# --- Running --------------------------------------------------------------------------


def check_all(alerts, dashboard, series):
    problems = []
    check_alerts(alerts, series, problems)
    if isinstance(alerts, dict):
        check_coverage(alerts, problems)
    check_dashboard(dashboard, series, problems)
    return problems


def load():
    with open(ALERTS) as f:
        alerts = yaml.safe_load(f)
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return alerts, dashboard


def self_test():
    """The checker must refuse each of these breakages of the real files."""
    alerts, dashboard = load()
    names = set()
    for g in alerts["groups"]:
        for r in g["rules"]:
            for name, _ in promql_names(r["expr"])[0]:
                names.add(name)
    # A fake export of exactly what the files use, so the real files pass.
    series = {n: {"job", "instance", "le", "route", "status", "outcome", "kind", "state", "priority", "database"} for n in names}
    for p in dashboard["panels"]:
        for t in p.get("targets", []):
            for name, _ in promql_names(t["expr"])[0]:
                series.setdefault(name, {"job", "instance", "le", "route", "status", "outcome", "kind", "state", "priority", "database"})
    baseline = check_all(alerts, dashboard, series)
    assert not baseline, baseline

    def rule(mutate):
        broken = copy.deepcopy(alerts)
        mutate(broken["groups"][0]["rules"])
        return check_all(broken, dashboard, series)

    def panel(mutate):
        broken = copy.deepcopy(dashboard)
        mutate([p for p in broken["panels"] if p["type"] != "row"])
        return check_all(alerts, broken, series)

    cases = {
        "unknown metric": (rule(lambda rs: rs[1].update(expr="rate(avap_requets_total[5m]) > 1")), "not exported"),
        "unknown label": (rule(lambda rs: rs[1].update(expr='rate(avap_requests_total{path="/"}[5m]) > 1')), "no label 'path'"),
        "unknown grouping label": (rule(lambda rs: rs[1].update(expr="sum by (pod) (rate(avap_requests_total[5m]))")), "groups by 'pod'"),
        "unbalanced": (rule(lambda rs: rs[1].update(expr="sum(rate(avap_requests_total[5m])")), "unbalanced"),
        "empty expr": (rule(lambda rs: rs[1].update(expr="")), "no expression"),
        "no severity": (rule(lambda rs: rs[1]["labels"].pop("severity")), "labels.severity"),
        "bad for": (rule(lambda rs: rs[1].update({"for": "ten minutes"})), "`for` must be a duration"),
        "no summary": (rule(lambda rs: rs[1]["annotations"].pop("summary")), "annotations.summary"),
        "duplicate": (rule(lambda rs: rs.append(copy.deepcopy(rs[1]))), "defined twice"),
        "coverage": (rule(lambda rs: [r.update(expr="up == 0") for r in rs]), "no alert on the saturation"),
        "panel metric": (panel(lambda ps: ps[0]["targets"][0].update(expr="avap_nope_total")), "not exported"),
        "panel variable": (panel(lambda ps: ps[0]["targets"][0].update(expr='avap_runs_total{job=~"$cluster"}')), "$cluster"),
        "panel datasource": (panel(lambda ps: ps[0].update(datasource={"uid": "prom"})), "datasource"),
        "panel grid": (panel(lambda ps: ps[0]["gridPos"].update(x=20, w=12)), "gridPos"),
    }
    failed = [name for name, (found, expected) in cases.items() if not any(expected in p for p in found)]
    if failed:
        print(f"self-test: the checker missed: {failed}")
        return 1
    print(f"self-test: the checker refused all {len(cases)} broken variants")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--avap", help="the avap binary whose metrics are the reference")
    parser.add_argument("--self-test", action="store_true", help="check that the checker refuses broken files")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if not args.avap:
        parser.error("--avap is required")
    series = exported_series(args.avap)
    alerts, dashboard = load()
    problems = check_all(alerts, dashboard, series)
    for p in problems:
        print(p)
    if problems:
        return 1
    rules = sum(len(g["rules"]) for g in alerts["groups"])
    panels = sum(1 for p in dashboard["panels"] if p["type"] != "row")
    avap_series = sorted(n for n in series if n.startswith("avap_"))
    print(f"{rules} alert rules and {panels} dashboard panels use only the {len(avap_series)} series avap serve exports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
