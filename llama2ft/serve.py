"""llama2ft-serve: an OpenAI-compatible HTTP API on the training template (see `serving.api`).

    llama2ft-serve run=outputs/train/RUN          # http://127.0.0.1:8000/v1, e.g. with the openai client:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused").chat.completions.create(...)
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from llama2ft.config.hydra_app import TEXT_KEYS, hydra_command
from llama2ft.inference.settings import check, engine_problems, load
from llama2ft.serving.network import drain_problems, port_problems, queue_problems, warn_if_exposed


def run_serve(cfg: DictConfig) -> None:
    extra = port_problems(cfg.port) + queue_problems(cfg.max_queue) + engine_problems(cfg.max_batch, cfg.engine)
    extra += drain_problems(cfg.drain_seconds)
    if cfg.max_request_bytes < 1024:
        extra.append(f"max_request_bytes={cfg.max_request_bytes}: must be >= 1024")
    spec, samp = check(cfg, extra)
    warn_if_exposed(str(cfg.host), bool(cfg.api_key), "the API", "api_key")
    chat = load(spec, int(cfg.max_batch), cfg.max_queue, str(cfg.engine))
    from llama2ft.serving.api import create_app  # fastapi: imported only when serving
    from llama2ft.serving.drain import serve_api

    name = str(cfg.served_name or chat.name)
    app = create_app(chat, samp, name, cfg.api_key, cfg.max_request_bytes)
    print(f"llama2ft-serve: {name} on http://{cfg.host}:{cfg.port}/v1", flush=True)
    defaults = " ".join(f"{k}={v}" for k, v in samp.shown().items())
    print(f"sampling defaults (also in /v1/models): {defaults}; a request's own fields override them "
          "(temperature, top_p, max_tokens, seed, frequency_penalty, presence_penalty; top_k and repetition_penalty "
          "in the body, openai: extra_body=); repetition_penalty=1.0 turns the community's penalty off", flush=True)
    serve_api(app, str(cfg.host), int(cfg.port), cfg.drain_seconds)  # SIGTERM drains, then exit 0


main = hydra_command("serve", run_serve, text_keys=TEXT_KEYS)

if __name__ == "__main__":
    sys.exit(main())
