"""The real llama2ft-serve app on a free local port, in a thread of this process (for the serving benchmarks)."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any


def serve_in_thread(chat: Any, sampling: Any) -> str:
    """Start the API for `chat` with default `sampling`; returns its base URL once it accepts requests."""
    import uvicorn

    from llama2ft.serving.api import create_app

    app = create_app(chat, sampling, "bench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"
