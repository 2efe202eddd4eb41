"""Jupyter Server as a Kubeflow notebook server, for the notebook images (/etc/jupyter).

Kubeflow's notebook controller routes NB_PREFIX (/notebook/<namespace>/<name>) to port 8888 of
the pod unchanged, and its dashboard shows the server in an iframe of the same origin. The
platform's gateway authenticates, so the server asks for no token. Where code-server is
installed (the jupyter-code-server image), jupyter-server-proxy starts it on demand and serves
it at NB_PREFIX/vscode/, with a VS Code tile in the launcher.
"""

import os
import shutil

c = get_config()  # noqa: F821  (Jupyter's config loader defines it)

home = os.environ.get("HOME", "/home/jovyan")

c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = 8888
c.ServerApp.open_browser = False
c.ServerApp.base_url = os.environ.get("NB_PREFIX") or "/"
c.ServerApp.root_dir = home
c.IdentityProvider.token = ""
c.ServerApp.allow_origin = "*"
# The gateway's Host is not localhost; the server listens on every address anyway.
c.ServerApp.allow_remote_access = True
# Prometheus scrapes /metrics inside the cluster, without the gateway's credentials.
c.ServerApp.authenticate_prometheus = False
# Framed by pages of the same origin (the Kubeflow dashboard), by no other site.
c.ServerApp.tornado_settings = {
    "headers": {"Content-Security-Policy": "frame-ancestors 'self'"},
}
c.ServerApp.terminado_settings = {"shell_command": ["/bin/bash"]}

if shutil.which("code-server"):
    c.ServerProxy.servers = {
        "vscode": {
            # Bound to loopback: reachable only through the proxy, behind the notebook's URL.
            "command": [
                "code-server", "--auth=none", "--bind-addr=127.0.0.1:{port}",
                "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
                home,
            ],
            # First start on an empty volume writes its settings: give it time on a busy node.
            "timeout": 60,
            "launcher_entry": {
                "title": "VS Code",
                "icon_path": "/opt/code-server/lib/node_modules/code-server/src/browser/media/favicon.svg",
            },
        },
    }
