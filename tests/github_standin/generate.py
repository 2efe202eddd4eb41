"""Regenerate `openapi-subset.json`: the part of GitHub's OpenAPI description the bot uses.

    python tests/github_standin/generate.py            # npm packs @octokit/openapi into a temp dir
    python tests/github_standin/generate.py FILE.json  # or reads an api.github.com.json already here

Why a subset: the full description is 13 MB (73 MB dereferenced); the stand-in needs only the
operations the bot calls, the components they reach, and one response example per operation
(the stand-in builds its answers from GitHub's own examples, so they carry every required field).
Prose is dropped (descriptions, summaries), nothing that validation reads is.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "@octokit/openapi@23.0.2"
MEMBER = "package/generated/api.github.com.json"
OUT = Path(__file__).with_name("openapi-subset.json")

# (method, path): every GitHub REST call the bot (kakehashi.gitops.github) and GitOps delivery make.
OPERATIONS = [
    ("get", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews"),
    ("put", "/repos/{owner}/{repo}/pulls/{pull_number}/merge"),
    ("post", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("post", "/repos/{owner}/{repo}/statuses/{sha}"),
    ("get", "/orgs/{org}/teams/{team_slug}/memberships/{username}"),
    # GitOps delivery (kakehashi.delivery.gitops): find, open and update the service's PR.
    ("get", "/repos/{owner}/{repo}/pulls"),
    ("post", "/repos/{owner}/{repo}/pulls"),
    ("patch", "/repos/{owner}/{repo}/pulls/{pull_number}"),
]
PROSE = {"description", "summary", "x-github", "externalDocs", "tags", "title"}


def load(argv: list[str]) -> dict[str, Any]:
    if argv:
        return dict(json.loads(Path(argv[0]).read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", tmp], check=True, cwd=tmp)
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            member = archive.extractfile(MEMBER)
            assert member is not None
            return dict(json.load(member))


def strip(node: Any, *, keep_examples: bool) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            # A property may be *named* "description" or "title" (a status's description is one):
            # only drop prose where it is prose, i.e. a string or a non-schema map.
            if key in PROSE and not isinstance(value, dict):
                continue
            if key in ("example", "examples") and not keep_examples:
                continue
            out[key] = strip(value, keep_examples=keep_examples)
        return out
    if isinstance(node, list):
        return [strip(item, keep_examples=keep_examples) for item in node]
    return node


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value)
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def subset(spec: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path in OPERATIONS:
        operation = strip(spec["paths"][path][method], keep_examples=False)
        # Keep exactly one example of the success answer: the stand-in's template.
        for code, response in spec["paths"][path][method]["responses"].items():
            if code.startswith("2") and "$ref" not in response:
                for media, content in response.get("content", {}).items():
                    examples = content.get("examples") or {}
                    if examples:
                        first = next(iter(examples.values()))
                        operation["responses"][code]["content"][media]["examples"] = {"default": first}
        paths.setdefault(path, {})[method] = operation
    out: dict[str, Any] = {"openapi": spec["openapi"], "info": {"version": spec["info"]["version"]},
                           "paths": paths, "components": {}}
    pending = refs(paths)
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        match = re.fullmatch(r"#/components/([^/]+)/(.+)", ref)
        assert match, ref
        kind, name = match.groups()
        node = spec["components"][kind][name]
        # Examples are data: a "title" or "description" in them is a field, not prose.
        node = node if kind == "examples" else strip(node, keep_examples=False)
        out["components"].setdefault(kind, {})[name] = node
        pending |= refs(node) - seen
    for kind in out["components"]:
        out["components"][kind] = dict(sorted(out["components"][kind].items()))
    return out


def main() -> None:
    result = subset(load(sys.argv[1:]))
    OUT.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {OUT.stat().st_size} bytes, {len(result['paths'])} paths")


if __name__ == "__main__":
    main()
