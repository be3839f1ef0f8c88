"""The images of docker/, built on this machine as a user's Docker builds them.

Nothing can be pulled from an image registry here, so the one base the images need,
``debian:bookworm-slim``, is made by debootstrap and tagged with the name a user's Docker pulls
(docs/deploying.md). The daemon, started here if none runs, has no bridge: every container runs
with ``--network host``. PyPI is reached through this machine's CA bundle and torch's CPU build
lies only in pip's find-links folder: both are handed to the build stages in docker/local/
(docker/local/README.md), never to an image's final stage.

An image whose inputs (its Dockerfile, the files it copies, its build arguments, its base) hash
to the label of the image already built is reused as it is; otherwise Docker builds it, reusing
its own layer cache (code changes rebuild only the layers that copy code).

Used by ``python -m devstack images`` (``make images``) and tests/test_images.py.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import REPO

COMPOSE = REPO / "docker" / "docker-compose.yaml"
LOCAL = REPO / "docker" / "local"
BASE = "debian:bookworm-slim"
# Debian's own CLI: its BuildKit is built in, where a newer CLI wants the buildx plugin
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
DOCKERD_FLAGS = ("--bridge=none", "--iptables=false", "--ip-masq=false")
DAEMON_LOG = Path(tempfile.gettempdir()) / "vst-dockerd.log"
INPUTS_LABEL = "vst.inputs"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Image:
    tag: str
    dockerfile: Path
    context: Path
    args: dict[str, str] = field(default_factory=dict)


def images() -> dict[str, Image]:
    """docker/'s three images: the two Airflow images under the names and build settings the
    compose file gives them, and the Azure ML scoring image as its CPU variant."""
    found = {}
    for service in yaml.safe_load(COMPOSE.read_text())["services"].values():
        if "build" in service:
            tag = re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", service["image"])  # the default of ${VAR:-default}
            dockerfile = (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
            found[dockerfile.parent.name] = Image(tag, dockerfile, (COMPOSE.parent / service["build"]["context"]).resolve())
    scoring = REPO / "docker" / "scoring"
    found["scoring"] = Image("video-style-transfer/scoring:cpu", scoring / "Dockerfile", scoring,
                             {"BASE": BASE, "TORCH_INDEX": TORCH_CPU_INDEX})
    return found


def docker(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout,
                            stdin=kwargs.pop("stdin", subprocess.DEVNULL), **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {shlex.join(args)} failed ({result.returncode}): {result.stderr.strip()[-3000:]}")
    return result


# --------------------------------------------------------------------------- the daemon

def daemon_problem(timeout: float = 60) -> str | None:
    """None when a Docker daemon answers, after starting one (no bridge) if none ran; else why
    there is none."""
    if not DOCKER:
        return "no docker command (apt-get install docker.io)"
    if docker("info", check=False, timeout=30).returncode == 0:
        return None
    dockerd = shutil.which("dockerd")
    if not dockerd:
        return "no Docker daemon runs and dockerd is not installed (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker daemon runs, and only root may start one"
    with open(DAEMON_LOG, "ab") as log:
        process = subprocess.Popen([dockerd, *DOCKERD_FLAGS], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"dockerd exited with {process.returncode}: {DAEMON_LOG.read_text(errors='replace')[-1500:]}"
        if docker("info", check=False, timeout=30).returncode == 0:
            return None
        time.sleep(1)
    return f"dockerd did not answer in {timeout:.0f} s (see {DAEMON_LOG})"


def exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


# --------------------------------------------------------------------------- the base

# What turns debootstrap's minbase into what Debian's slim image is: no documentation, manual
# pages or translations (kept out of every package installed later too), no apt caches or lists.
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
SOURCES = """\
Types: deb
URIs: {mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {security}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb.debian.org where it says nothing else)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    for line in (sources.read_text().splitlines() if sources.exists() else []):
        if line.startswith("URIs:") and "security" not in line:
            return line.split()[1]
    return "http://deb.debian.org/debian"


