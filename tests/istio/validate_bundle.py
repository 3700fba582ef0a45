#!/usr/bin/env python3
"""Checks the Istio bundle (istio/), the docker-compose demo and its Envoy config.

    .venv/bin/python tests/istio/validate_bundle.py --envoy .venv/bin/envoy --wasm out/reflex.wasm

Run by `./build.sh test`. Prints one line per check, then `N passed, M failed`; exits non-zero
on any failure.

1. Every YAML document under istio/ that has apiVersion and kind is validated against the
   openAPIV3Schema of the served version of its CRD (../shared/istio/crds, Istio 1.32). A kind
   without a CRD there fails. OpenAPI v3 is translated to JSON Schema:
   - unknown fields are errors (additionalProperties: false on every object schema that lists
     properties), except under x-kubernetes-preserve-unknown-fields. Kubernetes itself prunes
     unknown fields of a structural schema; kubectl's default strict field validation turns
     them into errors, and here they are errors so that a typo never passes silently;
   - nullable adds "null" to the type; format int32 adds the int32 bounds;
   - the x-kubernetes-validations (CEL) rules on every field present in the manifest are
     evaluated by hand-written Python equivalents (CEL_RULES, one per rule text); a rule
     without an equivalent fails the check, so no rule on a used field goes unchecked;
   - x-kubernetes-list-type map/set: key uniqueness; metadata: Kubernetes' ObjectMeta rules
     for name, namespace, labels and annotations.
   Documents without apiVersion/kind (the workload patch, the Helm values fragment) are not
   manifests; their content is checked by the reflex-specific checks below.
2. Negative controls: broken copies of the manifests (unknown field, wrong enum, CEL rule
   violations, kind without CRD, wrong embedded config) must fail, proving the checks can fail.
3. reflex-specific: the embedded filter configurations equal tests/fixtures/config/
   istio-outbound.json and istio-inbound.json (parsed JSON, by listener context), filter
   settings (root_id, vm_id per side, runtime, FAIL_OPEN),
   the cluster patch equals the policy of envoy/outbound.yaml and only ever matches named
   services, the stats inclusion prefix matches reflex's internal metric names, each side tags
   its metrics with its own direction and every stats fragment extracts that tag.
4. Real Envoy: an Istio-like bootstrap (outbound listener with Istio's upstream-Envoy filters
   and retry policy, EDS clusters as Istio generates them, with and without DestinationRule
   settings, PassthroughCluster, BlackHoleCluster, Istio's stats inclusion list) gets the
   EnvoyFilter patches applied in Python the way istiod applies them (INSERT_BEFORE the router;
   MERGE into the clusters the match selects, with istiod's proto merge semantics), then
   `envoy --mode validate`, then a real Envoy with three upstreams: requests succeed, reflex
   logs its configuration, reflex_* metrics are exported with a direction label per side (the
   stats_tags Istio writes for extraStatTags), and the merged clusters follow the
   steering header (override_host wins over the lb_policy Istio keeps). Plus the two
   combinations Envoy rejects (README), deploy/compose/envoy.yaml in validate mode, and
   `docker-compose config -q`.
5. Emergency manifests (istio/emergency/): schema as in 1; each embeds `role: switches`
   instances with only the allowed fields, the vm_id and module of the base filter of the
   same context, a plugin name unique across everything, a priority above the base bundle's;
   each (and all of them together) is applied on top of the base bundle's listeners and
   loaded by `envoy --mode validate`; kill-all is run in a real Envoy (503 with
   x-reflex-killed on both sides); a switches config with a forbidden field is rejected by
   reflex inside Envoy. normal.yaml holds an empty EnvoyFilter (explicit empty configPatches)
   under every emergency manifest's name, so that applying it (objects replaced by name, as
   kubectl apply does) leaves no patch; kill-all then normal.yaml is run in a real Envoy.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import types
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
ISTIO_DIR = ROOT / "istio"
FIXTURE = ROOT / "tests" / "fixtures" / "config" / "istio-outbound.json"
INBOUND_FIXTURE = ROOT / "tests" / "fixtures" / "config" / "istio-inbound.json"
STANDALONE_FIXTURE = ROOT / "tests" / "fixtures" / "config" / "standalone-outbound.json"
OUTBOUND_YAML = ROOT / "envoy" / "outbound.yaml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_ENVOY = ROOT / "deploy" / "compose" / "envoy.yaml"
COMPOSE_WASM_PATH = "/etc/reflex/reflex.wasm"
BUNDLE = ISTIO_DIR / "reflex-bundle.yaml"
WASMPLUGIN = ISTIO_DIR / "wasmplugin.yaml"
WORKLOAD_PATCH = ISTIO_DIR / "workload-opt-in.patch.yaml"
WORKLOAD_PATCH_WASMPLUGIN = ISTIO_DIR / "workload-opt-in-wasmplugin.patch.yaml"
STATS_VALUES = ISTIO_DIR / "stats-inclusion.yaml"
EMERGENCY_DIR = ISTIO_DIR / "emergency"
CONTROL_LISTENER = ISTIO_DIR / "control-listener.yaml"
# The control listener's wasm instance for each side: (filter name, path prefix).
CONTROL_INSTANCES = {"SIDECAR_OUTBOUND": ("reflex-control-outbound", "/.reflex/outbound"),
                     "SIDECAR_INBOUND": ("reflex-control-inbound", "/.reflex/inbound")}

# The base filter of each sidecar side: its vm_id and the fixture its configuration equals.
SIDES = {"SIDECAR_OUTBOUND": ("reflex-outbound", FIXTURE),
         "SIDECAR_INBOUND": ("reflex-inbound", INBOUND_FIXTURE)}
BASE_PRIORITY = 10
# Top-level fields an emergency manifest's "role": "switches" instance may carry: reflex's
# SWITCHES_FIELDS (src/config/mod.rs) without `control`, which belongs in control-listener.yaml.
SWITCHES_FIELDS = {"version", "role", "emergency", "tickInterval", "metrics"}
# Switch sets one shared-data namespace holds (src/state/switchboard.rs MAX_PUSHERS).
MAX_PUSHERS = 8
SWITCHES_REJECTED = 'must not be set when role is "switches"'
_KILL_REPLY = {"status": 503, "body": "killed by reflex emergency switch\n", "headers": {"x-reflex-killed": "1"}}
# istio/emergency/normal.yaml: an empty EnvoyFilter under each emergency manifest's name.
NORMAL = "normal.yaml"
# Every emergency manifest: the sides it patches and the emergency section it publishes.
EMERGENCY = {
    "kill-all.yaml": ({"SIDECAR_OUTBOUND", "SIDECAR_INBOUND"}, {"kill": [dict(scope={"all": True}, **_KILL_REPLY)]}),
    "kill-service.yaml": ({"SIDECAR_OUTBOUND"}, {"kill": [dict(
        scope={"cluster": "outbound|8080||destination.example.svc.cluster.local"}, **_KILL_REPLY)]}),
    "shed-50.yaml": ({"SIDECAR_OUTBOUND", "SIDECAR_INBOUND"}, {"shed": {"sheddablePercent": 50, "defaultPercent": 0}}),
    "freeze.yaml": ({"SIDECAR_OUTBOUND", "SIDECAR_INBOUND"}, {"freeze": True}),
    "dry-run.yaml": ({"SIDECAR_OUTBOUND", "SIDECAR_INBOUND"}, {"dryRun": True}),
}

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STEERING_HEADER = "x-reflex-endpoint"
# Envoy prefixes every metric a wasm module defines with this stat namespace.
WASM_STAT_NAMESPACE = "wasmcustom."
# Istio 1.32's proxy stats inclusion list (pkg/bootstrap/config.go and
# tools/packaging/common/envoy_bootstrap.json at the commit of ../shared/istio/crds), without
# its "wasm" prefix: the Envoy test proves that reflex's own prefix is enough on its own.
ISTIO_STATS_PATTERNS_WITHOUT_WASM = (
    [{"prefix": "reporter="}]
    + [{"prefix": p} for p in ("cluster_manager", "listener_manager", "server", "cluster.xds-grpc")]
    + [{"suffix": s} for s in ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied")]
    + [{"safe_regex": {"regex": r"vhost\..*\.route\..*"}}, {"prefix": "component"}, {"prefix": "istio"}]
)


# --------------------------------------------------------------------------------------------
# Check runner
# --------------------------------------------------------------------------------------------

class CheckFailed(Exception):
    pass


RESULTS: list[tuple[str, bool]] = []


def run_check(name: str, fn, *args):
    try:
        detail = fn(*args)
        RESULTS.append((name, True))
        print(f"ok   {name}" + (f" ({detail})" if detail else ""), flush=True)
        return True
    except CheckFailed as e:
        RESULTS.append((name, False))
        print(f"FAIL {name}: {e}", flush=True)
    except Exception:  # a bug or an unexpected state: report it as a failure, keep going
        RESULTS.append((name, False))
        print(f"FAIL {name}: unexpected error\n{traceback.format_exc()}", flush=True)
    return False


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


# --------------------------------------------------------------------------------------------
# Loading manifests and CRDs
# --------------------------------------------------------------------------------------------

def load_docs(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def is_manifest(doc) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def istio_yaml_files() -> list[Path]:
    return sorted(p for p in ISTIO_DIR.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_crds(crd_dir: Path) -> dict:
    """(group, kind) -> {"versions": {name: schema}, "served": [names]}."""
    crds = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in load_docs(path):
            if not (isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"):
                continue
            spec = doc["spec"]
            entry = crds.setdefault((spec["group"], spec["names"]["kind"]), {"versions": {}, "file": path.name})
            for v in spec["versions"]:
                if v.get("served"):
                    entry["versions"][v["name"]] = v["schema"]["openAPIV3Schema"]
    return crds


# --------------------------------------------------------------------------------------------
# OpenAPI v3 (Kubernetes structural schema) -> JSON Schema
# --------------------------------------------------------------------------------------------

INT32 = (-(2 ** 31), 2 ** 31 - 1)


def to_jsonschema(node: dict) -> dict:
    out = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-") or key == "nullable":
            continue  # CEL and list types: see cel_walk; nullable: below
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "not"):
            out[key] = to_jsonschema(value)
        elif key == "additionalProperties":
            out[key] = to_jsonschema(value) if isinstance(value, dict) else value
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [to_jsonschema(s) for s in value]
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("format") == "int32" and node.get("type") == "integer":
        out.setdefault("minimum", INT32[0])
        out.setdefault("maximum", INT32[1])
    # Unknown fields are errors (Kubernetes would prune them): every object schema that lists
    # its properties is closed, unless it preserves unknown fields.
    if ("properties" in node and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in node):
        out["additionalProperties"] = False
    return out


def root_schema(openapi: dict) -> dict:
    schema = to_jsonschema(openapi)
    schema.setdefault("type", "object")
    props = schema.setdefault("properties", {})
    # Implicit in every Kubernetes object (the CRD schema leaves them out).
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"type": "object"}  # checked by check_metadata
    props.pop("status", None)  # manifests do not carry status
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["additionalProperties"] = False
    return schema


# --------------------------------------------------------------------------------------------
# CEL rules (x-kubernetes-validations), evaluated in Python
# --------------------------------------------------------------------------------------------

def _has(obj, field):
    # CEL has() on an object field: present in the manifest (Kubernetes drops nulls).
    return isinstance(obj, dict) and obj.get(field) is not None


_URL_SCHEMES = ["", "http", "https", "oci", "file"]


def _go_request_uri_scheme(s: str):
    """Scheme of s as Go's url.ParseRequestURI (CEL isURL/url) sees it; None if s is no URL.

    ParseRequestURI accepts an absolute URI (scheme ':' ...) or an absolute path ('/...').
    A scheme is a letter then letters, digits, '+', '-', '.' up to the first ':'; Go lower-cases
    it. Spaces and control characters make it invalid."""
    if not s or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        return None
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):", s)
    if m:
        return m.group(1).lower()
    if s.startswith("/"):
        return ""
    return None


def _url_rule(s: str) -> bool:
    scheme = _go_request_uri_scheme(s)
    if scheme is not None:
        return scheme in _URL_SCHEMES
    scheme = _go_request_uri_scheme("http://" + s)
    return scheme is not None and scheme in _URL_SCHEMES


# Rule text (whitespace collapsed) -> Python predicate over `self`. Each is named after the
# CRD field it sits on in ../shared/istio/crds.
CEL_RULES = {
    # EnvoyFilter spec: "only one of targetRefs or workloadSelector can be set"
    '(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda s: _has(s, "workloadSelector") + _has(s, "targetRefs") <= 1,
    # EnvoyFilter configPatches[].match: "only support waypointMatch when context is WAYPOINT"
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)':
        lambda s: (_has(s, "waypoint") if s.get("context") == "WAYPOINT" else not _has(s, "waypoint"))
        if _has(s, "context") else not _has(s, "waypoint"),
    # EnvoyFilter match.waypoint.portNumber: "port must be between 1-65535"
    '0 < self && self <= 65535': lambda s: 0 < s <= 65535,
    # EnvoyFilter workloadSelector.labels values / WasmPlugin selector.matchLabels values:
    # "wildcard is not supported in selector" / "wildcard not allowed in label value match"
    '!self.contains("*")': lambda s: "*" not in s,
    # targetRef(s)[].namespace: "cross namespace referencing is not currently supported"
    'self.size() == 0': lambda s: len(s) == 0,
    # WasmPlugin spec: "only one of targetRefs or selector can be set"
    '(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1':
        lambda s: _has(s, "selector") + _has(s, "targetRef") + _has(s, "targetRefs") <= 1,
    # WasmPlugin selector.matchLabels: "wildcard not allowed in label key match"
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    # WasmPlugin selector.matchLabels: "key must not be empty"
    'self.all(key, key.size() != 0)': lambda s: all(len(k) != 0 for k in s),
    # WasmPlugin vmConfig.env[]: "value may only be set when valueFrom is INLINE"
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda s: (s.get("valueFrom") or "") != "HOST" or not _has(s, "value"),
    # WasmPlugin url: "url must have schema one of [http, https, file, oci]"
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        _url_rule,
}


def _norm_rule(rule: str) -> str:
    return " ".join(rule.split())


CEL_RULES = {_norm_rule(k): v for k, v in CEL_RULES.items()}


def cel_walk(schema: dict, inst, path: str, errors: list):
    """Evaluates x-kubernetes-validations and list-type rules wherever the manifest has a value."""
    if inst is None:
        return
    for v in schema.get("x-kubernetes-validations", []):
        fn = CEL_RULES.get(_norm_rule(v["rule"]))
        if fn is None:
            errors.append(f"{path}: CEL rule without a Python equivalent in this test: {v['rule']!r}")
            continue
        try:
            ok = bool(fn(inst))
        except Exception as e:  # wrong type: the schema check reports it too
            ok, v = False, dict(v, message=f"{v.get('message')} (cannot evaluate: {e})")
        if not ok:
            errors.append(f"{path}: {v.get('message', 'CEL rule failed')} [rule: {_norm_rule(v['rule'])}]")
    lt = schema.get("x-kubernetes-list-type")
    if lt in ("map", "set") and isinstance(inst, list):
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for i, item in enumerate(inst):
            k = (tuple(json.dumps(item.get(x), sort_keys=True) for x in keys)
                 if lt == "map" and isinstance(item, dict) else json.dumps(item, sort_keys=True))
            if k in seen:
                errors.append(f"{path}[{i}]: duplicate entry in a list of type {lt} (keys {keys})")
            seen.add(k)
    if isinstance(inst, dict):
        props = schema.get("properties", {})
        addl = schema.get("additionalProperties")
        for k, v in inst.items():
            if k in props:
                cel_walk(props[k], v, f"{path}.{k}", errors)
            elif isinstance(addl, dict):
                cel_walk(addl, v, f"{path}[{k!r}]", errors)
    elif isinstance(inst, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(inst):
            cel_walk(schema["items"], v, f"{path}[{i}]", errors)


# --------------------------------------------------------------------------------------------
# ObjectMeta (Kubernetes apimachinery validation, the parts a manifest can get wrong)
# --------------------------------------------------------------------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
OBJECT_META_FIELDS = {"name", "generateName", "namespace", "labels", "annotations", "finalizers",
                      "ownerReferences", "uid", "resourceVersion", "generation", "creationTimestamp",
                      "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"}


def _qualified_key_errors(key: str, what: str) -> list:
    errs = []
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errs.append(f"{what} key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        errs.append(f"{what} key {key!r}: name part must be 1-63 alphanumerics, '-', '_', '.'")
    return errs


def check_metadata(meta) -> list:
    if not isinstance(meta, dict):
        return ["metadata: must be an object"]
    errs = [f"metadata.{k}: unknown field" for k in meta if k not in OBJECT_META_FIELDS]
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append(f"metadata.name {name!r}: required, a DNS-1123 subdomain")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not DNS1123_LABEL.match(ns)):
        errs.append(f"metadata.namespace {ns!r}: must be a DNS-1123 label")
    for k, v in (meta.get("labels") or {}).items():
        errs += _qualified_key_errors(k, "label")
        if not isinstance(v, str) or len(v) > 63 or (v and not QUALIFIED_NAME.match(v)):
            errs.append(f"label {k!r}: value {v!r} must be a string of at most 63 alphanumerics, '-', '_', '.'")
    for k, v in (meta.get("annotations") or {}).items():
        errs += _qualified_key_errors(k, "annotation")
        if not isinstance(v, str):
            errs.append(f"annotation {k!r}: value must be a string")
    return errs


# --------------------------------------------------------------------------------------------
# Manifest validation
# --------------------------------------------------------------------------------------------

def validate_manifest(doc: dict, crds: dict) -> list:
    """All errors of one manifest (empty list: valid)."""
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api, str) or "/" not in api:
        return [f"apiVersion {api!r}: expected group/version"]
    group, version = api.rsplit("/", 1)
    crd = crds.get((group, kind))
    if crd is None:
        return [f"no CRD for kind {kind} in group {group} in the CRD folder"]
    if version not in crd["versions"]:
        return [f"{group} {kind}: version {version} is not served (served: {sorted(crd['versions'])})"]
    openapi = crd["versions"][version]
    errors = []
    validator = jsonschema.Draft7Validator(root_schema(openapi))
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        errors.append(f"{where}: {e.message}")
    errors += check_metadata(doc.get("metadata"))
    for key in ("spec",):
        if key in doc and key in openapi.get("properties", {}):
            cel_walk(openapi["properties"][key], doc[key], key, errors)
    return errors


# --------------------------------------------------------------------------------------------
# istiod's EnvoyFilter semantics, in Python
# --------------------------------------------------------------------------------------------

# Oneof groups of the messages a CLUSTER patch can reach: setting one member clears the
# others, as Go's proto merge does (envoy.config.cluster.v3.Cluster and CommonLbConfig).
ONEOFS = {
    "cluster": [{"type", "cluster_type"},
                {"ring_hash_lb_config", "maglev_lb_config", "original_dst_lb_config",
                 "least_request_lb_config", "round_robin_lb_config"}],
    "common_lb_config": [{"zone_aware_lb_config", "locality_weighted_lb_config"}],
}
# Map fields: istiod's merge replaces an entry rather than merging into it.
MAP_FIELDS = {"typed_extension_protocol_options", "filter_metadata", "typed_filter_metadata",
              "typed_per_filter_config"}
SNAKE_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


def istio_merge(dst: dict, src: dict, replace_lists: bool = False, message: str = "cluster") -> dict:
    """istio.io/istio/pkg/proto/merge on the JSON form of a proto.

    Messages merge field by field; repeated fields append (MERGE) or are replaced
    (MERGE_AND_REPLACE_LIST); map entries and scalars are replaced; an Any (a dict with @type)
    is replaced whole (its bytes are); proto3 zero values in src are not set at all, so they
    change nothing; a oneof member clears its siblings."""
    for key, value in src.items():
        if value is None or value is False or value == 0 or value == "":
            continue
        for group in ONEOFS.get(message, []):
            if key in group:
                for sibling in group - {key}:
                    dst.pop(sibling, None)
        if isinstance(value, list):
            if replace_lists or not isinstance(dst.get(key), list):
                dst[key] = copy.deepcopy(value)
            else:
                dst[key] = dst[key] + copy.deepcopy(value)
        elif isinstance(value, dict):
            if "@type" in value:
                dst[key] = copy.deepcopy(value)
            elif key in MAP_FIELDS:
                dst.setdefault(key, {})
                for mk, mv in value.items():
                    dst[key][mk] = copy.deepcopy(mv)
            else:
                if not isinstance(dst.get(key), dict) or "@type" in dst[key]:
                    dst[key] = {}
                istio_merge(dst[key], value, replace_lists, key)
        else:
            dst[key] = value
    return dst


def parse_subset_key(name: str):
    """istiod's model.ParseSubsetKey: direction|port|subset|hostname (else empty parts)."""
    parts = name.split("|")
    if len(parts) != 4:
        return "", 0, "", ""
    try:
        port = int(parts[1])
    except ValueError:
        port = 0
    return parts[0], port, parts[2], parts[3]


