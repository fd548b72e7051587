#!/usr/bin/env python3
"""Config drift check for the rendered Kubernetes manifests (run by deploy/check.sh).

For every container that runs the custodia binary (container name `custodia`) in
every rendered Deployment and Job, rebuild what the pod would see:

* the config file: CUSTODIA_CONFIG -> volumeMount -> ConfigMap key, written to a
  temporary file;
* the environment: literal values, ConfigMap refs, Secret refs (the rendered
  Secret's value when the overlay generates one, else a dummy-but-valid value),
  downward-API fields;

then run the real binary, `custodia config check --config FILE`, with exactly
that environment. The binary refuses unknown keys by name (serde
deny_unknown_fields), so a key the manifests use but the binary does not know
fails here. Also checked, statically:

* a CUSTODIA_* variable (single underscore) must be one the binary reads
  (figment only reads CUSTODIA__*, others would be silently ignored);
* every non-optional secretKeyRef names a key of the rendered Secret, or, when
  the Secret is operator-created, a key of base/secret.example.yaml;
* data_dir lies on a writable emptyDir (the root filesystem is read-only);
* every scope granted to a principal, and every gRPC probe's service name,
  exists in the binary's descriptor set (`custodia auth scopes`), once the
  binary has any scoped method.

Usage: check_config.py --binary PATH --repo DIR --example SECRET_YAML RENDERED.yaml...
Needs PyYAML (installed with kubernetes-validate).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

WORKLOAD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob"}
CONTAINER = "custodia"
# Fallback when the sources cannot be read: variables the binary reads itself.
KNOWN_SINGLE = {"CUSTODIA_CONFIG", "CUSTODIA_ADMIN_TOKEN", "CUSTODIA_DATABASE_URL"}
SIGNING_SEED = "0123456789abcdef" * 4  # 64 hex characters


def known_single_underscore_vars(repo: Path) -> set[str]:
    """`CUSTODIA_X` (single underscore) variable names the binary's sources mention."""
    found: set[str] = set()
    for root in ("services/custodia/src", "libs/core/src"):
        for path in (repo / root).rglob("*.rs"):
            for name in re.findall(r'"(CUSTODIA_[A-Z0-9_]+)"', path.read_text(errors="replace")):
                if not name.startswith("CUSTODIA__") and not name.startswith("CUSTODIA_TEST"):
                    found.add(name)
    return found or set(KNOWN_SINGLE)


def dummy_secret(key: str) -> str:
    if "database-url" in key or key.endswith("url"):
        return "postgres://custodia:dummy-password@127.0.0.1:5432/custodia"
    if "signing-key" in key:
        return SIGNING_SEED
    return f"dummy-{key}-0123456789abcdef"


def pod_spec(obj: dict) -> dict:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


class Rendered:
    """One rendered kustomization (a multi-document YAML file)."""

    def __init__(self, path: Path):
        self.path = path
        self.docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        self.configmaps = {d["metadata"]["name"]: d for d in self.docs if d["kind"] == "ConfigMap"}
        self.secrets = {d["metadata"]["name"]: d for d in self.docs if d["kind"] == "Secret"}

    def configmap_value(self, name: str, key: str) -> str | None:
        cm = self.configmaps.get(name)
        return None if cm is None else (cm.get("data") or {}).get(key)

    def secret_value(self, name: str, key: str) -> str | None:
        s = self.secrets.get(name)
        if s is None:
            return None
        if key in (s.get("stringData") or {}):
            return s["stringData"][key]
        if key in (s.get("data") or {}):
            return base64.b64decode(s["data"][key]).decode()
        return None


