"""docker/: what can be checked without a Docker engine. The compose file parses and is wired
consistently, every command it runs exists with the options it uses, and the image installs
s2ingest exactly as the README says."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
ENV = {"POSTGRES_PASSWORD": "pw", "MINIO_ROOT_PASSWORD": "secret"}
# Options of `s2ingest sync` that the compose file uses before the CLI of this branch has them:
# the S3 backend (`--store s3://...`, `--s3-endpoint`) is built on another branch. Once merged,
# this set must be emptied: the test then checks them like every other option.
PENDING_OPTIONS = {"--s3-endpoint"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def words(service: dict) -> list[str]:
    """entrypoint + command of a service as one argument list."""
    def as_list(v):
        return [] if v is None else (shlex.split(v) if isinstance(v, str) else [str(x) for x in v])
    return as_list(service.get("entrypoint")) + as_list(service.get("command"))


def shell_commands(service: dict, program: str) -> list[list[str]]:
    """The ``program ...`` invocations inside a ``sh -c`` script (up to ; | & or newline)."""
    script = words(service)[-1]
    out = []
    for part in re.split(r";|\|\||&&|\n", script):
        argv = shlex.split(part.replace("$$", "$"))
        while argv and argv[0] in ("do", "then", "else"):  # shell keywords before a command
            argv = argv[1:]
        if argv and argv[0] == program:
            out.append(argv)
    return out


def test_services_volumes_and_ports_are_wired(compose):
    services = compose["services"]
    assert {"postgres", "minio", "scheduler", "worker-1", "worker-2", "sync", "nginx"} <= set(services)
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for dep in (svc.get("depends_on") or []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name} mounts undeclared volume {src}"
            else:
                assert (DOCKER / src).exists(), f"{name} mounts missing file {src}"
        for port in svc.get("ports") or []:
            assert re.fullmatch(r"(127\.0\.0\.1:)?\d+:\d+", port), port
    assert declared <= {v.split(":")[0] for s in services.values() for v in s.get("volumes") or []}
    # the scheduler listens where the workers and the sync connect
    sched = words(services["scheduler"])
    assert sched[:2] == ["dask", "scheduler"]
    address = f"tcp://scheduler:{sched[sched.index('--port') + 1]}"
    for w in ("worker-1", "worker-2"):
        assert words(services[w])[:3] == ["dask", "worker", address]
    (sync,) = shell_commands(services["sync"], "s2ingest")
    assert sync[sync.index("--scheduler") + 1] == address
    # the sync writes the cube into MinIO; nginx serves that bucket; workers share the cache
    minio_port = words(services["minio"])[words(services["minio"]).index("--address") + 1].lstrip(":")
    assert sync[sync.index("--s3-endpoint") + 1] == f"http://minio:{minio_port}"
    bucket = urlparse(sync[sync.index("--store") + 1])
    assert bucket.scheme == "s3"
    nginx = (DOCKER / "nginx.conf").read_text()
    assert f"proxy_pass http://minio:{minio_port}/{bucket.netloc}/;" in nginx
    assert "limit_except GET HEAD" in nginx  # read only
    assert any(f"local/{bucket.netloc}" in c for c in words(services["minio-init"]))
    cache = services["sync"]["environment"]["S2INGEST_CACHE"]
    for w in ("worker-1", "worker-2", "sync"):
        assert f"cache:{cache}" in services[w]["volumes"]
    # the catalog URL points at the postgres service with its user and database
    db = urlparse(re.sub(r"\$\{[^}]*\}", "pw", services["sync"]["environment"]["S2INGEST_DB_URL"]))
    pg = services["postgres"]["environment"]
    assert (db.hostname, db.username, db.path.lstrip("/")) == ("postgres", pg["POSTGRES_USER"], pg["POSTGRES_DB"])


def test_commands_exist_with_the_options_used(compose):
    from ingest.cli.main import cli

    (argv,) = shell_commands(compose["services"]["sync"], "s2ingest")
    command = cli.get_command(None, argv[1])
    known = {o for p in command.params for o in p.opts + p.secondary_opts}
    used = {a for a in argv[2:] if a.startswith("--")}
    assert used - known <= PENDING_OPTIONS, used - known
    # `dask scheduler` / `dask worker` are distributed's click commands (installed with s2ingest)
    from distributed.cli import dask_scheduler, dask_worker

    assert (BIN / "dask").exists()
    for name, cmd in (("scheduler", dask_scheduler.main), ("worker-1", dask_worker.main),
                      ("worker-2", dask_worker.main)):
        args = words(compose["services"][name])
        known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        assert {a for a in args if a.startswith("--")} <= known, (name, args)


def test_the_image_installs_as_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    readme_cmds = re.findall(r"^(pip install .+?)\s*(?:#.*)?$", section, flags=re.M)
    docker_cmds = [m.split("&&")[0].strip() for m in
                   re.findall(r"^RUN (pip install .+)$", (DOCKER / "Dockerfile").read_text(), flags=re.M)]
    assert readme_cmds and docker_cmds == readme_cmds[:1], (docker_cmds, readme_cmds)
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["s2ingest"]' in (DOCKER / "Dockerfile").read_text() and "s2ingest" in scripts


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file(tmp_path):
    import os

    env = {**os.environ, **ENV}
    r = subprocess.run(["docker-compose", "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