def istio_cluster_match(cluster_name: str, match: dict | None) -> bool:
    """istiod's clusterMatch (pilot/pkg/networking/core/envoyfilter/cluster_patch.go)."""
    if not match:
        return True
    if match.get("name"):
        return match["name"] == cluster_name
    _, port, subset, host = parse_subset_key(cluster_name)
    if match.get("subset") and match["subset"] != subset:
        return False
    if match.get("service") and match["service"] != host:
        return False
    if match.get("portNumber") and int(match["portNumber"]) != port:
        return False
    return True


def config_patches(docs: list, apply_to: str, context: str) -> list:
    out = []
    for d in docs:
        if d.get("kind") != "EnvoyFilter":
            continue
        for cp in d["spec"].get("configPatches", []):
            if cp.get("applyTo") == apply_to and (cp.get("match") or {}).get("context", "ANY") in (context, "ANY"):
                out.append((d, cp))
    # istiod applies lower priorities first (ties: root namespace first, then by name); the
    # sort is stable, so patches keep their file order within a priority.
    out.sort(key=lambda x: x[0]["spec"].get("priority", 0))
    return out


def apply_http_filter_patches(listeners: list, patches: list):
    """INSERT_BEFORE / INSERT_AFTER / INSERT_FIRST of HTTP filters into matching HCMs."""
    applied = 0
    for _, cp in patches:
        lmatch = (cp.get("match") or {}).get("listener") or {}
        fcmatch = lmatch.get("filterChain") or {}
        fmatch = fcmatch.get("filter") or {}
        sub = (fmatch.get("subFilter") or {}).get("name")
        op = cp["patch"]["operation"]
        # Only what the bundle uses is emulated; anything else must not pass unnoticed.
        unsupported = (set(lmatch) - {"filterChain"}) | (set(fcmatch) - {"filter"})
        if unsupported or op not in ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST"):
            raise CheckFailed(f"HTTP_FILTER patch not emulated by this test: {op}, match {sorted(unsupported)}")
        for lis in listeners:
            for fc in lis.get("filter_chains", []):
                for f in fc.get("filters", []):
                    if f.get("name") != HCM or (fmatch.get("name") and fmatch["name"] != HCM):
                        continue
                    hf = f["typed_config"].setdefault("http_filters", [])
                    value = copy.deepcopy(cp["patch"]["value"])
                    if op == "INSERT_FIRST":
                        hf.insert(0, value)
                        applied += 1
                        continue
                    idx = next((i for i, x in enumerate(hf) if x.get("name") == sub), None)
                    if idx is None:
                        continue
                    hf.insert(idx if op == "INSERT_BEFORE" else idx + 1, value)
                    applied += 1
    return applied