def make_base(tag: str = BASE) -> float | None:
    """``debian:bookworm-slim`` made here when no image of that name exists: debootstrap's
    minbase, slimmed as Debian's image is, imported under the name. Seconds taken, or None."""
    if exists(tag):
        return None
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    began, mirror = time.monotonic(), apt_mirror()
    with tempfile.TemporaryDirectory(prefix="vst-rootfs-") as folder:
        root = Path(folder) / "root"
        made = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if made.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {made.stdout[-2000:]}{made.stderr[-2000:]}")
        (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(DPKG_EXCLUDES)
        (root / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
        (root / "etc/apt/apt.conf.d/docker-no-languages").write_text('Acquire::Languages "none";\n')
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(
            SOURCES.format(mirror=mirror, security=mirror.replace("/debian", "/debian-security")))
        for pattern in ("usr/share/doc/*/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
                        "var/lib/apt/lists/*", "var/cache/apt/*", "var/log/*.log", "var/cache/debconf/*-old"):
            for path in map(Path, glob.glob(str(root / pattern))):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name != "copyright":
                    path.unlink(missing_ok=True)  # gone already where a doc folder is a link
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        docker("import", "--change", 'CMD ["bash"]',
               "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", "LABEL vst.base=debootstrap-bookworm-minbase", "-", tag, stdin=tar.stdout)
        tar.wait()
    return time.monotonic() - began


# --------------------------------------------------------------------------- what a build is handed

def pip_setting(name: str) -> str | None:
    """A setting this machine's pip runs with (PIP_<NAME>, else pip's configuration)."""
    value = os.environ.get(f"PIP_{name.upper().replace('-', '_')}")
    if value:
        return value
    got = subprocess.run(["python3", "-m", "pip", "config", "get", f"global.{name}"], capture_output=True, text=True)
    return got.stdout.strip() or None if got.returncode == 0 else None


def fill_local(folder: Path = LOCAL) -> None:
    """docker/local/: the CA bundle pip trusts here and the find-links wheels of the torch that
    constraints.txt pins (hard links where the disk allows). Empty where pip has neither."""
    folder.mkdir(exist_ok=True)
    cert = pip_setting("cert")
    if cert and Path(cert).is_file() and not _same(Path(cert), folder / "ca.crt"):
        shutil.copyfile(cert, folder / "ca.crt")
    torch = re.search(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.MULTILINE)[1]
    links = pip_setting("find-links")
    wheels = sorted(Path(links).glob(f"torch-{torch}*.whl")) if links and Path(links).is_dir() else []
    shutil.rmtree(folder / "wheels", ignore_errors=True)
    if wheels:
        (folder / "wheels").mkdir()
        for wheel in wheels:
            try:
                os.link(wheel, folder / "wheels" / wheel.name)
            except OSError:
                shutil.copyfile(wheel, folder / "wheels" / wheel.name)


def _same(a: Path, b: Path) -> bool:
    return b.exists() and a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------- building

def copied_sources(dockerfile: Path, context: Path) -> list[Path]:
    """The files of ``context`` that the Dockerfile's COPY lines take (not those from a stage)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    files: set[Path] = set()
    for line in text.splitlines():
        words = shlex.split(line, comments=True) if line.lstrip().upper().startswith("COPY") else []
        if not words or any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words[1:-1] if not w.startswith("--")]:
            for match in glob.glob(str(context / source)):
                paths = [Path(match)] if os.path.isfile(match) else Path(match).rglob("*")
                files |= {p for p in paths if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return sorted(files)


def inputs_hash(image: Image, context: Path) -> str:
    """What the image is made of: Dockerfile, build arguments, the base's id, every copied file."""
    digest = hashlib.sha256(image.dockerfile.read_bytes())
    digest.update(repr(sorted(image.args.items())).encode())
    digest.update((image_id(BASE) or "").encode())
    for path in copied_sources(image.dockerfile, context):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def image_id(tag: str) -> str | None:
    got = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return got.stdout.strip() or None if got.returncode == 0 else None


def label(tag: str, name: str = INPUTS_LABEL) -> str | None:
    got = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{name}"}}}}', tag, check=False)
    return got.stdout.strip() or None if got.returncode == 0 else None


def build(image: Image, log: Path | None = None) -> float | None:
    """Build the image unless one with the same inputs exists; the seconds the build took, or
    None when the image was reused. A context outside the repository root (docker/scoring, which
    Azure ML builds from alone) is copied with docker/local beside its files."""
    with tempfile.TemporaryDirectory(prefix="vst-context-") as scratch:
        context = image.context
        if context != REPO:
            context = Path(scratch) / "context"
            shutil.copytree(image.context, context)
            if LOCAL.exists():
                shutil.copytree(LOCAL, context / "local", copy_function=_link_or_copy)
        digest = inputs_hash(image, context)
        if label(image.tag) == digest:
            return None
        before = image_id(image.tag)
        began, log = time.monotonic(), log or Path(scratch) / "build.log"
        args = [f"--build-arg={k}={v}" for k, v in image.args.items()]
        with open(log, "w") as out:
            code = subprocess.run(
                [DOCKER, "build", "--network", "host", "--progress", "plain", "--label", f"{INPUTS_LABEL}={digest}",
                 *args, "-f", str(context / image.dockerfile.relative_to(image.context)), "-t", image.tag,
                 str(context)], env=os.environ | {"DOCKER_BUILDKIT": "1"}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=3600).returncode
        if code != 0:
            raise RuntimeError(f"building {image.tag} failed ({log}):\n{log.read_text(errors='replace')[-4000:]}")
        if before and before != image_id(image.tag):
            docker("image", "rm", before, check=False)  # the version it replaced, unless a container uses it
        return time.monotonic() - began


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def build_all(log_folder: Path | None = None) -> dict[str, float | None]:
    """Daemon, base and the three images; seconds each step took (None: reused as it was)."""
    problem = daemon_problem()
    if problem:
        raise RuntimeError(problem)
    taken = {"base " + BASE: make_base()}
    fill_local()
    for name, image in images().items():
        taken[image.tag] = build(image, log_folder / f"build-{name}.log" if log_folder else None)
    return taken
