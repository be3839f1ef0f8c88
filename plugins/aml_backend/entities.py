"""The Azure ML entities of the score step, built offline: compute cluster, environment, job.

Plain functions that return azure-ai-ml objects and talk to nothing; the hook sends them.
The job runs the same ``python -m scoring score ...`` command as the local backend, under
``MpiDistribution``: one rank per GPU, ``nodes x gpus_per_node`` ranks in all.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
from pathlib import Path

from azure.ai.ml import Input, MpiDistribution, Output, command
from azure.ai.ml.entities import (
    AmlCompute,
    BuildContext,
    Command,
    Environment,
    IdentityConfiguration,
    ManagedIdentityConfiguration,
    NetworkSettings,
)

from scoring.gpus import VM_SIZE_ENV

from .cluster import ClusterConfig

REPO = Path(__file__).resolve().parents[2]
SCORING_DIR = REPO / "scoring"
DOCKER_CONTEXT = REPO / "docker" / "scoring"
ENVIRONMENT_NAME = "video-style-transfer-scoring"


def build_compute(config: ClusterConfig) -> AmlCompute:
    """The configured autoscaling GPU cluster: ``min_nodes`` (0: nothing billed when idle) to
    ``max_nodes``, low-priority by default (much cheaper, can be preempted; the operator
    resubmits); keep-warm lengthens the idle time so runs arriving close together share nodes.
    Placed in the configured subnet, with or without public node addresses, SSH off unless
    asked for, with the configured managed identity (what pulls the image from the registry)."""
    if config.identity == "system":
        identity = IdentityConfiguration(type="system_assigned")
    elif config.identity:
        identity = IdentityConfiguration(type="user_assigned", user_assigned_identities=[
            ManagedIdentityConfiguration(resource_id=config.identity)])
    else:
        identity = None
    return AmlCompute(name=config.name, size=config.vm_size, min_instances=config.min_nodes,
                      max_instances=config.max_nodes, tier=config.tier,
                      idle_time_before_scale_down=config.scale_idle_seconds,
                      network_settings=NetworkSettings(subnet=config.subnet) if config.subnet else None,
                      enable_node_public_ip=config.node_public_ip, ssh_public_access_enabled=config.ssh,
                      identity=identity,
                      description="video style transfer scoring (created by the Airflow aml_backend plugin)")


def build_environment(context: Path = DOCKER_CONTEXT, name: str = ENVIRONMENT_NAME) -> Environment:
    """The scoring image, built by Azure ML from ``docker/scoring`` (Dockerfile + requirements).
    The version is a hash of the build context, so an unchanged Dockerfile reuses the image
    already built and any change builds a new one."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(context).rglob("*") if p.is_file()):
        digest.update(path.relative_to(context).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return Environment(name=name, version=digest.hexdigest()[:16], build=BuildContext(path=str(context)),
                       description="GPU base, ffmpeg, MPI and the scoring requirements (docker/scoring)")


def stage_code(target: Path, source: Path = SCORING_DIR) -> Path:
    """Copy the ``scoring`` package into ``target/scoring`` and return ``target``: the job's code
    snapshot is exactly the package (the job runs ``python -m scoring`` from the snapshot root),
    not the repository with its virtual environment."""
    shutil.copytree(source, Path(target) / "scoring", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True)
    return Path(target)


def score_command(score_args: list[str], model_input: bool = False, style_image_input: bool = False) -> str:
    """The command line the job runs: the local backend's score step, with the job's mounts."""
    chosen = "--model ${{inputs.model}} " if model_input else ""
    chosen += "--style-image ${{inputs.style_image}} " if style_image_input else ""
    return ("python -m scoring score --segments ${{inputs.segments}} --out ${{outputs.styled}} "
            + chosen + shlex.join(score_args)).strip()


def build_score_job(*, segments_uri: str, styled_uri: str, score_args: list[str], code: Path | str,
                    environment: str | Environment, compute: str, nodes: int = 1, gpus_per_node: int = 1,
                    vm_size: str | None = None,
                    model_uri: str | None = None, style_image_uri: str | None = None,
                    output_mode: str = "rw_mount", name: str | None = None,
                    experiment_name: str = "video-style-transfer", display_name: str | None = None,
                    tags: dict | None = None) -> Command:
    """The score step as a command job: ``nodes`` nodes, one MPI rank per GPU.

    ``segments_uri`` (read) and ``styled_uri`` (write) are ``azureml://datastores/...`` folder
    paths. The output is mounted read-write by default, so finished segments land in storage
    as they finish and survive a preemption; a resubmitted job sees their done markers and
    styles only the rest. ``output_mode="upload"`` writes only at the end (write-only access,
    but a preempted job loses its work). ``vm_size`` goes to the job's environment, where the
    scoring step's GPU check names it."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes and gpus_per_node must be at least 1, got {nodes} and {gpus_per_node}")
    inputs = {"segments": Input(type="uri_folder", path=segments_uri, mode="ro_mount")}
    if model_uri:
        inputs["model"] = Input(type="uri_file", path=model_uri, mode="download")
    if style_image_uri:
        inputs["style_image"] = Input(type="uri_file", path=style_image_uri, mode="download")
    return command(  # a Command node: what jobs.create_or_update takes (it refuses a bare CommandJob)
        name=name,
        display_name=display_name,
        experiment_name=experiment_name,
        description="style the segments of one video (python -m scoring score) on MPI ranks",
        command=score_command(score_args, model_input=bool(model_uri), style_image_input=bool(style_image_uri)),
        code=str(code),
        environment=environment,
        environment_variables={VM_SIZE_ENV: vm_size} if vm_size else {},
        compute=compute,
        inputs=inputs,
        outputs={"styled": Output(type="uri_folder", path=styled_uri, mode=output_mode)},
        distribution=MpiDistribution(process_count_per_instance=gpus_per_node),
        instance_count=nodes,
        tags=tags or {},
    )