def apply_cluster_patches(clusters: list, patches: list) -> set:
    """MERGE / MERGE_AND_REPLACE_LIST / REMOVE of CLUSTER patches; returns the patched names."""
    patched = set()
    for _, cp in patches:
        m = (cp.get("match") or {}).get("cluster")
        op = cp["patch"]["operation"]
        if op not in ("MERGE", "MERGE_AND_REPLACE_LIST", "REMOVE"):
            raise CheckFailed(f"CLUSTER patch operation not emulated by this test: {op}")
        for c in list(clusters):
            if not istio_cluster_match(c["name"], m):
                continue
            if op == "REMOVE":
                clusters.remove(c)
            elif op in ("MERGE", "MERGE_AND_REPLACE_LIST"):
                istio_merge(c, cp["patch"]["value"], replace_lists=(op == "MERGE_AND_REPLACE_LIST"))
            patched.add(c["name"])
    return patched


# --------------------------------------------------------------------------------------------
# An Istio-like sidecar (outbound side) for Envoy
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def istio_circuit_breakers():
    big = 4294967295
    return {"thresholds": [{"max_connections": big, "max_pending_requests": big, "max_requests": big,
                            "max_retries": big, "track_remaining": True}]}


def istio_eds_cluster(name: str, host: str, eds_path: str) -> dict:
    """An outbound EDS cluster the way istiod builds it (cluster_builder.go), without the
    istio-proxy-only parts (istio.metadata_exchange filter, SDS-backed mTLS socket)."""
    return {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"service_name": name, "eds_config": {
            "path_config_source": {"path": eds_path}, "initial_fetch_timeout": "0s",
            "resource_api_version": "V3"}},
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": istio_circuit_breakers(),
        "common_lb_config": {},
        "alt_stat_name": name + ";",
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": host, "name": host.split(".")[0], "namespace": host.split(".")[1]}]}}},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}},
        "transport_socket_matches": [{"name": "tlsMode-disabled", "match": {}, "transport_socket": {
            "name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}],
    }


def with_destination_rule(c: dict) -> dict:
    """What a DestinationRule with outlierDetection and warmupDurationSecs (LEAST_REQUEST)
    adds to the cluster (cluster_traffic_policy.go)."""
    c = copy.deepcopy(c)
    c["outlier_detection"] = {"consecutive_5xx": 5, "enforcing_consecutive_5xx": 100,
                              "enforcing_success_rate": 0, "interval": "10s", "base_ejection_time": "30s",
                              "max_ejection_percent": 100}
    c["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    c["least_request_lb_config"] = {"slow_start_config": {"slow_start_window": "30s"}}
    return c


def passthrough_cluster() -> dict:
    return {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s",
            "lb_policy": "CLUSTER_PROVIDED", "circuit_breakers": istio_circuit_breakers(),
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": "300s"},
                "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}}}


def blackhole_cluster() -> dict:
    return {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}


def eds_response(cluster_name: str, ports: list) -> dict:
    """What a file-based EDS subscription reads: one ClusterLoadAssignment per cluster."""
    return {"version_info": "1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster_name,
        "endpoints": [{"locality": {"region": "r1", "zone": "z1"}, "load_balancing_weight": max(len(ports), 1),
                       "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                           "address": "127.0.0.1", "port_value": p}}}, "load_balancing_weight": 1}
                           for p in ports]}]}]}


def eds_file(ctx, cluster_name: str, ports: list) -> str:
    path = ctx.tmp / ("eds-" + re.sub(r"[^A-Za-z0-9.]", "_", cluster_name) + ".json")
    path.write_text(json.dumps(eds_response(cluster_name, ports)))
    return str(path)


def istio_route(cluster: str, prefix: str = "/") -> dict:
    return {"match": {"prefix": prefix}, "decorator": {"operation": f"{cluster}/*"},
            "route": {"cluster": cluster, "timeout": "0s",
                      "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
                      "retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                                       "num_retries": 2,
                                       "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                                                 "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                                       "host_selection_retry_max_attempts": "5"}}}


def hcm_listener(name: str, port: int, routes: list, stat_prefix: str) -> dict:
    """An outbound HTTP listener with the HTTP filters Istio puts there that upstream Envoy
    has (grpc_stats, fault, cors; not istio.metadata_exchange / istio.stats) and the router."""
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": HCM, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "route_config": {"name": name, "validate_clusters": False, "virtual_hosts": [
                    {"name": "backend:8080", "domains": ["*"], "routes": routes}]},
                "http_filters": [
                    {"name": "envoy.filters.http.grpc_stats", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                        "emit_filter_state": True, "stats_for_all_methods": False}},
                    {"name": "envoy.filters.http.fault", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
                    {"name": "envoy.filters.http.cors", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                    {"name": ROUTER, "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                "use_remote_address": False, "normalize_path": True,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED"}}]}]}


def rewrite_wasm_filenames(obj, wasm: str) -> int:
    """Points every local wasm code source at `wasm`; returns how many were rewritten."""
    n = 0
    if isinstance(obj, dict):
        code = obj.get("code")
        if isinstance(code, dict) and isinstance(code.get("local"), dict) and "filename" in code["local"]:
            code["local"]["filename"] = wasm
            n += 1
        for v in obj.values():
            n += rewrite_wasm_filenames(v, wasm)
    elif isinstance(obj, list):
        for v in obj:
            n += rewrite_wasm_filenames(v, wasm)
    return n


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

def stop(proc: subprocess.Popen | None):
    """Stops one process this test started, by its PID: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def envoy_validate(envoy: str, config_path: Path) -> tuple[int, str]:
    r = subprocess.run([envoy, "--mode", "validate", "-c", str(config_path), "--disable-hot-restart",
                        "-l", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=60)
    return r.returncode, r.stdout


def http_get(url: str, headers: dict | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except Exception as e:  # connection refused, timeout
        return None, str(e)


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.1)
    raise CheckFailed(f"timed out waiting for {what}")


UPSTREAM_CODE = r"""
import http.server, sys
name = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream-id", name)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------

class Ctx:
    def __init__(self, args):
        self.envoy = args.envoy
        self.wasm = str(Path(args.wasm).resolve())
        self.crds = load_crds(Path(args.crds))
        self.fixture = json.loads(FIXTURE.read_text())
        self.fixtures = {side: json.loads(path.read_text()) for side, (_, path) in SIDES.items()}
        self.bundle = load_docs(BUNDLE)
        # file name -> documents of every emergency manifest
        self.emergency = {p.name: load_docs(p) for p in sorted(EMERGENCY_DIR.glob("*.yaml"))}
        self.wasmplugin = load_docs(WASMPLUGIN)
        self.control_listener = load_docs(CONTROL_LISTENER)
        self.tmp = Path(tempfile.mkdtemp(prefix="reflex-istio-"))


def check_inputs(ctx: Ctx):
    expect(Path(ctx.envoy).is_file() and os.access(ctx.envoy, os.X_OK), f"no Envoy binary at {ctx.envoy}")
    expect(Path(ctx.wasm).is_file(), f"no wasm module at {ctx.wasm}")
    expect(("networking.istio.io", "EnvoyFilter") in ctx.crds and ("extensions.istio.io", "WasmPlugin") in ctx.crds,
           "EnvoyFilter/WasmPlugin CRDs not found in the CRD folder (--crds)")
    return f"{len(ctx.crds)} CRDs"


def check_manifest(ctx: Ctx, path: Path, idx: int, doc: dict):
    errs = validate_manifest(doc, ctx.crds)
    expect(not errs, "; ".join(errs))


def check_non_manifest(path: Path, docs: list):
    expect(docs, "empty file")
    expect(all(isinstance(d, dict) for d in docs), "not a YAML mapping")


def negative(ctx: Ctx, base: dict, mutate, want: str):
    doc = copy.deepcopy(base)
    mutate(doc)
    errs = validate_manifest(doc, ctx.crds)
    expect(errs, "the broken manifest passed validation")
    expect(any(want in e for e in errs), f"expected an error mentioning {want!r}, got: {errs}")
    return errs[0][:100]


def _reflex_wasm_patches(ctx, side: str = "SIDECAR_OUTBOUND", docs: list | None = None):
    """The wasm HTTP_FILTER patches of `docs` (default: the base bundle) for one side."""
    return [(d, cp) for d, cp in config_patches(ctx.bundle if docs is None else docs, "HTTP_FILTER", side)
            if cp["patch"]["value"].get("typed_config", {}).get("@type") == WASM_TYPE]


def patch_config(cp: dict) -> dict:
    """The parsed JSON configuration of a wasm HTTP_FILTER patch."""
    cfg = cp["patch"]["value"]["typed_config"]["config"]["configuration"]
    expect(cfg.get("@type") == "type.googleapis.com/google.protobuf.StringValue",
           "configuration must be a google.protobuf.StringValue")
    return json.loads(cfg["value"])


def embedded_configs(ctx) -> list:
    """(where, parsed JSON, fixture path) of every reflex configuration in the bundle (by side)
    and the WasmPlugin (outbound)."""
    out = []
    for side, (_, fixture) in SIDES.items():
        for d, cp in _reflex_wasm_patches(ctx, side):
            out.append((f"EnvoyFilter {d['metadata']['name']} {side}", patch_config(cp), fixture))
    for d in ctx.wasmplugin:
        if d.get("kind") == "WasmPlugin":
            out.append((f"WasmPlugin {d['metadata']['name']}", d["spec"]["pluginConfig"], FIXTURE))
    return out


def check_embedded_config(ctx: Ctx):
    found = embedded_configs(ctx)
    expect(len(found) >= 3, f"expected the outbound and inbound EnvoyFilter and the WasmPlugin configuration, "
                            f"found {len(found)}")
    for where, cfg, fixture in found:
        expect(cfg == json.loads(fixture.read_text()), f"{where}: configuration differs from {fixture.relative_to(ROOT)}")
    return ", ".join(w for w, _, _ in found)


def _check_wasm_patch(cp: dict, where: str, before: str = ROUTER) -> dict:
    """Settings every reflex wasm patch shares (base filter or switches instance); returns its
    Wasm plugin config. The base filter goes before the router, a switches instance before
    reflex."""
    expect(cp["patch"]["operation"] == "INSERT_BEFORE", f"{where}: the filter must be inserted with INSERT_BEFORE")
    f = cp["match"]["listener"]["filterChain"]["filter"]
    expect(f["name"] == HCM and f["subFilter"]["name"] == before, f"{where}: must be inserted before {before} in the HCM")
    c = cp["patch"]["value"]["typed_config"]["config"]
    expect(c.get("root_id") == "reflex", f"{where}: root_id must be reflex")
    expect(c.get("failure_policy") == "FAIL_OPEN", f"{where}: failure_policy must be FAIL_OPEN")
    vm = c.get("vm_config", {})
    expect(vm.get("runtime") == "envoy.wasm.runtime.v8", f"{where}: runtime must be envoy.wasm.runtime.v8")
    expect(vm.get("code", {}).get("local", {}).get("filename", "").startswith("/"), f"{where}: module path must be absolute")
    return c


