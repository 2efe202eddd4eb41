"""The machinery every Kakehashi resource's controller shares.

`errors` sorts failures into temporary (retry with backoff) and permanent (say so in the status);
`queue` coalesces reconcile requests per object and retries with capped, jittered backoff;
`conditions` holds Kubernetes-style conditions; `client` is the one layer that talks to the API.
Nothing here knows about a particular resource, and nothing here imports one.
"""
