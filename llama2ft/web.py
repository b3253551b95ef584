"""llama2ft-web: a Gradio chat in the browser.

    llama2ft-web run=outputs/train/RUN                       # http://127.0.0.1:7860
    llama2ft-web run=outputs/train/RUN host=0.0.0.0 auth=me:secret
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from llama2ft.config.hydra_app import TEXT_KEYS, hydra_command
from llama2ft.inference.settings import check, engine_problems, load
from llama2ft.serving.drain import Drain, wait_for_drain
from llama2ft.serving.network import drain_problems, port_problems, queue_problems, warn_if_exposed
from llama2ft.serving.web_app import build_app, parse_auth


def run_web(cfg: DictConfig) -> None:
    extra = []
    try:
        auth = parse_auth(cfg.auth)
    except ValueError as exc:
        extra.append(f"auth={cfg.auth!r}: {exc}")
        auth = None
    extra += port_problems(cfg.port) + queue_problems(cfg.max_queue) + engine_problems(cfg.max_batch)
    extra += drain_problems(cfg.drain_seconds)
    if int(cfg.concurrency) < 1:
        extra.append(f"concurrency={cfg.concurrency}: must be >= 1")
    spec, samp = check(cfg, extra)

    warn_if_exposed(str(cfg.host), auth is not None, "the chat", "password; set auth=user:password")
    chat = load(spec, int(cfg.max_batch))  # Gradio's queue (max_queue) holds the waiting requests
    drain = Drain(cfg.drain_seconds, quiet_s=1.0)  # Gradio's client joins its queue, then opens the event's stream
    app = build_app(chat, samp, str(cfg.title), int(cfg.concurrency), drain)
    print(f"llama2ft-web: {chat.name} on http://{cfg.host}:{cfg.port}", flush=True)
    app.queue(default_concurrency_limit=int(cfg.concurrency), max_size=cfg.max_queue).launch(
        server_name=str(cfg.host), server_port=int(cfg.port), auth=auth, show_error=True, quiet=True,
        inbrowser=False, share=False, prevent_thread_lock=True, app_kwargs={"middleware": [drain.middleware(True)]})
    wait_for_drain(drain, app.close, "llama2ft-web")  # SIGTERM drains, then exit 0


main = hydra_command("web", run_web, text_keys=TEXT_KEYS)

if __name__ == "__main__":
    sys.exit(main())