def base_vm_configs(ctx) -> dict:
    """side -> vm_config of the base bundle's reflex filter there."""
    return {side: _reflex_wasm_patches(ctx, side)[0][1]["patch"]["value"]["typed_config"]["config"]["vm_config"]
            for side in SIDES if _reflex_wasm_patches(ctx, side)}


def check_filter_settings(ctx: Ctx):
    for side, (vm_id, _) in SIDES.items():
        patches = _reflex_wasm_patches(ctx, side)
        expect(len(patches) == 1, f"expected one reflex HTTP_FILTER patch for {side}, found {len(patches)}")
        c = _check_wasm_patch(patches[0][1], side)
        expect(c["vm_config"].get("vm_id") == vm_id, f"{side}: vm_id must be {vm_id}")
    vms = base_vm_configs(ctx)
    expect(len({json.dumps(v["code"]) for v in vms.values()}) == 1, "outbound and inbound must load the same module")
    vm = vms["SIDECAR_OUTBOUND"]
    wp = [x for x in ctx.wasmplugin if x.get("kind") == "WasmPlugin"]
    expect(len(wp) == 1, "expected one WasmPlugin")
    s = wp[0]["spec"]
    expect(s.get("failStrategy") == "FAIL_OPEN", "WasmPlugin failStrategy must be FAIL_OPEN")
    expect(s.get("pluginName") == "reflex", "WasmPlugin pluginName (root_id) must be reflex")
    expect(s.get("url", "").startswith("oci://"), "WasmPlugin url must be an oci:// reference")
    expect(s.get("match") == [{"mode": "CLIENT"}], "WasmPlugin must match outbound (CLIENT) traffic only")
    expect(s.get("phase") and s.get("type") == "HTTP", "WasmPlugin must set phase and type HTTP")
    return f"module {vm['code']['local']['filename']}"


def check_selection_and_priority(ctx: Ctx):
    for d in ctx.bundle + ctx.wasmplugin:
        if not is_manifest(d):
            continue
        sel = d["spec"].get("workloadSelector", {}).get("labels") or d["spec"].get("selector", {}).get("matchLabels")
        expect(sel == {"reflex.io/enabled": "true"}, f"{d['kind']} {d['metadata']['name']}: must select reflex.io/enabled=true only")
        if d["kind"] == "EnvoyFilter":
            expect(d["spec"].get("priority") == 10, f"EnvoyFilter {d['metadata']['name']}: base priority must be 10")
    return "reflex.io/enabled=true, priority 10"


def outbound_yaml_cluster() -> dict:
    doc = yaml.safe_load(OUTBOUND_YAML.read_text())
    return doc["static_resources"]["clusters"][0]


def check_cluster_patch(ctx: Ctx):
    patches = config_patches(ctx.bundle, "CLUSTER", "SIDECAR_OUTBOUND")
    expect(patches, "no CLUSTER patch for SIDECAR_OUTBOUND")
    want = outbound_yaml_cluster()
    for d, cp in patches:
        expect(cp["match"].get("context") == "SIDECAR_OUTBOUND", "CLUSTER patches must be SIDECAR_OUTBOUND")
        svc = (cp["match"].get("cluster") or {}).get("service") or (cp["match"].get("cluster") or {}).get("name")
        expect(svc, "a CLUSTER patch must name a service (a blanket match reaches ORIGINAL_DST clusters, "
                    "which Envoy rejects with override_host)")
        expect(cp["patch"]["operation"] == "MERGE", "the cluster patch must be a MERGE")
        value = cp["patch"]["value"]
        expect(set(value) == {"load_balancing_policy", "metadata"},
               f"the cluster patch must set load_balancing_policy and the steering mark only, sets {sorted(value)}")
        expect(value["load_balancing_policy"] == want["load_balancing_policy"], "load_balancing_policy differs from envoy/outbound.yaml")
        # reflex steers only clusters carrying this mark (filter_metadata merges by key, so
        # Istio's own filter_metadata.istio stays).
        expect(value["metadata"] == want["metadata"] == {"filter_metadata": {"reflex": {"steering": "override_host"}}},
               "the steering mark differs from envoy/outbound.yaml")
        src = value["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"]["override_host_sources"]
        expect(src == [{"header": STEERING_HEADER}] and ctx.fixture["steering"]["header"] == STEERING_HEADER,
               "override host header must be the configured steering header")
    return f"{len(patches)} service(s), same policy as envoy/outbound.yaml"


def check_patch_keys(ctx: Ctx):
    """Patch values use Envoy's proto field names (snake_case), which the merge emulation needs."""
    bad = []

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                if k != "@type" and not SNAKE_KEY.match(k):
                    bad.append(f"{path}.{k}")
                walk(v, f"{path}.{k}")
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
    for d in ctx.bundle + [d for docs in ctx.emergency.values() for d in docs]:
        for i, cp in enumerate(d["spec"].get("configPatches", [])):
            walk(cp["patch"].get("value", {}), f"{d['metadata']['name']}.configPatches[{i}].value")
            # istiod's own EnvoyFilter validation: a value for every non-REMOVE operation, a typed
            # config on every object that takes one.
            expect(cp["patch"]["operation"] == "REMOVE" or cp["patch"].get("value"), "missing patch value")
    expect(not bad, f"not snake_case: {bad}")


def stats_prefixes_from_fragments() -> dict:
    """Inclusion prefixes of the workload patch annotation and of the mesh-wide values."""
    out = {}
    for path in (WORKLOAD_PATCH, WORKLOAD_PATCH_WASMPLUGIN):
        ann = load_docs(path)[0]["spec"]["template"]["metadata"]["annotations"]
        proxy_cfg = yaml.safe_load(ann["proxy.istio.io/config"])
        out[path.name] = proxy_cfg["proxyStatsMatcher"]["inclusionPrefixes"]
    vals = load_docs(STATS_VALUES)[0]
    out[STATS_VALUES.name] = vals["meshConfig"]["defaultConfig"]["proxyStatsMatcher"]["inclusionPrefixes"]
    return out


def extra_stat_tags_from_fragments() -> dict:
    """extraStatTags of the workload patch annotations and of the mesh-wide values."""
    out = {}
    for path in (WORKLOAD_PATCH, WORKLOAD_PATCH_WASMPLUGIN):
        ann = load_docs(path)[0]["spec"]["template"]["metadata"]["annotations"]
        out[path.name] = yaml.safe_load(ann["proxy.istio.io/config"]).get("extraStatTags", [])
    vals = load_docs(STATS_VALUES)[0]
    out[STATS_VALUES.name] = vals["meshConfig"]["defaultConfig"].get("extraStatTags", [])
    return out


def istio_stat_tag(tag: str) -> dict:
    """The stats_tags entry Istio's bootstrap template writes for an extraStatTags entry
    (tools/packaging/common/envoy_bootstrap.json)."""
    return {"tag_name": tag, "regex": f"({tag}=\\.=(.*?);\\.;)"}


def check_metric_tags(ctx: Ctx):
    """Every tag a bundle filter puts in its metric names is extracted by every stats
    fragment's extraStatTags (else the tag stays in the exported name), and the two sides
    differ (else their series overwrite each other)."""
    per_side = {side: patch_config(_reflex_wasm_patches(ctx, side)[0][1]).get("metrics", {}).get("tags", {})
                for side in SIDES}
    expect(all(per_side.values()), f"every side must tag its metrics: {per_side}")
    expect(len({json.dumps(t, sort_keys=True) for t in per_side.values()}) == len(per_side),
           f"the sides must tag their metrics differently: {per_side}")
    needed = {k for t in per_side.values() for k in t}
    for where, tags in extra_stat_tags_from_fragments().items():
        expect(needed <= set(tags), f"{where}: extraStatTags {tags} lacks {sorted(needed - set(tags))}")
    return f"{json.dumps(per_side)}; extraStatTags in every stats fragment"