class Checker:
    def __init__(self, binary: Path, repo: Path, example_keys: set[str]):
        self.binary = binary
        self.repo = repo
        self.example_keys = example_keys
        self.known_single = known_single_underscore_vars(repo)
        self.errors: list[str] = []
        self.runs = 0
        self.scopes_skipped = False
        self._scopes_checked: set[tuple[str, str]] = set()

    def fail(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    # -- per container -------------------------------------------------------
    def environment(self, r: Rendered, where: str, container: dict, with_optional: bool) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                cm = r.configmaps.get(src["configMapRef"]["name"])
                if cm is None:
                    self.fail(where, f"envFrom ConfigMap {src['configMapRef']['name']} is not rendered")
                    continue
                for k, v in (cm.get("data") or {}).items():
                    env[prefix + k] = v
            elif "secretRef" in src:
                s = r.secrets.get(src["secretRef"]["name"])
                if s is None:
                    self.fail(where, "envFrom secretRef of an operator Secret: its keys cannot be checked")
                    continue
                for k in list((s.get("data") or {})) + list((s.get("stringData") or {})):
                    env[prefix + k] = r.secret_value(src["secretRef"]["name"], k) or ""
        for e in container.get("env") or []:
            name = e["name"]
            if "value" in e:
                env[name] = str(e["value"])
                continue
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                sk = ref["secretKeyRef"]
                optional = bool(sk.get("optional", False))
                value = r.secret_value(sk["name"], sk["key"])
                if not optional:
                    if sk["name"] in r.secrets:
                        if value is None:
                            self.fail(where, f"{name}: key {sk['key']} is missing from the rendered Secret {sk['name']}")
                    elif sk["key"] not in self.example_keys:
                        self.fail(where, f"{name}: key {sk['key']} is not listed in secret.example.yaml")
                if optional and not with_optional and value is None:
                    continue
                env[name] = value if value is not None else dummy_secret(sk["key"])
            elif "configMapKeyRef" in ref:
                ck = ref["configMapKeyRef"]
                value = r.configmap_value(ck["name"], ck["key"])
                if value is None and not ck.get("optional", False):
                    self.fail(where, f"{name}: ConfigMap {ck['name']} key {ck['key']} is not rendered")
                if value is not None:
                    env[name] = value
            else:  # fieldRef / resourceFieldRef: any value will do
                env[name] = "dummy"
        return env

    def config_file(self, r: Rendered, where: str, spec: dict, container: dict, env: dict[str, str]) -> tuple[str, str] | None:
        path = env.get("CUSTODIA_CONFIG")
        if not path:
            self.fail(where, "CUSTODIA_CONFIG is not set: the pod would run on defaults")
            return None
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            mount = m["mountPath"].rstrip("/")
            if path.startswith(mount + "/"):
                vol = volumes.get(m["name"], {})
                rel = path[len(mount) + 1:]
                if "configMap" not in vol:
                    self.fail(where, f"{path} is not on a ConfigMap volume")
                    return None
                cm_name = vol["configMap"]["name"]
                key = rel
                for item in vol["configMap"].get("items") or []:
                    if item["path"] == rel:
                        key = item["key"]
                text = r.configmap_value(cm_name, key)
                if text is None:
                    self.fail(where, f"ConfigMap {cm_name} has no key {key} (for {path})")
                    return None
                return cm_name, text
        self.fail(where, f"CUSTODIA_CONFIG={path} is not under any volumeMount")
        return None

    def check_data_dir(self, where: str, spec: dict, container: dict, toml_text: str) -> None:
        try:
            data_dir = tomllib.loads(toml_text).get("data_dir", "./data")
        except tomllib.TOMLDecodeError as e:
            self.fail(where, f"custodia.toml is not valid TOML: {e}")
            return
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            mount = m["mountPath"].rstrip("/")
            if (data_dir == mount or data_dir.startswith(mount + "/")) and "emptyDir" in volumes.get(m["name"], {}) and not m.get("readOnly"):
                return
        self.fail(where, f"data_dir {data_dir!r} is not on a writable emptyDir (read-only root filesystem)")

    def run(self, args: list[str], env: dict[str, str], cwd: str) -> subprocess.CompletedProcess:
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd}
        return subprocess.run([str(self.binary), *args], env={**base, **env}, cwd=cwd,
                              capture_output=True, text=True, timeout=60)

    def check_container(self, r: Rendered, obj: dict, spec: dict, container: dict) -> None:
        where = f"{r.path.stem}: {obj['kind']}/{obj['metadata']['name']}"
        for e in container.get("env") or []:
            n = e["name"]
            if n.startswith("CUSTODIA_") and not n.startswith("CUSTODIA__") and n not in self.known_single:
                self.fail(where, f"{n} is not read by custodia (single underscore; known: {sorted(self.known_single)})")
        env_all = self.environment(r, where, container, with_optional=True)
        found = self.config_file(r, where, spec, container, env_all)
        if found is None:
            return
        cm_name, toml_text = found
        self.check_data_dir(where, spec, container, toml_text)
        with tempfile.TemporaryDirectory(prefix="custodia-config-") as tmp:
            cfg = Path(tmp) / "custodia.toml"
            cfg.write_text(toml_text)
            env_required = self.environment(r, where, container, with_optional=False)
            failed = False
            for label, env in (("all optional keys set", env_all), ("optional keys absent", env_required)):
                env = {**env, "CUSTODIA_CONFIG": str(cfg)}
                p = self.run(["config", "check", "--config", str(cfg)], env, tmp)
                self.runs += 1
                if p.returncode != 0:
                    failed = True
                    out = (p.stderr.strip() or p.stdout.strip()).splitlines()
                    self.fail(where, f"`custodia config check` ({label}, ConfigMap {cm_name}) failed: {' | '.join(out[-5:])}")
            if not failed:
                self.check_scopes(where, (r.path.stem, cm_name), container, env_all, cfg, tmp)

    def scope_table(self, where: str, env: dict[str, str], cfg: Path, tmp: str) -> tuple[set[str], list[str], dict[str, list[str]]] | None:
        p = self.run(["auth", "scopes", "--config", str(cfg)], {**env, "CUSTODIA_CONFIG": str(cfg)}, tmp)
        if p.returncode != 0:
            self.fail(where, f"`custodia auth scopes` failed: {p.stderr.strip()[-300:]}")
            return None
        methods, principals = p.stdout.split("\n\n", 1) if "\n\n" in p.stdout else (p.stdout, "")
        declared: set[str] = set()
        method_names: list[str] = []
        for line in methods.splitlines():
            if "\t" in line:
                method, scope = line.split("\t", 1)
                method_names.append(method)
                if not scope.startswith("(none"):
                    declared.add(scope.strip())
        granted: dict[str, list[str]] = {}
        for line in principals.splitlines():
            if "\t" in line:
                name, scopes = line.split("\t", 1)
                if name != "admin":
                    granted[name] = scopes.split()
        return declared, method_names, granted

    def check_scopes(self, where: str, config_id: tuple[str, str], container: dict, env: dict[str, str], cfg: Path, tmp: str) -> None:
        table = self.scope_table(where, env, cfg, tmp)
        if table is None:
            return
        declared, methods, granted = table
        if not declared:
            self.scopes_skipped = True  # the proto declares no scope yet: nothing to compare
            return
        if config_id not in self._scopes_checked:  # once per rendered ConfigMap
            self._scopes_checked.add(config_id)
            for name, scopes in granted.items():
                for s in scopes:
                    if s != "*" and s not in declared:
                        self.fail(f"{config_id[0]}: ConfigMap {config_id[1]}",
                                  f"principal {name} is granted scope {s!r}, which no RPC declares "
                                  f"(declared: {' '.join(sorted(declared))})")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            svc = (container.get(probe) or {}).get("grpc", {}).get("service")
            if svc and not any(m.lstrip("/").split("/")[0] == svc for m in methods):
                self.fail(where, f"{probe} checks gRPC service {svc!r}, which the binary does not serve")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True, type=Path)
    ap.add_argument("--repo", required=True, type=Path)
    ap.add_argument("--example", required=True, type=Path, help="base/secret.example.yaml")
    ap.add_argument("rendered", nargs="+", type=Path)
    a = ap.parse_args()

    example = yaml.safe_load(a.example.read_text())
    example_keys = set((example.get("stringData") or {})) | set((example.get("data") or {}))
    # Optional keys documented as comments (`# key: ...`) count as listed.
    example_keys |= set(re.findall(r"^\s*#\s*([a-z0-9-]+):", a.example.read_text(), re.M))

    checker = Checker(a.binary.resolve(), a.repo.resolve(), example_keys)
    containers = 0
    for path in a.rendered:
        r = Rendered(path)
        for obj in r.docs:
            if obj["kind"] not in WORKLOAD_KINDS:
                continue
            spec = pod_spec(obj)
            for c in spec.get("containers") or []:
                if c["name"] == CONTAINER:
                    containers += 1
                    checker.check_container(r, obj, spec, c)
    if containers == 0:
        checker.errors.append("no custodia container found in the rendered manifests")
    for e in checker.errors:
        print(f"  ERROR {e}", file=sys.stderr)
    note = " (scope check skipped: the binary declares no scope yet)" if checker.scopes_skipped else ""
    status = "FAILED" if checker.errors else "ok"
    print(f"config drift: {status}: {containers} custodia containers in {len(a.rendered)} renderings, "
          f"{checker.runs} `custodia config check` runs, {len(checker.errors)} error(s){note}")
    return 1 if checker.errors else 0


if __name__ == "__main__":
    sys.exit(main())
