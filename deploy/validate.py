#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests, document by document.

    validate.py --kube-version 1.33 FILE... [--kube-version 1.29 FILE...]...

Each file is checked for the Kubernetes version named before it.

- Kinds of Kubernetes itself: against the OpenAPI-derived JSON schemas of that
  Kubernetes version shipped by the `kubernetes-validate` package, strict
  (a field the schema does not know is an error, as `kubectl apply
  --validate=strict` would say).
- monitoring.coreos.com/v1 ServiceMonitor and PodMonitor: against the models
  that `cloudcoil-models-prometheus-operator` generates from prometheus-operator's
  CRD schemas (pydantic), strict as well: a field the model drops is an error.
- Any other kind: an error (nothing here knows its schema).
- Then a few rules the API server applies that are not in the schemas, and
  references between the documents of one file (selectors, role bindings,
  volumes, named ports, the ConfigMap and ServiceAccount the pods use).

Exits 1 if anything failed. Runs in the virtualenv deploy/check.sh makes.
"""
import sys

import yaml
import kubernetes_validate
import kubernetes_validate.utils as kv_utils

MONITORING_GROUP = "monitoring.coreos.com"


def monitoring_model(kind):
    # Imported lazily: only files with monitoring resources need it.
    from cloudcoil.models.prometheus_operator import v1 as po

    return {"ServiceMonitor": po.ServiceMonitor, "PodMonitor": po.PodMonitor}.get(kind)


def dropped_fields(given, kept, path=""):
    """Paths present in `given` but absent from the model's dump `kept`."""
    out = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for k, v in given.items():
            p = f"{path}.{k}" if path else k
            if k not in kept:
                out.append(p)
            else:
                out += dropped_fields(v, kept[k], p)
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept)):
            out += dropped_fields(a, b, f"{path}[{i}]")
    elif given != kept and not (isinstance(given, (int, float)) and given == kept):
        out.append(f"{path} (value {given!r} read as {kept!r})")
    return out


def validate_monitoring(doc):
    import pydantic

    model = monitoring_model(doc.get("kind"))
    if model is None:
        return [f"no schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    try:
        obj = model.model_validate(doc)
    except pydantic.ValidationError as e:
        return [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
    kept = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"unknown field {p}" for p in dropped_fields(doc, kept)]


def kubernetes_errors(doc, version):
    """Every schema error of `doc`, where kubernetes_validate.validate() raises
    the first: the same schema lookup (the newest schema version not newer than
    `version`, the strict variant), then all of jsonschema's errors."""
    import re

    import jsonschema
    from referencing import Registry, Resource

    used = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= kv_utils.major_minor(version)]
    if not used:
        raise kv_utils.VersionNotSupportedError(version=version)
    used = used[-1]
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    schema_dir = f"kubernetes-json-schema/v{used}-local-strict"
    try:
        schema = kv_utils.schema_contents(f"{schema_dir}/{doc['kind'].lower()}-{api_version}.json", version)
    except FileNotFoundError:
        raise kv_utils.SchemaNotFoundError(
            version=kv_utils.major_minor(version), kind=doc["kind"], api_version=doc["apiVersion"]
        )
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    errs = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    return kv_utils.major_minor(used), [
        f"{'.'.join(str(p) for p in e.path) or '(document)'}: {e.message}" for e in errs
    ]


def validate_schema(doc, version):
    api = doc.get("apiVersion", "")
    group = api.split("/")[0] if "/" in api else ""
    if group == MONITORING_GROUP:
        return "prometheus-operator models", validate_monitoring(doc)
    try:
        used, errs = kubernetes_errors(doc, version)
    except kv_utils.SchemaNotFoundError as e:
        return "no schema", [e.message]
    if not errs:
        # The package's own entry point must agree.
        kubernetes_validate.validate(doc, version, strict=True)
    return f"kubernetes {used} schema", errs


# Enumerations the API server enforces that the published schemas leave as
# plain strings.
DNS_POLICIES = {"ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"}
HOSTPATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"}
PROFILE_TYPES = {"RuntimeDefault", "Unconfined", "Localhost"}
PULL_POLICIES = {"Always", "IfNotPresent", "Never"}
PROTOCOLS = {"TCP", "UDP", "SCTP"}
PROPAGATIONS = {"None", "HostToContainer", "Bidirectional"}


def enum_errors(what, value, allowed):
    if value is None or value in allowed:
        return []
    return [f"{what}: {value!r} is not one of {sorted(allowed)}"]