def check_workload_patch(ctx: Ctx):
    wp = load_docs(WORKLOAD_PATCH)
    expect(len(wp) == 1 and not is_manifest(wp[0]), "must be a single strategic-merge patch, not a manifest")
    tmpl = wp[0]["spec"]["template"]["metadata"]
    expect(tmpl["labels"] == {"reflex.io/enabled": "true"}, "must set the opt-in label")
    ann = tmpl["annotations"]
    for k in ann:
        expect(not _qualified_key_errors(k, "annotation"), f"bad annotation key {k}")
    vols = json.loads(ann["sidecar.istio.io/userVolume"])
    mounts = json.loads(ann["sidecar.istio.io/userVolumeMount"])
    expect(set(vols) == set(mounts) and len(vols) == 1, "userVolume and userVolumeMount must name the same one volume")
    name = next(iter(vols))
    expect(vols[name].get("configMap", {}).get("optional") is False, "the module ConfigMap must not be optional")
    mount = mounts[name]["mountPath"]
    d, cp = _reflex_wasm_patches(ctx)[0]
    filename = cp["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
    expect(os.path.dirname(filename) == mount.rstrip("/"), f"module {filename} is not under the mount {mount}")
    wpp = load_docs(WORKLOAD_PATCH_WASMPLUGIN)
    expect(len(wpp) == 1 and not is_manifest(wpp[0]), f"{WORKLOAD_PATCH_WASMPLUGIN.name}: one patch, not a manifest")
    meta = wpp[0]["spec"]["template"]["metadata"]
    expect(meta["labels"] == tmpl["labels"], f"{WORKLOAD_PATCH_WASMPLUGIN.name}: must set the same label")
    expect(set(meta["annotations"]) == {"proxy.istio.io/config"}
           and meta["annotations"]["proxy.istio.io/config"] == ann["proxy.istio.io/config"],
           f"{WORKLOAD_PATCH_WASMPLUGIN.name}: the stats annotation only, as in {WORKLOAD_PATCH.name}")
    return f"{filename} from ConfigMap {vols[name]['configMap']['name']}"


def check_stats_prefixes(ctx: Ctx):
    # Every "reflex_..." string literal in the filter's sources (the metric names among them).
    metric_names = sorted({m for f in (ROOT / "src").rglob("*.rs")
                           for m in re.findall(r'"(reflex_[a-z0-9_]+)"', f.read_text())})
    expect(metric_names, "no reflex_* metric names found under src/")
    for where, prefixes in stats_prefixes_from_fragments().items():
        for m in metric_names:
            internal = WASM_STAT_NAMESPACE + m
            expect(any(internal.startswith(p) for p in prefixes), f"{where}: {internal} matches no inclusion prefix {prefixes}")
    return f"{len(metric_names)} reflex_* names in src/ match as {WASM_STAT_NAMESPACE}reflex_*"


INBOUND_CLUSTER = "inbound|8080||"


def inbound_app_cluster(port: int) -> dict:
    """The inbound cluster to the local app. Istio builds it ORIGINAL_DST (the original
    destination iptables recorded, bound to 127.0.0.6); without iptables that would loop back
    to the listener, so here it is STATIC to the app's port."""
    return {"name": INBOUND_CLUSTER, "type": "STATIC", "connect_timeout": "10s",
            "circuit_breakers": istio_circuit_breakers(),
            "load_assignment": {"cluster_name": INBOUND_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def http_filter_names(listener: dict) -> list:
    return [f["name"] for f in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]]


def build_istio_like_bootstrap(ctx: Ctx, ports: list, admin: int, lis: int, probe: int, inb: int,
                               extra_docs: list = ()) -> tuple[dict, dict]:
    """Bootstrap + facts about which clusters the bundle's patches changed. The EnvoyFilters
    of `extra_docs` (an emergency manifest) are applied together with the bundle's, in
    istiod's priority order."""
    docs = ctx.bundle + list(extra_docs)
    steering = config_patches(docs, "CLUSTER", "SIDECAR_OUTBOUND")
    service = steering[0][1]["match"]["cluster"]["service"]
    main = f"outbound|8080||{service}"
    subset = f"outbound|8080|v1|{service}"
    other = "outbound|8080||other.default.svc.cluster.local"
    clusters = [istio_eds_cluster(main, service, eds_file(ctx, main, ports)),
                with_destination_rule(istio_eds_cluster(subset, service, eds_file(ctx, subset, ports))),
                istio_eds_cluster(other, "other.default.svc.cluster.local", eds_file(ctx, other, ports)),
                blackhole_cluster(), passthrough_cluster(), inbound_app_cluster(ports[0])]
    patched = apply_cluster_patches(clusters, steering)
    listeners = [hcm_listener("0.0.0.0_8080", lis, [istio_route(subset, "/v1"), istio_route(main)],
                              "outbound_0.0.0.0_8080")]
    inbound = [hcm_listener("virtualInbound", inb, [istio_route(INBOUND_CLUSTER)], "inbound_0.0.0.0_8080")]
    inserted = apply_http_filter_patches(listeners, config_patches(docs, "HTTP_FILTER", "SIDECAR_OUTBOUND"))
    inserted_inbound = apply_http_filter_patches(inbound, config_patches(docs, "HTTP_FILTER", "SIDECAR_INBOUND"))
    listeners += inbound
    # Listeners the EnvoyFilters ADD (the control listener, priority above the bundle's, so
    # istiod adds it after the bundle's HTTP_FILTER patches ran).
    added = [copy.deepcopy(cp["patch"]["value"]) for _, cp in config_patches(docs, "LISTENER", "SIDECAR_INBOUND")
             if cp["patch"]["operation"] == "ADD"]
    listeners += added
    # Added after the patches: a listener without reflex, to see the clusters' own balancing.
    listeners.append(hcm_listener("probe", probe, [istio_route(subset, "/v1"), istio_route(other, "/other"),
                                                   istio_route(main)], "probe"))
    stats_prefixes = sorted({p for ps in stats_prefixes_from_fragments().values() for p in ps})
    boot = {
        "node": {"id": "sidecar~127.0.0.1~app-0.default~default.svc.cluster.local", "cluster": "app.default",
                 "metadata": {"ISTIO_VERSION": "1.32.0"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_config": {"use_all_default_tags": False,
                         "stats_tags": [istio_stat_tag(t) for t in
                                        sorted({t for ts in extra_stat_tags_from_fragments().values() for t in ts})],
                         "stats_matcher": {"inclusion_list": {
            "patterns": ISTIO_STATS_PATTERNS_WITHOUT_WASM + [{"prefix": p} for p in stats_prefixes]}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    n = rewrite_wasm_filenames(boot, ctx.wasm)
    facts = {"main": main, "subset": subset, "other": other, "patched": patched, "inserted": inserted,
             "inserted_inbound": inserted_inbound, "rewritten": n, "listener": listeners[0],
             "added_wasm": sum(1 for lis in added for f in lis["filter_chains"][0]["filters"][0]["typed_config"]
                               ["http_filters"] if f.get("typed_config", {}).get("@type") == WASM_TYPE),
             "inbound_listener": inbound[0]}
    return boot, facts


def check_patch_application(ctx: Ctx):
    boot, facts = build_istio_like_bootstrap(ctx, [1, 2, 3], 1, 2, 3, 4)
    expect(facts["patched"] == {facts["main"], facts["subset"]},
           f"the cluster patch must change exactly the service's clusters, changed {sorted(facts['patched'])}")
    names = http_filter_names(facts["listener"])
    expect(facts["inserted"] == 1 and names[-2:] == ["reflex", ROUTER], f"reflex must sit right before the router: {names}")
    inbound = http_filter_names(facts["inbound_listener"])
    expect(facts["inserted_inbound"] == 1 and inbound[-2:] == ["reflex", ROUTER],
           f"inbound: reflex must sit right before the router: {inbound}")
    cl = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    expect(cl[facts["main"]]["lb_policy"] == "LEAST_REQUEST" and "load_balancing_policy" in cl[facts["main"]],
           "the merge keeps Istio's lb_policy and adds load_balancing_policy")
    expect(cl[facts["subset"]].get("least_request_lb_config") and cl[facts["subset"]].get("outlier_detection"),
           "the merge keeps the DestinationRule settings")
    expect("load_balancing_policy" not in cl["PassthroughCluster"] and "load_balancing_policy" not in cl["BlackHoleCluster"]
           and "load_balancing_policy" not in cl[facts["other"]], "unselected clusters must stay untouched")
    return f"filters: {' > '.join(names)}; inbound: {' > '.join(inbound)}"


def validate_sidecar(ctx: Ctx, extra_docs: list = (), label: str = "istio-validate"):
    """The Istio-like sidecar with the bundle (and `extra_docs`, emergency manifests) applied,
    through `envoy --mode validate`, which also configures every reflex plugin in the module.
    Returns (rc, output, facts)."""
    boot, facts = build_istio_like_bootstrap(ctx, [18001, 18002, 18003], free_port(), free_port(), free_port(),
                                             free_port(), extra_docs)
    want = len(_reflex_wasm_patches(ctx, "SIDECAR_OUTBOUND", ctx.bundle + list(extra_docs))) + \
        len(_reflex_wasm_patches(ctx, "SIDECAR_INBOUND", ctx.bundle + list(extra_docs)))
    expect(facts["rewritten"] - facts["added_wasm"] == want == facts["inserted"] + facts["inserted_inbound"],
           f"expected {want} wasm module paths to rewrite, found {facts['rewritten']}")
    path = ctx.tmp / f"{label}.json"
    path.write_text(json.dumps(boot, indent=1))
    rc, out = envoy_validate(ctx.envoy, path)
    return rc, out, facts


def check_envoy_validate_bundle(ctx: Ctx, extra_docs: list = (), label: str = "istio-validate"):
    rc, out, facts = validate_sidecar(ctx, extra_docs, label)
    expect(rc == 0, f"envoy --mode validate failed: {out.strip()[-800:]}")
    return (f"OK, outbound {' > '.join(http_filter_names(facts['listener'])[-4:])}; "
            f"inbound {' > '.join(http_filter_names(facts['inbound_listener'])[-4:])}")


@contextlib.contextmanager
def running_sidecar(ctx: Ctx, extra_docs: list = (), label: str = "istio-run"):
    """Three upstreams and a running Envoy with the Istio-like sidecar (bundle + `extra_docs`
    applied); yields a namespace with ports, admin, lis (outbound), probe, inb (inbound), log.
    Stops everything it started."""
    procs = []
    envoy = None
    log_path = ctx.tmp / f"{label}.log"
    try:
        ports = [free_port() for _ in range(3)]
        for i, p in enumerate(ports):
            procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, str(p), f"u{i}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in ports:
            wait_for(lambda p=p: http_get(f"http://127.0.0.1:{p}/", timeout=1)[0] == 200, 10, f"upstream on {p}")
        admin, lis, probe, inb = free_port(), free_port(), free_port(), free_port()
        boot, facts = build_istio_like_bootstrap(ctx, ports, admin, lis, probe, inb, extra_docs)
        cfg = ctx.tmp / f"{label}.json"
        cfg.write_text(json.dumps(boot, indent=1))
        with open(log_path, "w") as log:
            envoy = subprocess.Popen([ctx.envoy, "-c", str(cfg), "--concurrency", "2", "--disable-hot-restart",
                                      "-l", "info"], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: envoy.poll() is not None or http_get(f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200,
                 20, "Envoy /ready")
        expect(envoy.poll() is None, f"Envoy exited: {log_path.read_text()[-1500:]}")
        yield types.SimpleNamespace(ports=ports, admin=admin, lis=lis, probe=probe, inb=inb, log=log_path,
                                    facts=facts)
    finally:
        stop(envoy)
        for p in procs:
            stop(p)


def check_envoy_runtime(ctx: Ctx):
    with running_sidecar(ctx) as sc:
        ports, admin, lis, probe, log_path = sc.ports, sc.admin, sc.lis, sc.probe, sc.log
        # EDS from the file arrives right after start: wait until the endpoints are known.
        wait_for(lambda: http_get(f"http://127.0.0.1:{lis}/")[0] == 200, 10, "first request through reflex")

        # 1. Traffic through the outbound listener with reflex: every request succeeds.
        seen = collections.Counter()
        for path in ["/"] * 10 + ["/v1"] * 5:
            status, body = http_get(f"http://127.0.0.1:{lis}{path}")
            expect(status == 200, f"GET {path} through reflex: {status} {body[:200]}")
            seen[body] += 1
        # 2. The merged clusters follow the steering header: override_host wins over the
        #    lb_policy / least_request_lb_config Istio keeps on them (listener without reflex).
        target = f"127.0.0.1:{ports[1]}"
        for path in ("/", "/v1"):
            got = collections.Counter(http_get(f"http://127.0.0.1:{probe}{path}", {STEERING_HEADER: target})[1]
                                      for _ in range(12))
            expect(got == {"u1": 12}, f"{path}: header {target} must send all 12 requests to u1, got {dict(got)}")
        got = collections.Counter(http_get(f"http://127.0.0.1:{probe}/", {STEERING_HEADER: f"127.0.0.1:1,{target}"})[1]
                                  for _ in range(6))
        expect(got == {"u1": 6}, f"an unknown first host must be skipped for the next: {dict(got)}")
        fallback = collections.Counter(http_get(f"http://127.0.0.1:{probe}/")[1] for _ in range(18))
        expect(len(fallback) >= 2 and set(fallback) <= {"u0", "u1", "u2"},
               f"without the header the fallback must spread: {dict(fallback)}")
        control = collections.Counter(http_get(f"http://127.0.0.1:{probe}/other", {STEERING_HEADER: target})[1]
                                      for _ in range(12))
        expect(len(control) >= 2, f"an unpatched cluster must ignore the header: {dict(control)}")
        # 3. Metrics: reflex_* exported under Istio's inclusion list plus the shipped prefix.
        status, prom = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
        expect(status == 200, f"/stats/prometheus: {status}")
        m = re.search(r'^reflex_requests_total\{direction="outbound"\} (\d+)', prom, re.M)
        expect(m, "reflex_requests_total{direction=\"outbound\"} is not exported")
        expect(int(m.group(1)) > 0, "reflex_requests_total stayed 0")
        # 4. The inbound side: requests this pod serves pass the inbound reflex (admission in
        #    dry-run) to the app, and are counted in the inbound series only.
        inbound = collections.Counter(http_get(f"http://127.0.0.1:{sc.inb}/")[0] for _ in range(10))
        expect(inbound == {200: 10}, f"inbound through reflex: {dict(inbound)}")
        status, prom = http_get(f"http://127.0.0.1:{admin}/stats/prometheus")
        m_in = re.search(r'^reflex_requests_total\{direction="inbound"\} (\d+)', prom, re.M)
        expect(m_in and int(m_in.group(1)) == 10, f"reflex_requests_total{{direction=\"inbound\"}}: {m_in and m_in.group(1)}")
        expect("=.=" not in prom, "a tag was left in a metric name (extraStatTags missing?)")
        log = log_path.read_text()
        for vm_id, _ in SIDES.values():
            expect(re.search(rf"wasm log reflex {vm_id}: reflex configuration accepted", log),
                   f"Envoy's log lacks 'reflex configuration accepted' from {vm_id}")
        bad = [l for l in log.splitlines() if "[critical]" in l or ("wasm" in l and "[error]" in l)]
        expect(not bad, f"errors in Envoy's log: {bad[:3]}")
        return (f"15/15 ok via reflex ({dict(seen)}); header -> u1 12/12 on both merged clusters; "
                f"fallback {dict(fallback)}; unpatched {dict(control)}; reflex_requests_total outbound {m.group(1)}, "
                f"inbound {m_in.group(1)}; inbound 10/10 ok")


# --------------------------------------------------------------------------------------------
# Emergency manifests (istio/emergency/)
# --------------------------------------------------------------------------------------------

def emergency_wasm_patches(ctx, docs: list) -> list:
    """(side, doc, patch) of every reflex wasm HTTP_FILTER patch in `docs`."""
    return [(side, d, cp) for side in SIDES for d, cp in _reflex_wasm_patches(ctx, side, docs)]


def check_emergency_files(ctx: Ctx):
    have = set(ctx.emergency)
    want = set(EMERGENCY) | {NORMAL}
    expect(have == want, f"istio/emergency/ must hold exactly {sorted(want)}, holds {sorted(have)}")
    stray = [p.name for p in EMERGENCY_DIR.iterdir() if p.suffix not in (".yaml",)]
    expect(not stray, f"unexpected files in istio/emergency/ (kubectl apply -f on the folder reads them): {stray}")
    # Every instance at once (an operator may apply several): names unique, within MAX_PUSHERS.
    base = [(s, cp) for s in SIDES for _, cp in _reflex_wasm_patches(ctx, s)]
    every = base + [(s, cp) for docs in ctx.emergency.values() for s, _, cp in emergency_wasm_patches(ctx, docs)]
    names = [cp["patch"]["value"]["typed_config"]["config"]["name"] for _, cp in every]
    dup = sorted({n for n in names if names.count(n) > 1} - {"reflex"})
    expect(not dup, f"plugin names must be unique (switch sets are keyed by them): {dup}")
    expect(names.count("reflex") == len(SIDES), "only the base filters may be named reflex")
    meta = [d["metadata"]["name"] for f, docs in ctx.emergency.items() if f != NORMAL for d in docs]
    expect(len(meta) == len(set(meta)), f"metadata.name must be unique: {meta}")
    per_side = collections.Counter(s for s, cp in every if cp not in [b for _, b in base])
    expect(all(n <= MAX_PUSHERS for n in per_side.values()),
           f"more switches instances per side than reflex reads ({MAX_PUSHERS}): {dict(per_side)}")
    return f"{sorted(have)}; instances per side {dict(per_side)}"


def check_emergency_manifest(ctx: Ctx, fname: str, docs: list, text: str | None = None):
    sides, section = EMERGENCY[fname]
    text = (EMERGENCY_DIR / fname).read_text() if text is None else text
    expect(text.startswith("# "), "must start with a comment (what it does, apply/delete, timing)")
    head = text.split("\napiVersion:")[0]
    for verb in ("apply", "delete"):
        expect(f"kubectl {verb} -f istio/emergency/{fname}" in head, f"the comment lacks `kubectl {verb} -f istio/emergency/{fname}`")
    expect(len(docs) == 1 and docs[0].get("kind") == "EnvoyFilter", "must be one EnvoyFilter")
    d = docs[0]
    base = [b for b in ctx.bundle if b.get("kind") == "EnvoyFilter"]
    expect(d["metadata"].get("namespace") == base[0]["metadata"]["namespace"], "namespace must be the base bundle's")
    expect(d["metadata"]["name"].startswith("reflex-emergency-"), "metadata.name must start with reflex-emergency-")
    expect(d["metadata"].get("labels", {}).get("reflex.io/component") == "emergency",
           "label reflex.io/component: emergency (kubectl delete -l selects all of them)")
    expect(d["spec"].get("workloadSelector") == base[0]["spec"]["workloadSelector"], "must select the base bundle's pods")
    top = max(b["spec"].get("priority", 0) for b in base)
    expect(d["spec"].get("priority", 0) > top, f"priority must be above the base bundle's {top}")
    patches = emergency_wasm_patches(ctx, docs)
    expect(len(patches) == len(d["spec"]["configPatches"]), "every patch must be a reflex wasm HTTP_FILTER")
    got = [s for s, _, _ in patches]
    expect(sorted(got) == sorted(sides), f"must patch {sorted(sides)} once each, patches {got}")
    vms = base_vm_configs(ctx)
    for side, _, cp in patches:
        c = _check_wasm_patch(cp, side, before="reflex")
        name = cp["patch"]["value"]["name"]
        expect(name.startswith("reflex-emergency-") and c.get("name", "").startswith("reflex-emergency-"),
               f"{side}: filter and plugin name must start with reflex-emergency-")
        expect(c["vm_config"] == vms[side], f"{side}: vm_config must equal the base filter's (vm_id "
               f"{vms[side]['vm_id']}, same module), or the switches never reach it")
        cfg = patch_config(cp)
        expect(cfg.get("role") == "switches", f"{side}: role must be switches")
        extra = sorted(set(cfg) - SWITCHES_FIELDS)
        expect(not extra, f"{side}: only {sorted(SWITCHES_FIELDS)} are allowed with role switches, found {extra}")
        expect(cfg.get("version") == 1, f"{side}: version must be 1")
        expect(cfg.get("emergency") == section, f"{side}: emergency section {cfg.get('emergency')} != {section}")
        base_metrics = patch_config(_reflex_wasm_patches(ctx, side)[0][1]).get("metrics")
        expect(cfg.get("metrics") == base_metrics,
               f"{side}: metrics {cfg.get('metrics')} must equal the base filter's {base_metrics} (same series)")
    return f"{', '.join(sorted(sides))}: {json.dumps(section)[:70]}"


def negative_emergency(ctx: Ctx, fname: str, mutate, want: str):
    docs = copy.deepcopy(ctx.emergency[fname])
    mutate(docs[0])
    try:
        check_emergency_manifest(ctx, fname, docs)
    except CheckFailed as e:
        expect(want in str(e), f"failed for another reason: {e}")
        return str(e)[:100]
    raise CheckFailed("the broken emergency manifest passed")


def _set_switches_config(doc: dict, **fields):
    cfg = doc["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["configuration"]
    cfg["value"] = json.dumps(dict(json.loads(cfg["value"]), **fields))


def check_envoy_validate_emergency(ctx: Ctx, fnames: list):
    """The manifests applied on top of the bundle: each switches instance sits right before
    reflex (it renews its switches from the requests it sees, so reflex reads them fresh), and
    Envoy (with reflex configuring every instance) accepts it."""
    docs = [d for n in fnames for d in ctx.emergency[n]]
    _, facts = build_istio_like_bootstrap(ctx, [1, 2, 3], 1, 2, 3, 4, docs)
    for lis in (facts["listener"], facts["inbound_listener"]):
        names = http_filter_names(lis)
        i = names.index("reflex")
        before = [n for n in names[:i] if n.startswith("reflex-emergency-")]
        expect(names[i - len(before):i] == before and names[-2:] == ["reflex", ROUTER],
               f"{lis['name']}: switches instances must sit right before reflex, reflex before the router: {names}")
    label = "emergency-" + ("all" if len(fnames) > 1 else fnames[0].removesuffix(".yaml"))
    return check_envoy_validate_bundle(ctx, docs, label)


def check_envoy_rejects_forbidden_switches_field(ctx: Ctx):
    docs = copy.deepcopy(ctx.emergency["kill-all.yaml"])
    _set_switches_config(docs[0], status={"enabled": False})
    rc, out, _ = validate_sidecar(ctx, docs, "emergency-forbidden-field")
    expect(rc != 0, "Envoy accepted a switches instance that sets status")
    expect(SWITCHES_REJECTED in out, f"rejected for another reason (a module without the switches role?): "
                                     f"{out.strip()[-400:]}")
    return f"rejected: {SWITCHES_REJECTED}"


def kubectl_apply(*doc_lists) -> list:
    """The objects `kubectl apply` leaves after applying each list in turn: a later document
    with the same kind, namespace and name replaces the earlier one."""
    objs = {}
    for docs in doc_lists:
        for d in docs:
            objs[(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])] = d
    return list(objs.values())


def check_normal_manifest(ctx: Ctx):
    docs = ctx.emergency[NORMAL]
    others = {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]): d
              for f, ds in ctx.emergency.items() if f != NORMAL for d in ds}
    got = {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs}
    expect(got == set(others), f"must name exactly the emergency manifests' objects: "
                               f"missing {sorted(set(others) - got)}, extra {sorted(got - set(others))}")
    for d in docs:
        o = others[(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])]
        where = d["metadata"]["name"]
        expect(d["apiVersion"] == o["apiVersion"], f"{where}: apiVersion must be {o['apiVersion']}")
        expect("configPatches" in d["spec"] and d["spec"]["configPatches"] == [],
               f"{where}: needs an explicit empty configPatches (apply must clear the patches even on "
               f"objects created without kubectl apply)")
        expect(d["spec"].get("workloadSelector") == o["spec"]["workloadSelector"], f"{where}: same workloadSelector")
        expect(d["metadata"].get("labels", {}).get("reflex.io/component") == "emergency",
               f"{where}: label reflex.io/component: emergency (kubectl delete -l still finds it)")
    left = [d["metadata"]["name"] for d in kubectl_apply(*[ctx.emergency[f] for f in sorted(EMERGENCY)], docs)
            if d["spec"].get("configPatches")]
    expect(not left, f"after every emergency manifest and then normal.yaml, patches remain in {left}")
    return f"{len(docs)} empty EnvoyFilters; every emergency manifest then normal.yaml leaves no patch"


def check_envoy_runtime_normal(ctx: Ctx):
    """kill-all, then normal.yaml applied over it: no switches instance left, traffic flows."""
    docs = kubectl_apply(ctx.emergency["kill-all.yaml"], ctx.emergency[NORMAL])
    with running_sidecar(ctx, docs, "istio-normal") as sc:
        for lis in (sc.facts["listener"], sc.facts["inbound_listener"]):
            stray = [n for n in http_filter_names(lis) if n.startswith("reflex-emergency-")]
            expect(not stray, f"{lis['name']}: switches instances left after normal.yaml: {stray}")
        for side, port in (("outbound", sc.lis), ("inbound", sc.inb)):
            wait_for(lambda port=port: http_get(f"http://127.0.0.1:{port}/")[0] == 200, 10, f"{side}: 200")
        got = collections.Counter(http_get(f"http://127.0.0.1:{p}/")[0] for p in (sc.lis, sc.inb) for _ in range(5))
        expect(got == {200: 10}, f"every request must pass: {dict(got)}")
    return "kill-all replaced by normal.yaml's empty EnvoyFilter: outbound and inbound 200"


def check_envoy_runtime_kill_all(ctx: Ctx):
    """kill-all in a running Envoy: the switches instances reach both reflex filters."""
    body = EMERGENCY["kill-all.yaml"][1]["kill"][0]["body"]
    with running_sidecar(ctx, ctx.emergency["kill-all.yaml"], "istio-kill-all") as sc:
        for side, port in (("outbound", sc.lis), ("inbound", sc.inb)):
            wait_for(lambda port=port: http_get(f"http://127.0.0.1:{port}/") == (503, body), 10,
                     f"{side}: 503 '{body.strip()}' from kill-all")
        got = collections.Counter(http_get(f"http://127.0.0.1:{p}/")[0] for p in (sc.lis, sc.inb) for _ in range(5))
        expect(got == {503: 10}, f"every request must be killed: {dict(got)}")
    return "outbound and inbound: 503 killed by reflex emergency switch"


# --------------------------------------------------------------------------------------------
# Control listener (istio/control-listener.yaml)
# --------------------------------------------------------------------------------------------

def control_listener_instances(docs: list) -> dict:
    """side -> (wasm filter entry, parsed configuration) of the control listener's instances."""
    (lis,) = [cp["patch"]["value"] for _, cp in config_patches(docs, "LISTENER", "SIDECAR_INBOUND")]
    filters = lis["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    out = {}
    for side, (name, _) in CONTROL_INSTANCES.items():
        f = [f for f in filters if f["name"] == name]
        expect(len(f) == 1, f"one filter named {name} expected")
        out[side] = (f[0], json.loads(f[0]["typed_config"]["config"]["configuration"]["value"]))
    return out


# The text the documented sed (in the file's header and docs/runbook.md) replaces.
CONTROL_OFF = '"enabled": false, "token": ""'
CONTROL_SED = 'sed "s/\\"enabled\\": false, \\"token\\": \\"\\"/\\"enabled\\": true, \\"token\\": \\"$TOKEN\\"/"'


def with_control_token(token: str, port: int) -> list:
    """The control listener manifest turned on the documented way (the sed, done on the
    file's text, so the instructions are what is tested), with the listener on `port`."""
    text = CONTROL_LISTENER.read_text()
    expect(text.count(CONTROL_OFF) == len(CONTROL_INSTANCES),
           f"the documented sed must find {CONTROL_OFF!r} once per side")
    docs = [d for d in yaml.safe_load_all(text.replace(CONTROL_OFF, f'"enabled": true, "token": "{token}"')) if d]
    (cp,) = [cp for _, cp in config_patches(docs, "LISTENER", "SIDECAR_INBOUND")]
    cp["patch"]["value"]["address"]["socket_address"]["port_value"] = port
    return docs


def check_control_listener(ctx: Ctx):
    docs = ctx.control_listener
    expect(len(docs) == 1 and len(docs[0]["spec"]["configPatches"]) == 1, "one EnvoyFilter, one patch")
    d, cp = docs[0], docs[0]["spec"]["configPatches"][0]
    expect(cp["applyTo"] == "LISTENER" and cp["patch"]["operation"] == "ADD"
           and cp["match"].get("context") == "SIDECAR_INBOUND", "must ADD a LISTENER (context SIDECAR_INBOUND)")
    expect(d["spec"].get("workloadSelector") == ctx.bundle[0]["spec"]["workloadSelector"], "must select the bundle's pods")
    top = max(b["spec"].get("priority", 0) for b in ctx.bundle)
    expect(d["spec"].get("priority", 0) > top, f"priority must be above the bundle's {top} (added after its patches)")
    lis = cp["patch"]["value"]
    addr = lis["address"]["socket_address"]
    expect(addr["address"] == "127.0.0.1", f"must bind loopback only, binds {addr['address']}")
    hcm = lis["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    expect(names == [n for n, _ in CONTROL_INSTANCES.values()] + [ROUTER], f"filters: {names}")
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    expect(len(routes) == 1 and routes[0].get("direct_response", {}).get("status") == 404,
           "everything the instances do not answer must get a 404 from Envoy, never reach a cluster")
    vms = base_vm_configs(ctx)
    for side, (f, cfg) in control_listener_instances(docs).items():
        c = f["typed_config"]["config"]
        expect(c["vm_config"] == vms[side], f"{side}: vm_config must equal the base filter's (vm_id "
               f"{vms[side]['vm_id']}), or its switches never reach that filter")
        expect(c.get("allow_on_headers_stop_iteration") is True, f"{side}: needs allow_on_headers_stop_iteration")
        expect(c.get("failure_policy") == "FAIL_OPEN" and c.get("root_id") == "reflex", f"{side}: FAIL_OPEN, root_id reflex")
        expect(cfg.get("role") == "switches" and not set(cfg) - SWITCHES_FIELDS - {"control"},
               f"{side}: a switches instance (no resilience features of its own): {sorted(cfg)}")
        ctl = cfg.get("control", {})
        expect(ctl.get("enabled") is False and ctl.get("token") == "",
               f"{side}: must ship off and without a token (operators turn it on with their own): {ctl}")
        expect(ctl.get("allowFrom", "loopback") == "loopback" and ctl.get("pathPrefix") == CONTROL_INSTANCES[side][1],
               f"{side}: control {ctl}")
        base_metrics = patch_config(_reflex_wasm_patches(ctx, side)[0][1]).get("metrics")
        expect(cfg.get("metrics") == base_metrics, f"{side}: metrics must equal the base filter's {base_metrics}")
    for where in (CONTROL_LISTENER, ROOT / "docs" / "runbook.md"):
        expect(CONTROL_SED in where.read_text(), f"{where.name} must give the sed the validator runs: {CONTROL_SED}")
    return f"127.0.0.1:{addr['port_value']}: {' > '.join(names)}"


def check_envoy_rejects_enabled_control_without_token(ctx: Ctx):
    """Why it ships off: enabled without a token, reflex rejects the configuration and Envoy
    the whole listener update."""
    docs = yaml.safe_load(CONTROL_LISTENER.read_text().replace(CONTROL_OFF, '"enabled": true, "token": ""'))
    rc, out, _ = validate_sidecar(ctx, [docs], "control-empty-token")
    expect(rc != 0, "Envoy accepted an enabled control endpoint without a token")
    want = "invalid reflex configuration at `control.token`"
    expect(want in out, f"rejected for another reason: {out.strip()[-400:]}")
    return want


def check_envoy_runtime_control_listener_as_shipped(ctx: Ctx):
    """Applied unchanged: Envoy takes it, traffic is untouched, the endpoint is off (404)."""
    docs = copy.deepcopy(ctx.control_listener)
    (cp,) = [cp for _, cp in config_patches(docs, "LISTENER", "SIDECAR_INBOUND")]
    port = free_port()
    cp["patch"]["value"]["address"]["socket_address"]["port_value"] = port
    with running_sidecar(ctx, docs, "istio-control-off") as sc:
        wait_for(lambda: http_get(f"http://127.0.0.1:{sc.lis}/")[0] == 200, 10, "first request through reflex")
        got = collections.Counter(http_get(f"http://127.0.0.1:{port}/.reflex/{side}/status")[0]
                                  for side in ("outbound", "inbound"))
        expect(got == {404: 2}, f"the shipped (off) endpoint must not answer: {dict(got)}")
        expect(http_get(f"http://127.0.0.1:{sc.inb}/")[0] == 200, "inbound traffic must pass")
    return "accepted; /.reflex/{outbound,inbound}/status 404; traffic 200"


def check_envoy_runtime_control_listener(ctx: Ctx):
    """The control listener in a running Istio-like sidecar: each side's switches from its
    own path, a wrong token changes nothing, normal undoes."""
    token, port = "t0ken-for-the-validator-" + str(os.getpid()), free_port()
    docs = with_control_token(token, port)
    auth = {"Authorization": f"Bearer {token}"}

    def control(side: str, action: str, body: str | None = None, headers: dict | None = None):
        url = f"http://127.0.0.1:{port}/.reflex/{side}/{action}"
        req = urllib.request.Request(url, data=None if body is None else body.encode(),
                                     headers=headers if headers is not None else auth,
                                     method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    with running_sidecar(ctx, docs, "istio-control") as sc:
        sides = {"outbound": sc.lis, "inbound": sc.inb}
        wait_for(lambda: http_get(f"http://127.0.0.1:{sc.lis}/")[0] == 200, 10, "first request through reflex")
        status, body = control("outbound", "status")
        expect(status == 200 and "effective" in json.loads(body), f"status: {status} {body[:200]}")
        status, _ = control("outbound", "kill", '{"scope":{"all":true}}', {"Authorization": "Bearer wrong-token-000000"})
        expect(status == 401, f"a wrong token must get 401, got {status}")
        expect(http_get(f"http://127.0.0.1:{sc.lis}/")[0] == 200, "a wrong token must change nothing")
        expect(http_get(f"http://127.0.0.1:{port}/elsewhere")[0] == 404, "other paths must get 404")
        results = []
        for side, port_of_side in sides.items():
            other = [p for s, p in sides.items() if s != side][0]
            status, body = control(side, "kill", '{"scope":{"all":true},"expiresIn":"5m"}')
            expect(status == 200, f"{side} kill: {status} {body[:200]}")
            got = collections.Counter(http_get(f"http://127.0.0.1:{port_of_side}/")[0] for _ in range(6))
            expect(got == {503: 6}, f"{side}: every request must be killed at once: {dict(got)}")
            expect(http_get(f"http://127.0.0.1:{other}/")[0] == 200, f"a {side} kill must leave the other side alone")
            status, body = control(side, "normal", "")
            expect(status == 200, f"{side} normal: {status} {body[:200]}")
            got = collections.Counter(http_get(f"http://127.0.0.1:{port_of_side}/")[0] for _ in range(6))
            expect(got == {200: 6}, f"{side}: normal must undo the kill at once: {dict(got)}")
            results.append(f"{side} kill 6/6 503, normal 6/6 200")
        log = sc.log.read_text()
        expect("reflex control: " in log, "control changes must be logged")
    return "; ".join(results) + "; wrong token 401, other paths 404"


def _rejected(ctx: Ctx, cluster: dict, want: str):
    steering = config_patches(ctx.bundle, "CLUSTER", "SIDECAR_OUTBOUND")
    c = copy.deepcopy(cluster)
    istio_merge(c, steering[0][1]["patch"]["value"])
    boot = {"node": {"id": "sidecar~127.0.0.1~x.default~default.svc.cluster.local", "cluster": "x"},
            "static_resources": {"clusters": [c]}}
    path = ctx.tmp / f"reject-{re.sub('[^a-z]', '', cluster['name'].lower())}.json"
    path.write_text(json.dumps(boot))
    rc, out = envoy_validate(ctx.envoy, path)
    expect(rc != 0, "Envoy accepted it: the README's compatibility notes are out of date")
    expect(want in out, f"rejected for another reason: {out.strip()[-400:]}")
    return f"rejected: {want}"


def check_reject_locality(ctx: Ctx):
    name = "outbound|8080||x.default.svc.cluster.local"
    c = istio_eds_cluster(name, "x.default.svc.cluster.local", eds_file(ctx, name, []))
    c["common_lb_config"] = {"locality_weighted_lb_config": {}}
    return _rejected(ctx, c, "load_balancing_policy cannot be combined with partial fields")


def check_reject_original_dst(ctx: Ctx):
    return _rejected(ctx, passthrough_cluster(), "cluster provided LB not specified")


def check_compose_envoy(ctx: Ctx):
    text = COMPOSE_ENVOY.read_text()
    expect(COMPOSE_WASM_PATH in text, f"{COMPOSE_ENVOY.name} must load the module from {COMPOSE_WASM_PATH}")
    doc = yaml.safe_load(text)
    cluster = doc["static_resources"]["clusters"][0]
    expect(cluster["type"] == "STRICT_DNS", "compose upstreams must be STRICT_DNS")
    hosts = [e["endpoint"]["address"]["socket_address"]["address"]
             for le in cluster["load_assignment"]["endpoints"] for e in le["lb_endpoints"]]
    expect(hosts == ["u0", "u1", "u2"], f"compose upstream hosts: {hosts}")
    want = outbound_yaml_cluster()
    expect(cluster["load_balancing_policy"] == want["load_balancing_policy"], "load_balancing_policy differs from envoy/outbound.yaml")
    expect(cluster.get("metadata") == want["metadata"], "the steering mark differs from envoy/outbound.yaml")
    hf = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    ref = yaml.safe_load(OUTBOUND_YAML.read_text())["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    a, b = copy.deepcopy(hf), copy.deepcopy(ref)
    rewrite_wasm_filenames(a, "X")
    rewrite_wasm_filenames(b, "X")
    for f in a + b:  # compare the configuration documents as JSON, not as text
        c = f.get("typed_config", {}).get("config", {}).get("configuration")
        if c:
            c["value"] = json.loads(c["value"])
    expect(a == b, "http_filters differ from envoy/outbound.yaml (beyond the module path)")
    expect(a[0]["typed_config"]["config"]["configuration"]["value"] == json.loads(STANDALONE_FIXTURE.read_text()),
           "embedded configuration differs from standalone-outbound.json")
    # Validate the file itself (its YAML as Envoy parses it), only the module path changed.
    path = ctx.tmp / "compose-envoy.yaml"
    path.write_text(text.replace(COMPOSE_WASM_PATH, ctx.wasm))
    rc, out = envoy_validate(ctx.envoy, path)
    expect(rc == 0, f"envoy --mode validate failed: {out.strip()[-800:]}")
    return "validate OK with STRICT_DNS u0/u1/u2 (validate mode resolves no DNS)"


def check_compose_config(ctx: Ctx):
    exe = shutil.which("docker-compose")
    expect(exe, "docker-compose not found (Debian package docker-compose)")
    r = subprocess.run([exe, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    expect(r.returncode == 0, f"docker-compose config -q: {r.stdout.strip()[-800:]}")
    r = subprocess.run([exe, "-f", str(COMPOSE_FILE), "config", "--services"], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    services = set(r.stdout.split())
    want = {"envoy", "u0", "u1", "u2", "loadgen", "prometheus"}
    expect(want <= services, f"services missing: {sorted(want - services)}")
    for p in ("deploy/upstream/Dockerfile", "deploy/loadgen/Dockerfile", "deploy/compose/prometheus.yml",
              "deploy/wasm-image/Dockerfile"):
        expect((ROOT / p).is_file(), f"{p} missing")
    return ", ".join(sorted(services))


def check_wasm_image(ctx: Ctx):
    lines = [l.split("#")[0].strip() for l in (ROOT / "deploy/wasm-image/Dockerfile").read_text().splitlines()]
    instr = [l for l in lines if l and not l.startswith("#")]
    expect(instr == ["FROM scratch", "COPY out/reflex.wasm /plugin.wasm"],
           f"the wasm image must be FROM scratch with /plugin.wasm only: {instr}")


def default_crds() -> str:
    """Istio's CRDs live in `shared/istio/crds` beside the checkout; a clone made elsewhere
    (`git clone . /tmp/fresh`) finds them beside the repository it was cloned from."""
    roots = [ROOT.parent]
    try:
        origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        if origin and Path(origin).is_dir():
            roots.append(Path(origin).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        pass
    candidates = [r / "shared" / "istio" / "crds" for r in roots]
    return str(next((c for c in candidates if c.is_dir()), candidates[0]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--crds", default=default_crds())
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    t0 = time.monotonic()
    ctx = Ctx(args)
    try:
        if not run_check("inputs: Envoy, wasm module, CRDs", check_inputs, ctx):
            return finish(t0)
        # 1. schema + CEL on every manifest under istio/
        for path in istio_yaml_files():
            rel = path.relative_to(ROOT)
            docs = load_docs(path)
            manifests = [d for d in docs if is_manifest(d)]
            if not manifests:
                run_check(f"{rel}: not a manifest (no apiVersion/kind), checked below", check_non_manifest, path, docs)
            for i, d in enumerate(manifests):
                run_check(f"{rel}[{i}] {d['kind']} {d.get('metadata', {}).get('name')}: CRD schema + CEL",
                          check_manifest, ctx, path, i, d)
        # 2. negative controls
        ef = next(d for d in ctx.bundle if d["kind"] == "EnvoyFilter")
        wp = next(d for d in ctx.wasmplugin if d["kind"] == "WasmPlugin")
        run_check("negative: unknown field in an EnvoyFilter fails", negative, ctx, ef,
                  lambda d: d["spec"].__setitem__("workloadSelektor", {"labels": {"a": "b"}}), "workloadSelektor")
        run_check("negative: unknown field deep in a match fails", negative, ctx, ef,
                  lambda d: d["spec"]["configPatches"][0]["match"]["listener"]["filterChain"]["filter"]
                  .__setitem__("subfilter", {"name": ROUTER}), "subfilter")
        run_check("negative: wrong enum (applyTo HTTP_FILTERS) fails", negative, ctx, ef,
                  lambda d: d["spec"]["configPatches"][0].__setitem__("applyTo", "HTTP_FILTERS"), "HTTP_FILTERS")
        run_check("negative: two match kinds (listener + cluster, oneOf) fail", negative, ctx, ef,
                  lambda d: d["spec"]["configPatches"][0]["match"].__setitem__("cluster", {"service": "x"}), "valid under each of")
        run_check("negative: CEL workloadSelector + targetRefs fails", negative, ctx, ef,
                  lambda d: d["spec"].__setitem__("targetRefs", [{"kind": "Service", "name": "x"}]),
                  "only one of targetRefs or workloadSelector")
        run_check("negative: CEL wildcard label value fails", negative, ctx, ef,
                  lambda d: d["spec"]["workloadSelector"]["labels"].__setitem__("app", "*"), "wildcard")
        run_check("negative: CEL WasmPlugin url scheme ftp:// fails", negative, ctx, wp,
                  lambda d: d["spec"].__setitem__("url", "ftp://registry/reflex:1"), "url must have schema")
        run_check("negative: WasmPlugin failStrategy enum typo fails", negative, ctx, wp,
                  lambda d: d["spec"].__setitem__("failStrategy", "FAIL_OPENED"), "FAIL_OPENED")
        run_check("negative: kind without a CRD fails", negative, ctx, wp,
                  lambda d: d.__setitem__("kind", "Deployment"), "no CRD for kind")
        run_check("negative: version not served fails", negative, ctx, ef,
                  lambda d: d.__setitem__("apiVersion", "networking.istio.io/v1beta1"), "not served")
        run_check("negative: bad metadata.name fails", negative, ctx, ef,
                  lambda d: d["metadata"].__setitem__("name", "Reflex_Filter"), "metadata.name")

        def broken_config():
            saved = ctx.bundle
            ctx.bundle = copy.deepcopy(saved)
            try:
                d, cp = _reflex_wasm_patches(ctx)[0]
                cfg = cp["patch"]["value"]["typed_config"]["config"]["configuration"]
                cfg["value"] = cfg["value"].replace('"maxClusters": 64', '"maxClusters": 65')
                check_embedded_config(ctx)
            except CheckFailed as e:
                return str(e)[:80]
            finally:
                ctx.bundle = saved
            raise CheckFailed("a changed embedded configuration was not detected")
        run_check("negative: a changed embedded configuration is detected", broken_config)
        # 3. reflex-specific content
        run_check("embedded configurations == tests/fixtures/config/istio-{outbound,inbound}.json", check_embedded_config, ctx)
        run_check("filter settings (root_id, vm_id, v8, FAIL_OPEN, before router; WasmPlugin)", check_filter_settings, ctx)
        run_check("opt-in selection and priority", check_selection_and_priority, ctx)
        run_check("cluster patch: named services only, policy of envoy/outbound.yaml", check_cluster_patch, ctx)
        run_check("patch values: proto field names, values present", check_patch_keys, ctx)
        run_check("workload opt-in patches: label, module volume, mount matches the module path", check_workload_patch, ctx)
        run_check("stats inclusion prefixes match every reflex_* metric name", check_stats_prefixes, ctx)
        run_check("metric tags: each side its own, extracted by every stats fragment's extraStatTags",
                  check_metric_tags, ctx)
        run_check("wasm OCI image: FROM scratch, /plugin.wasm", check_wasm_image, ctx)
        # 4. real Envoy
        run_check("istiod patch emulation on Istio-like clusters and listener", check_patch_application, ctx)
        run_check("envoy --mode validate: Istio-like sidecar + bundle patches", check_envoy_validate_bundle, ctx)
        run_check("Envoy running the patched sidecar with 3 upstreams", check_envoy_runtime, ctx)
        run_check("Envoy rejects the cluster patch with locality_weighted_lb_config", check_reject_locality, ctx)
        run_check("Envoy rejects the cluster patch on ORIGINAL_DST (PassthroughCluster)", check_reject_original_dst, ctx)
        run_check("deploy/compose/envoy.yaml: same shape as envoy/outbound.yaml, envoy --mode validate", check_compose_envoy, ctx)
        run_check("docker-compose config -q", check_compose_config, ctx)
        # 5. emergency manifests (their schema: step 1)
        run_check("istio/emergency/: the expected manifests, unique plugin names", check_emergency_files, ctx)
        for fname, docs in ctx.emergency.items():
            if fname in EMERGENCY:
                run_check(f"istio/emergency/{fname}: switches instances (role, fields, vm_id, priority)",
                          check_emergency_manifest, ctx, fname, docs)
        run_check("negative: a forbidden field in a switches config is detected", negative_emergency, ctx,
                  "kill-all.yaml", lambda d: _set_switches_config(d, status={"enabled": False}), "only")
        run_check("negative: an emergency vm_id other than the base filter's is detected", negative_emergency, ctx,
                  "kill-all.yaml", lambda d: d["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
                  ["vm_config"].__setitem__("vm_id", "reflex-emergency"), "vm_config must equal")
        run_check("negative: an emergency priority not above the base is detected", negative_emergency, ctx,
                  "kill-all.yaml", lambda d: d["spec"].__setitem__("priority", 10), "priority must be above")
        for fname in sorted(ctx.emergency):
            run_check(f"envoy --mode validate: bundle + istio/emergency/{fname}",
                      check_envoy_validate_emergency, ctx, [fname])
        run_check("envoy --mode validate: bundle + every emergency manifest at once",
                  check_envoy_validate_emergency, ctx, sorted(ctx.emergency))
        run_check("Envoy rejects a switches config with a forbidden field (reflex's message)",
                  check_envoy_rejects_forbidden_switches_field, ctx)
        run_check("Envoy running bundle + kill-all: outbound and inbound requests killed", check_envoy_runtime_kill_all, ctx)
        run_check("istio/emergency/normal.yaml: an empty EnvoyFilter under every emergency name",
                  check_normal_manifest, ctx)
        run_check("Envoy running bundle + kill-all, then normal.yaml applied: traffic flows",
                  check_envoy_runtime_normal, ctx)
        # 6. the per-pod control listener
        run_check("istio/control-listener.yaml: loopback listener, a switches instance per side in its VM",
                  check_control_listener, ctx)
        run_check("Envoy running bundle + control listener as shipped: endpoint off, traffic untouched",
                  check_envoy_runtime_control_listener_as_shipped, ctx)
        run_check("Envoy rejects the control listener enabled without a token (why it ships off)",
                  check_envoy_rejects_enabled_control_without_token, ctx)
        run_check("Envoy running bundle + control listener turned on by the documented sed: per-side kill and normal, wrong token 401",
                  check_envoy_runtime_control_listener, ctx)
    finally:
        if args.keep:
            print(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    return finish(t0)


def finish(t0: float) -> int:
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"({time.monotonic() - t0:.1f} s)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
