#!/usr/bin/env python3
"""Rules for docker-compose.yml and the image's build context that a schema cannot express.

    check_compose.py docker-compose.yml .dockerignore

Compose: every long-running service has a health check and memory and CPU limits; every dependency
waits for health or for a one-shot's success; images are pinned; named volumes are declared; the
auscult containers run read-only, without capabilities; PostgreSQL commits synchronously to its
standby by default, whose hot-standby limits are at least the primary's; the simulated gateway is given
every ingest replica. Build context: everything the workspace build reads is sent to the builder, and
secrets and build output are not.
"""

import re
import subprocess
import sys

import yaml

AUSCULT_BINARIES = ("auscult", "auscult-ingest", "auscult-listener", "auscult-analysis")


def compose_problems(path):
    with open(path, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    services = compose.get("services") or {}
    declared_volumes = set((compose.get("volumes") or {}).keys())
    problems = []
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}

    for name, service in services.items():
        where = f"service {name}"
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest" or tag.endswith("latest}"):
            problems.append(f"{where}: image {image!r} is not pinned to a version")
        limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        for resource in ("cpus", "memory"):
            if resource not in limits:
                problems.append(f"{where}: no {resource} limit")
        if name not in one_shot and "healthcheck" not in service:
            problems.append(f"{where}: a long-running service without a health check")
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = condition.get("condition") if isinstance(condition, dict) else None
            if dependency not in services:
                problems.append(f"{where}: depends on unknown service {dependency}")
            elif wanted == "service_healthy":
                if "healthcheck" not in services[dependency]:
                    problems.append(f"{where}: waits for {dependency} to be healthy, which has no health check")
            elif wanted == "service_completed_successfully":
                if dependency not in one_shot:
                    problems.append(f"{where}: waits for {dependency} to complete, which is not a one-shot")
            else:
                problems.append(f"{where}: depends on {dependency} without waiting for health or completion")
        for volume in service.get("volumes") or []:
            spec = volume if isinstance(volume, str) else f"{volume.get('source', '')}:{volume.get('target', '')}"
            source = spec.split(":", 1)[0]
            if source.startswith((".", "/")):
                if not spec.endswith(":ro"):
                    problems.append(f"{where}: bind mount {spec} must be read-only")
            elif source and source not in declared_volumes:
                problems.append(f"{where}: volume {source} is not declared")
            elif ":" not in spec:
                problems.append(f"{where}: anonymous volume {spec}")
        command = service.get("command") or []
        if command and command[0] in AUSCULT_BINARIES:
            if service.get("read_only") is not True:
                problems.append(f"{where}: auscult containers run with a read-only root filesystem")
            if "ALL" not in (service.get("cap_drop") or []):
                problems.append(f"{where}: auscult containers drop all capabilities")

    primary = " ".join(services.get("postgres-primary", {}).get("command") or [])
    match = re.search(r"synchronous_standby_names=\$\{[A-Z_]+-([^}]*)\}", primary)
    if not match or not match.group(1).strip():
        problems.append("postgres-primary: synchronous replication to the standby is not the default")
    # A hot standby refuses to start with a lower limit than its primary for these settings.
    def server_settings(service):
        command = services.get(service, {}).get("command") or []
        return dict(a.split("=", 1) for a in command if "=" in a and not a.startswith("-"))

    primary_settings, standby_settings = server_settings("postgres-primary"), server_settings("postgres-standby")
    for key in ("max_connections", "max_worker_processes", "max_wal_senders", "max_prepared_transactions",
                "max_locks_per_transaction"):
        if key in primary_settings:
            if key not in standby_settings or int(standby_settings[key]) < int(primary_settings[key]):
                problems.append(f"postgres-standby: {key} must be at least the primary's {primary_settings[key]}")
    ingest = sorted(n for n, s in services.items() if (s.get("command") or [None])[0] == "auscult-ingest")
    if len(ingest) < 2:
        problems.append(f"two ingest replicas expected, found {ingest}")
    simulator = " ".join(services.get("simulator", {}).get("command") or [])
    for name in ingest:
        if f"http://{name}:50051" not in simulator:
            problems.append(f"simulator: not given the address of {name}")
    return problems


def pattern_regex(pattern):
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    # A pattern that names a folder excludes everything below it.
    return re.compile(out + "(?:/.*)?$")


def ignored(path, rules):
    result = False
    for negate, regex in rules:
        if regex.match(path):
            result = not negate
    return result


def dockerignore_problems(path):
    rules = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            rules.append((negate, pattern_regex(line.lstrip("!").lstrip("/"))))
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    needed = [
        p
        for p in tracked
        if p in ("Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "tests/Cargo.toml", "tests/lib.rs")
        or (p.startswith(("crates/", "proto/")) and "/tests/" not in p and not p.endswith(".md"))
        or p.startswith(("deploy/elasticsearch/", "deploy/kibana/"))
    ]
    problems = [f".dockerignore excludes {p}, which the build needs" for p in needed if ignored(p, rules)]
    if "crates/model/shipped/auscult.model" not in needed:
        problems.append("the shipped model is not tracked where the build expects it")
    for private in (".env", ".git/config", "target/release/auscult"):
        if not ignored(private, rules):
            problems.append(f".dockerignore sends {private} to the builder")
    return problems


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    problems = compose_problems(sys.argv[1]) + dockerignore_problems(sys.argv[2])
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
