"""`kakehashi-serve`: run the inference server with uvicorn.

Flags override `KAKEHASHI_*` environment variables (see `Settings`). One process, one worker:
dynamic batching needs every request in the same process, and the model already uses every CPU
the container has; scale out with replicas instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kakehashi_inference import __version__
from kakehashi_inference.settings import Settings, parse_allowlist


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kakehashi-serve")
@click.option("--model-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory with savedmodel/ and labels.json [env KAKEHASHI_MODEL_DIR; "
              "default /models/<model-name>]")
@click.option("--model-name", help="Name in /v2/models/{name} and metrics [env KAKEHASHI_MODEL_NAME; "
              "default model]")
@click.option("--host", default="0.0.0.0", show_default=True, envvar="KAKEHASHI_HOST")
@click.option("--port", default=8080, show_default=True, type=int, envvar="KAKEHASHI_PORT")
@click.option("--max-batch-size", type=click.IntRange(min=1),
              help="Most images per model call [env KAKEHASHI_MAX_BATCH_SIZE; default 8]")
@click.option("--max-wait-ms", type=click.FloatRange(min=0),
              help="Wait for a fuller batch [env KAKEHASHI_MAX_WAIT_MS; default 0]")
@click.option("--threads", type=click.IntRange(min=1),
              help="Model threads [env KAKEHASHI_THREADS; default: the cgroup CPU quota]")
@click.option("--model-workers", type=click.IntRange(min=1),
              help="Model calls side by side, threads split among them [env "
              "KAKEHASHI_MODEL_WORKERS; default: one per thread; 1: lowest idle latency]")
@click.option("--runtime", type=click.Choice(["auto", "tflite", "savedmodel"]),
              help="Model runtime [env KAKEHASHI_RUNTIME; default auto]")
@click.option("--preprocess", type=click.Choice(["tf", "unit", "raw"]),
              help="Pixel scaling: tf [-1,1], unit [0,1], raw [0,255] [env KAKEHASHI_PREPROCESS; "
              "default tf]")
@click.option("--max-images", type=click.IntRange(min=1),
              help="Most images per request [env KAKEHASHI_MAX_IMAGES; default 32]")
@click.option("--max-image-bytes", type=click.IntRange(min=1),
              help="Largest image [env KAKEHASHI_MAX_IMAGE_BYTES; default 8 MiB]")
@click.option("--max-request-bytes", type=click.IntRange(min=1),
              help="Largest request body [env KAKEHASHI_MAX_REQUEST_BYTES; default 24 MiB]")
@click.option("--download-timeout-s", type=click.FloatRange(min=0, min_open=True),
              help="Deadline per image URL [env KAKEHASHI_DOWNLOAD_TIMEOUT_S; default 5]")
@click.option("--max-downloads", type=click.IntRange(min=1),
              help="Downloads in flight [env KAKEHASHI_MAX_DOWNLOADS; default 16]")
@click.option("--url-allowlist",
              help="Comma-separated CIDRs or hosts fetchable although not public "
              "[env KAKEHASHI_URL_ALLOWLIST]")
@click.option("--log-level", default="info", show_default=True, envvar="KAKEHASHI_LOG_LEVEL",
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="One log line per request (costs throughput at high request rates)")
def main(host: str, port: int, log_level: str, access_log: bool, url_allowlist: str | None,
         **options: Any) -> None:
    """Serve a TensorFlow SavedModel: /v1/predict, /v2 (Open Inference Protocol), /metrics."""
    import uvicorn

    from kakehashi_inference import logs
    from kakehashi_inference.app import create_app

    logs.configure(log_level)
    if url_allowlist is not None:
        options["url_allowlist"] = parse_allowlist(url_allowlist)
    settings = Settings.from_env(**options)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        workers=1,
        log_config=None,  # keep our JSON handler
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
