"""The PR-comment bot: GitHub webhooks in, checked deploys, diffs, rollbacks and training out.

`app` answers webhooks (signature, dedupe, filtering) and hands commands to `bot`, which checks
permission, approval and mergeability against GitHub (`github`), takes a lock per environment
and service (`locks`), and calls the cluster side (`cluster`) on the PR head checked out from
the GitOps repository with git (`repository`).
"""