def pod_spec(doc):
    kind = doc.get("kind")
    if kind in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"):
        return (doc.get("spec") or {}).get("template", {}).get("spec") or {}
    if kind == "Pod":
        return doc.get("spec") or {}
    return None


def template_labels(doc):
    return ((doc.get("spec") or {}).get("template", {}).get("metadata") or {}).get("labels") or {}


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def api_rules(doc, version):
    """Rules of the API server's validation that the JSON schemas do not carry."""
    errs = []
    spec = pod_spec(doc)
    if spec is None:
        return errs
    if doc.get("kind") in ("DaemonSet", "Deployment", "StatefulSet", "ReplicaSet"):
        sel = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not matches(sel, template_labels(doc)):
            errs.append("spec.selector does not match spec.template.metadata.labels")
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    errs += enum_errors("dnsPolicy", spec.get("dnsPolicy"), DNS_POLICIES)
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            errs += enum_errors(f"volume {v.get('name')}: hostPath.type", v["hostPath"].get("type"), HOSTPATH_TYPES)
    for where, sc in [("pod", spec.get("securityContext") or {})] + [
        (f"container {c.get('name')}", c.get("securityContext") or {}) for c in spec.get("containers") or []
    ]:
        for field in ("seccompProfile", "appArmorProfile"):
            prof = sc.get(field)
            if prof is not None:
                errs += enum_errors(f"{where}: {field}.type", prof.get("type"), PROFILE_TYPES)
                if (prof.get("type") == "Localhost") != ("localhostProfile" in prof):
                    errs.append(f"{where}: {field}.localhostProfile is set if and only if type is Localhost")
    minor = int(str(version).split(".")[1])
    psc = spec.get("securityContext") or {}
    if "appArmorProfile" in psc and minor < 30:
        errs.append("securityContext.appArmorProfile needs Kubernetes 1.30")
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        name = c.get("name")
        sc = c.get("securityContext") or {}
        add = (sc.get("capabilities") or {}).get("add") or []
        if sc.get("allowPrivilegeEscalation") is False:
            if sc.get("privileged"):
                errs.append(f"container {name}: allowPrivilegeEscalation false with privileged true")
            if "CAP_SYS_ADMIN" in add:
                errs.append(f"container {name}: allowPrivilegeEscalation false with capabilities.add CAP_SYS_ADMIN")
        if any(str(a).startswith("CAP_") for a in add):
            errs.append(f"container {name}: spell capabilities without CAP_ (as the runtimes expect)")
        ports = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
        errs += enum_errors(f"container {name}: imagePullPolicy", c.get("imagePullPolicy"), PULL_POLICIES)
        for p in c.get("ports") or []:
            errs += enum_errors(f"container {name}: port protocol", p.get("protocol"), PROTOCOLS)
        for m in c.get("volumeMounts") or []:
            errs += enum_errors(f"container {name}: volumeMount {m.get('name')} mountPropagation",
                                m.get("mountPropagation"), PROPAGATIONS)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                errs.append(f"container {name}: {probe} names port {port!r}, which the container does not declare")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                errs.append(f"container {name}: volumeMount {m.get('name')!r} names no volume")
            if m.get("mountPropagation") == "Bidirectional" and not sc.get("privileged"):
                errs.append(f"container {name}: Bidirectional mount propagation needs a privileged container")
        if spec.get("hostNetwork"):
            for p in c.get("ports") or []:
                if "hostPort" in p and p["hostPort"] != p.get("containerPort"):
                    errs.append(f"container {name}: with hostNetwork, hostPort must equal containerPort")
    return errs


def ident(doc):
    md = doc.get("metadata") or {}
    ns = md.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{md.get('name')}"


