"""A Go tool built with a dependency's file swapped for ours (tools/<name>/patches/): the
Traefik build leaves lego's DNS providers out this way."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from kakehashi.dev import tools

DEP = "example.com/greet"
UPSTREAM = 'package greet\n\nfunc Hello() string { return "upstream" }\n'
OURS = 'package greet\n\nfunc Hello() string { return "patched" }\n'


def _proxy(root: Path) -> str:
    """A file:// Go module proxy serving DEP v1.0.0: a library and a command printing Hello()."""
    files = {
        "go.mod": f"module {DEP}\n\ngo 1.22\n",
        "hello.go": UPSTREAM,
        "cmd/greet/main.go": f'package main\n\nimport "{DEP}"\n\n'
                             'func main() { println(greet.Hello()) }\n',
    }
    versions = root / DEP / "@v"
    versions.mkdir(parents=True)
    (versions / "list").write_text("v1.0.0\n")
    (versions / "v1.0.0.info").write_text(json.dumps({"Version": "v1.0.0",
                                                      "Time": "2024-01-01T00:00:00Z"}))
    (versions / "v1.0.0.mod").write_text(files["go.mod"])
    with zipfile.ZipFile(versions / "v1.0.0.zip", "w") as archive:
        for name, text in files.items():
            archive.writestr(f"{DEP}@v1.0.0/{name}", text)
    return root.as_uri()


@pytest.fixture
def patched_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tools.GoTool:
    module = tmp_path / "tools" / "greet"
    (module / "patches").mkdir(parents=True)
    (module / "go.mod").write_text(f"module kakehashi.dev/tools/greet\n\ngo 1.22\n\n"
                                   f"require {DEP} v1.0.0\n")
    (module / "go.sum").write_text("")
    (module / "patches" / "hello.go.txt").write_text(OURS)
    monkeypatch.setenv("KAKEHASHI_REPO", str(tmp_path))
    monkeypatch.setenv("KAKEHASHI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GOPROXY", _proxy(tmp_path / "proxy"))
    monkeypatch.setenv("GOSUMDB", "off")
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "gomod"))
    return tools.GoTool(name="greet", version="1", binaries={"greet": f"{DEP}/cmd/greet"},
                        patches=(tools.ModulePatch(DEP, {"hello.go": "hello.go.txt"}),))


@pytest.mark.skipif(shutil.which("go") is None, reason="builds a Go program")
def test_the_built_program_runs_our_file_and_the_module_cache_is_untouched(
        patched_tool: tools.GoTool, tmp_path: Path) -> None:
    directory = tools.build(patched_tool)
    ran = subprocess.run([directory / "greet"], capture_output=True, text=True, check=True)
    assert ran.stderr.strip() == "patched"
    # The module cache keeps upstream's file (other builds share it); the committed go.mod and
    # go.sum are not rewritten; the patched copy is gone.
    cached = tmp_path / "gomod" / f"{DEP}@v1.0.0" / "hello.go"
    assert cached.read_text() == UPSTREAM
    assert "replace" not in (patched_tool.module_dir / "go.mod").read_text()
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]


def test_changing_the_patch_rebuilds(patched_tool: tools.GoTool) -> None:
    before = patched_tool.install_dir()
    assert patched_tool.install_dir() == before
    (patched_tool.patch_dir / "hello.go.txt").write_text(OURS + "// changed\n")
    assert patched_tool.install_dir() != before


@pytest.mark.skipif(shutil.which("go") is None, reason="downloads a Go module")
def test_a_patch_whose_file_upstream_no_longer_has_is_refused(
        patched_tool: tools.GoTool) -> None:
    moved = tools.GoTool(name="greet", version="1", binaries=patched_tool.binaries,
                         patches=(tools.ModulePatch(DEP, {"hi.go": "hello.go.txt"}),))
    with pytest.raises(RuntimeError, match=r"patches/hello.go.txt replaces hi.go, which "
                                           r"example.com/greet no longer has"):
        tools.build(moved)
    assert not moved.install_dir().exists()


def test_traefik_is_built_without_legos_dns_providers() -> None:
    (patch,) = tools.TRAEFIK.patches
    assert patch.module in (tools.TRAEFIK.module_dir / "go.mod").read_text()
    for name in patch.files.values():
        ours = (tools.TRAEFIK.patch_dir / name).read_text()
        assert "func NewDNSChallengeProviderByName(" in ours
        assert "providers/dns/" not in ours.split("import (")[1]
