"""Resolving the credential blocks a task.yaml names.

- Hugging Face: a Prefect ``Secret`` block holding the token. Without a block, the
  worker's own login (``HF_TOKEN`` or the huggingface_hub token file) applies.
- S3: a prefect-aws ``AwsCredentials`` block (keys, region, and for S3-compatible stores
  ``aws_client_parameters.endpoint_url``). Without a block, boto3's default chain
  (environment, instance role, ``AWS_ENDPOINT_URL``) applies.
- Kubernetes: prefect-kubernetes' ``KubernetesCredentials``: in a pod, its service account;
  else the kubeconfig ``KUBECONFIG`` names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class CredentialsError(RuntimeError):
    """A named block is missing or of the wrong type."""


def _load(block_type: Any, name: str, what: str) -> Any:
    try:
        return block_type.load(name)
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise CredentialsError(
            f"no {what} block named '{name}' — create it in the Prefect UI (Blocks) or with "
            f"`{block_type.__name__}(...).save('{name}')`"
        ) from exc


def hf_token(block_name: str | None) -> str | None:
    """The Hugging Face token of a Secret block, or None to use the worker's own login."""
    if block_name is None:
        return None
    from prefect.blocks.system import Secret

    value = _load(Secret, block_name, "Secret").get()
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"Secret block '{block_name}' does not hold a token string")
    return value


# A stalled object store fails a call within these instead of hanging the step forever; the
# steps' own retries then log the stall and try again. A block's aws_client_parameters.config
# overrides them.
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 60


def _s3_config() -> Any:
    from botocore.config import Config

    return Config(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        retries={"mode": "standard", "max_attempts": 3},
    )


def s3_client(block_name: str | None) -> S3Client:
    """A boto3 S3 client from an AwsCredentials block, or from boto3's default chain, with
    connect and read timeouts."""
    if block_name is None:
        import boto3

        return boto3.client("s3", config=_s3_config())
    from prefect_aws import AwsCredentials

    credentials = _load(AwsCredentials, block_name, "AwsCredentials")
    params = credentials.aws_client_parameters.get_params_override()
    if credentials.region_name is not None:
        params["region_name"] = credentials.region_name
    params["config"] = _s3_config().merge(params["config"]) if "config" in params else _s3_config()
    client: S3Client = credentials.get_boto3_session().client("s3", **params)
    return client


def kubernetes_credentials() -> Any:
    """prefect-kubernetes' credentials for the cluster this process is in (its pod's service
    account) or, outside one, the kubeconfig KUBECONFIG names now (kubernetes_asyncio reads it
    once, when first imported)."""
    import os
    from pathlib import Path

    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    cluster = KubernetesClusterConfig.from_file(Path(kubeconfig)) if kubeconfig and not in_cluster else None
    return KubernetesCredentials(cluster_config=cluster)
