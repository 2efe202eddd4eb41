"""S3 (MinIO) and the OCI registry, shared by both clusters.

They listen on `host`: loopback when there is no real node, else the host address that pods
on the real nodes reach (`node.SERVICES_ADDRESS`), which the host itself reaches too, so one
endpoint serves the tests, the operator and the training containers alike.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kakehashi.dev.environment import DevEnvironment
from kakehashi.dev.layout import Layout
from kakehashi.dev.processes import Service

S3_ACCESS_KEY = "kakehashi"
S3_SECRET_KEY = "kakehashi-dev-secret"  # local-only MinIO; not a real secret


def minio_service(layout: Layout, binaries: dict[str, Path], host: str) -> Service:
    port = layout.ports["minio"]
    return Service(
        name="minio",
        binary=binaries["minio"],
        args=["server", str(layout.root / "minio-data"), "--address", f"{host}:{port}",
              "--console-address", f"127.0.0.1:{layout.ports['minio-console']}", "--quiet"],
        run_dir=layout.root,
        health_url=f"http://{host}:{port}/minio/health/live",
        env={"MINIO_ROOT_USER": S3_ACCESS_KEY, "MINIO_ROOT_PASSWORD": S3_SECRET_KEY,
             "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"},
    )


def write_registry_config(layout: Layout, host: str) -> None:
    (layout.root / "registry.yaml").write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(layout.root / "registry-data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"{host}:{layout.ports['registry']}"},
    }))


def registry_service(layout: Layout, binaries: dict[str, Path], host: str) -> Service:
    port = layout.ports["registry"]
    return Service(
        name="registry",
        binary=binaries["registry"],
        args=["serve", str(layout.root / "registry.yaml")],
        run_dir=layout.root,
        health_url=f"http://{host}:{port}/v2/",
        env={"OTEL_TRACES_EXPORTER": "none"},
    )


def ensure_bucket(env: DevEnvironment) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=env.s3.endpoint, aws_access_key_id=env.s3.access_key,
                      aws_secret_access_key=env.s3.secret_key, region_name=env.s3.region)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if env.s3.model_bucket not in existing:
        s3.create_bucket(Bucket=env.s3.model_bucket)
