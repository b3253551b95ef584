"""llama2ft-studio: compose, launch, watch, compare and publish runs in the browser (Gradio).

    llama2ft-studio                                   # http://127.0.0.1:7870, runs under outputs/
    llama2ft-studio runs_dir=/data/runs host=0.0.0.0 auth=me:secret

A thin layer over the commands (llama2ft/ui/): every action runs the command line it shows, in the folder
the studio was started from. SIGTERM or Ctrl-C stops the studio; runs it started get SIGTERM first (each writes
a checkpoint and exits 75: Resume continues it).
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from omegaconf import DictConfig

from llama2ft.config.hydra_app import hydra_command
from llama2ft.core.errors import ConfigError
from llama2ft.serving.network import port_problems, warn_if_exposed
from llama2ft.serving.web_app import parse_auth


def run_studio(cfg: DictConfig) -> None:
    problems = port_problems(cfg.port)
    try:
        auth = parse_auth(cfg.auth)
    except ValueError as exc:
        problems.append(f"auth={cfg.auth!r}: {exc}")
        auth = None
    runs_dir = Path(str(cfg.runs_dir)).expanduser()
    if runs_dir.exists() and not runs_dir.is_dir():
        problems.append(f"runs_dir={cfg.runs_dir!r}: not a folder")
    if problems:
        raise ConfigError(problems)
    warn_if_exposed(str(cfg.host), auth is not None, "the studio (it runs commands on this machine)",
                    "password; set auth=user:password")

    from llama2ft.ui.page import CSS, build_page
    from llama2ft.ui.workspace import Workspace

    ws = Workspace(runs_dir, Path.cwd(), str(cfg.host), cfg.auth)
    page = build_page(ws, str(cfg.title))
    page.queue(default_concurrency_limit=8).launch(
        server_name=str(cfg.host), server_port=int(cfg.port), auth=auth, show_error=True, quiet=True,
        inbrowser=False, share=False, prevent_thread_lock=True, css=CSS, footer_links=[])
    print(f"llama2ft-studio: runs in {ws.runs_dir} on http://{cfg.host}:{cfg.port}", flush=True)

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("llama2ft-studio: stopping; the runs it started get SIGTERM (a checkpoint, exit 75)", flush=True)
        ws.close()
        page.close()


main = hydra_command("studio", run_studio)

if __name__ == "__main__":
    sys.exit(main())