def cross_references(docs):
    """References between the documents of one file."""
    errs = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)

    def names(kind, namespace=None):
        return {
            (d.get("metadata") or {}).get("name")
            for d in by_kind.get(kind, [])
            if namespace is None or (d.get("metadata") or {}).get("namespace") == namespace
        }

    workloads = [d for d in docs if pod_spec(d) is not None and d.get("kind") != "Pod"]
    services = by_kind.get("Service", [])
    for s in services:
        sel = (s.get("spec") or {}).get("selector") or {}
        if sel and not any(matches(sel, template_labels(w)) for w in workloads):
            errs.append(f"{ident(s)}: selector matches no pod template in the file")
        target_ports = {p.get("targetPort") for p in (s.get("spec") or {}).get("ports") or []}
        for w in workloads:
            if matches(sel, template_labels(w)):
                declared = {
                    p.get("name")
                    for c in pod_spec(w).get("containers") or []
                    for p in c.get("ports") or []
                }
                for tp in target_ports:
                    if isinstance(tp, str) and tp not in declared:
                        errs.append(f"{ident(s)}: targetPort {tp!r} is no named port of {ident(w)}")
    for m in by_kind.get("ServiceMonitor", []):
        sel = ((m.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        hit = [s for s in services if matches(sel, (s.get("metadata") or {}).get("labels") or {})]
        if not hit:
            errs.append(f"{ident(m)}: selector matches no Service in the file")
        ports = {p.get("name") for s in hit for p in (s.get("spec") or {}).get("ports") or []}
        for e in (m.get("spec") or {}).get("endpoints") or []:
            if e.get("port") and e["port"] not in ports:
                errs.append(f"{ident(m)}: endpoint port {e['port']!r} is no port of the selected Service")
    for m in by_kind.get("PodMonitor", []):
        sel = ((m.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not any(matches(sel, template_labels(w)) for w in workloads):
            errs.append(f"{ident(m)}: selector matches no pod template in the file")
    for kind, role_kind in (("RoleBinding", None), ("ClusterRoleBinding", "ClusterRole")):
        for b in by_kind.get(kind, []):
            ref = b.get("roleRef") or {}
            ns = (b.get("metadata") or {}).get("namespace")
            wanted = names(ref.get("kind"), ns if ref.get("kind") == "Role" else None)
            if ref.get("name") not in wanted:
                errs.append(f"{ident(b)}: roleRef {ref.get('kind')} {ref.get('name')!r} is not in the file")
            if role_kind and ref.get("kind") != role_kind:
                errs.append(f"{ident(b)}: a ClusterRoleBinding must reference a ClusterRole")
    sas = {((d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name")) for d in by_kind.get("ServiceAccount", [])}
    cms = {((d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name")) for d in by_kind.get("ConfigMap", [])}
    for w in workloads:
        ns = (w.get("metadata") or {}).get("namespace")
        spec = pod_spec(w)
        sa = spec.get("serviceAccountName")
        if sas and sa and (ns, sa) not in sas:
            errs.append(f"{ident(w)}: ServiceAccount {sa!r} is not in the file")
        for v in spec.get("volumes") or []:
            cm = (v.get("configMap") or {}).get("name")
            if cm and (ns, cm) not in cms and not (v.get("configMap") or {}).get("optional"):
                errs.append(f"{ident(w)}: ConfigMap {cm!r} is not in the file")
    for d in by_kind.get("ConfigMap", []):
        for key, text in ((d.get("data") or {}).items()):
            if key.endswith((".yaml", ".yml")):
                try:
                    parsed = yaml.safe_load(text)
                except yaml.YAMLError as e:
                    errs.append(f"{ident(d)}: data[{key}] is no valid YAML: {e}")
                    continue
                if not isinstance(parsed, dict):
                    errs.append(f"{ident(d)}: data[{key}] is not a YAML mapping")
    return errs


def parse_args(argv):
    """[(kube_version, file)] from --kube-version V FILE... groups."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    out, version = [], None
    it = iter(argv)
    for a in it:
        if a == "--kube-version":
            version = next(it, None)
            if not version or not version.replace(".", "").isdigit():
                sys.exit(f"--kube-version needs a version like 1.33, not {version!r}")
        elif version is None:
            sys.exit("name --kube-version before the files")
        else:
            out.append((version, a))
    if not out:
        sys.exit("no file to validate")
    return out


def main():
    failed = 0
    checked = 0
    for version, path in parse_args(sys.argv[1:]):
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d]
        except (OSError, yaml.YAMLError) as e:
            print(f"  FAIL {path}: {e}")
            failed += 1
            continue
        print(f"  {path} (Kubernetes {version})")
        for d in docs:
            checked += 1
            against, errs = validate_schema(d, version)
            errs += api_rules(d, version)
            if errs:
                failed += 1
                print(f"    FAIL {ident(d)} ({against})")
                for e in errs:
                    print(f"           {e}")
            else:
                print(f"    ok   {ident(d)} ({against})")
        for e in cross_references(docs):
            failed += 1
            print(f"    FAIL {e}")
    print(f"  {checked} document{'' if checked == 1 else 's'} checked: "
          f"{'no failure' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
