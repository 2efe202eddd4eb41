"""The contract between the operator and the code running inside a training container.

The operator injects these environment variables into every training container, and the trainer
runtime (`kakehashi.trainer`) reads them; what the trainer writes back is the model artifact format
(`kakehashi.modelformat`). Both sides import this module, so the names cannot drift apart.
"""

from __future__ import annotations

from typing import Final

ENV_RUN_ID: Final = "KAKEHASHI_RUN_ID"  # the TrainingRun's uid
ENV_RUN_NAME: Final = "KAKEHASHI_RUN_NAME"
ENV_NAMESPACE: Final = "KAKEHASHI_NAMESPACE"
ENV_HYPERPARAMETERS: Final = "KAKEHASHI_HYPERPARAMETERS"  # JSON object, flat map
ENV_DATA_URI: Final = "KAKEHASHI_DATA_URI"
ENV_OUTPUT_URI: Final = "KAKEHASHI_OUTPUT_URI"  # s3://bucket/prefix/ where the model goes
ENV_SOURCE_GIT_URL: Final = "KAKEHASHI_SOURCE_GIT_URL"
ENV_SOURCE_GIT_REVISION: Final = "KAKEHASHI_SOURCE_GIT_REVISION"  # as asked in the spec
# The init container that clones the code writes the resolved commit sha into this file,
# because an env var cannot carry a value discovered after the pod was created.
ENV_SOURCE_COMMIT_FILE: Final = "KAKEHASHI_SOURCE_COMMIT_FILE"
ENV_WORKSPACE: Final = "KAKEHASHI_WORKSPACE"  # where the code was cloned
# boto3 (>= 1.28) reads AWS_ENDPOINT_URL_S3 itself; the operator copies the platform's S3
# endpoint and credentials (from a Secret) so the same trainer code works on EKS and locally.
ENV_S3_ENDPOINT: Final = "AWS_ENDPOINT_URL_S3"
# A run whose code is a Python function or a notebook shipped by the SDK carries the code in
# its spec (the run is the record of what trained), read by `python -m kakehashi.trainer.function`
# and `python -m kakehashi.trainer.notebook`.
ENV_FUNCTION: Final = "KAKEHASHI_FUNCTION"  # the function's source; its name is the argument
ENV_NOTEBOOK: Final = "KAKEHASHI_NOTEBOOK"  # the notebook (.ipynb JSON, outputs cleared)
FUNCTION_MODULE: Final = "kakehashi.trainer.function"
NOTEBOOK_MODULE: Final = "kakehashi.trainer.notebook"
# What a papermill notebook's cell of default values is tagged (papermill's convention).
PARAMETERS_TAG: Final = "parameters"
