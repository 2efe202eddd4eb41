"""Baking, daemonless: a model becomes one reproducible layer appended to a serving image.

`layer` makes the tar layer (same model, same digest), `registry` talks the OCI distribution
API (auth, retries, HEAD-before-upload, mounts, chunked uploads from files), `append` rewrites
the base's config and manifests (Docker or OCI, each platform of an index), and `bake` ties
them together with the model's download and compile. No kopf, no Kubernetes client: this runs
inside the bake Job's container.
"""

from kakehashi.bake.bake import BakeError, BakeResult, bake, image_tag, lineage_labels
from kakehashi.bake.layer import Layer, LayerError, model_layer
from kakehashi.bake.registry import Credentials, Reference, Registry, RegistryError

__all__ = [
    "BakeError",
    "BakeResult",
    "Credentials",
    "Layer",
    "LayerError",
    "Reference",
    "Registry",
    "RegistryError",
    "bake",
    "image_tag",
    "lineage_labels",
    "model_layer",
]
