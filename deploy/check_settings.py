#!/usr/bin/env python3
"""Every setting the deploy files give a service must be one the service accepts.

The services refuse unknown `AUSCULT__…` keys and inconsistent values at start, naming the key;
`--check-config` stops right after that check. This script collects, for every container that runs
auscult-ingest, auscult-listener or auscult-analysis in docker-compose.yml and in rendered Helm
manifests, the environment it would get (plain values, ConfigMaps through envFrom, and placeholders
for values from Secrets and the downward API), runs the real binary with `--check-config` in exactly
that environment, and fails on any refusal. A deliberately misspelt key is run first to prove that a
refusal is noticed.

    check_settings.py --bin-dir target/release --compose docker-compose.yml --env-file .env.example \
        [--helm RENDER.yaml ...]
"""

import argparse
import os
import re
import subprocess
import sys

import yaml

SERVICES = ("auscult-ingest", "auscult-listener", "auscult-analysis")

# Values a Secret or the downward API would provide, shaped like the real ones so that typed
# settings parse.
PLACEHOLDERS = {
    "AUSCULT__DATABASE__URL": "postgres://auscult:secret@db-rw:5432/auscult",
    "AUSCULT__ALERTS__WEBHOOKS": "https://hooks.example/auscult",
    "AUSCULT__ELASTIC__URLS": "https://es-http:9200",
}


def placeholder(name):
    return PLACEHOLDERS.get(name, "placeholder")


def interpolate(value, variables):
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}."""

    def replace(match):
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        present = name in variables
        current = variables.get(name, "")
        if op in (":-",):
            return current if current else arg
        if op == "-":
            return current if present else arg
        if op in (":?", "?"):
            if (op == ":?" and not current) or not present:
                raise SystemExit(f"compose: {name} is required ({arg}) and has no value in the env file")
            return current
        return current

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-|:\?|\?)([^}]*))?\}", replace, str(value))


def read_env_file(path):
    variables = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                variables[key.strip()] = value.strip()
    return variables


def compose_cases(path, env_file):
    """(label, binary, environment) for each compose service that runs an auscult service."""
    variables = read_env_file(env_file) if env_file else {}
    with open(path, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    cases = []
    for name, service in (compose.get("services") or {}).items():
        command = service.get("command") or []
        if isinstance(command, str):
            command = command.split()
        if not command or command[0] not in SERVICES:
            continue
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env = {k: interpolate(v if v is not None else "", variables) for k, v in environment.items()}
        cases.append((f"compose service {name}", command[0], env))
    return cases


def helm_cases(path):
    """(label, binary, environment) for each container of a rendered chart that runs a service."""
    with open(path, encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    config_maps = {
        d["metadata"]["name"]: d.get("data") or {}
        for d in documents
        if d.get("kind") == "ConfigMap"
    }
    cases = []
    for doc in documents:
        spec = doc.get("spec") or {}
        template = (spec.get("template") or {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template", {}
        ).get("spec")
        if doc.get("kind") == "Pod":
            template = spec
        if not template:
            continue
        for container in (template.get("containers") or []) + (template.get("initContainers") or []):
            command = (container.get("command") or []) + (container.get("args") or [])
            if not command or command[0] not in SERVICES:
                continue
            env = {}
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef")
                if ref:
                    if ref["name"] not in config_maps:
                        raise SystemExit(f"{path}: {doc['kind']}/{doc['metadata']['name']} reads a missing ConfigMap {ref['name']}")
                    env.update({k: str(v) for k, v in config_maps[ref["name"]].items()})
                elif source.get("secretRef"):
                    raise SystemExit(f"{path}: envFrom a Secret hides which keys are set; use secretKeyRef")
            for item in container.get("env") or []:
                if "value" in item:
                    env[item["name"]] = str(item["value"])
                elif "valueFrom" in item:
                    env[item["name"]] = placeholder(item["name"])
                else:
                    env[item["name"]] = ""
            label = f"{os.path.basename(path)}: {doc['kind']}/{doc['metadata']['name']} container {container['name']}"
            cases.append((label, command[0], env))
    return cases


def check(bin_dir, binary, env):
    """Runs BINARY --check-config in ENV (and nothing else of this process' environment)."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "error"}
    clean.update(env)
    result = subprocess.run(
        [os.path.join(bin_dir, binary), "--check-config"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", required=True, help="folder holding the service binaries")
    parser.add_argument("--compose", help="docker-compose.yml")
    parser.add_argument("--env-file", help="the compose env file to interpolate with (.env.example)")
    parser.add_argument("--helm", nargs="*", default=[], help="rendered Helm manifests")
    args = parser.parse_args()

    for binary in SERVICES:
        if not os.access(os.path.join(args.bin_dir, binary), os.X_OK):
            sys.exit(f"{binary} not found in {args.bin_dir}: build the workspace first")

    # The check must be able to fail: a misspelt key is refused, by name.
    ok, output = check(args.bin_dir, "auscult-ingest", {"AUSCULT__BATCH__MAX_FRAMEZ": "10"})
    if ok or "max_framez" not in output.lower():
        sys.exit(f"auscult-ingest accepted a misspelt key; --check-config cannot be trusted: {output}")

    cases = []
    if args.compose:
        cases += compose_cases(args.compose, args.env_file)
    for render in args.helm:
        cases += helm_cases(render)
    seen = {binary for _, binary, _ in cases}
    if args.compose and not set(SERVICES) <= {b for label, b, _ in cases if label.startswith("compose")}:
        sys.exit(f"docker-compose.yml does not run every service (found {sorted(seen)})")

    failures = 0
    for label, binary, env in cases:
        ok, output = check(args.bin_dir, binary, env)
        keys = sorted(k for k in env if k.startswith("AUSCULT__"))
        if ok:
            print(f"ok   {label}: {binary} accepts {len(keys)} settings")
        else:
            failures += 1
            print(f"FAIL {label}: {binary} refused its settings: {output}")
    print(f"{len(cases)} containers checked, {failures} refused")
    sys.exit(1 if failures or not cases else 0)


if __name__ == "__main__":
    main()
