"""The studio's state on the server: where runs live, the folder commands run in, the composer, the jobs, and
what each button does (launch, preview, stop, resume, an action on a finished run), as the commands it runs."""
from __future__ import annotations

import copy
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llama2ft.model.loading import load_tokenizer
from llama2ft.model.run_folder import RunDir
from llama2ft.ui import actions, data_preview, runs
from llama2ft.ui.compose import Composed, Composer, Draft
from llama2ft.ui.jobs import Job, Jobs

TRAIN = "train"


@dataclass
class Session:
    """One browser session's draft, kept here rather than in the page: two edits in quick succession both count,
    each applied to the draft the other left (page state travels with each request and would lose one)."""

    draft: Draft
    shown: dict  # what the form shows of the last composition: edits are changes against it
    lock: threading.Lock = field(default_factory=threading.Lock)


class Workspace:
    def __init__(self, runs_dir: Path, cwd: Path, host: str = "127.0.0.1", auth: Optional[str] = None):
        self.runs_dir, self.cwd, self.host, self.auth = Path(runs_dir).resolve(), Path(cwd), host, auth
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.composer = Composer()
        self.jobs = Jobs(self.cwd)
        self.last_action: dict[str, tuple[str, str]] = {}  # run folder -> (action, job key)
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.sessions: dict[str, Session] = {}
        self.start = Draft(groups={g: self.composer.default_choice(g) for g in self.composer.groups})
        self.first = self.composer.check(self.start)

    def session(self, key: str) -> Session:
        with self._lock:
            if key not in self.sessions:
                self.sessions[key] = Session(copy.deepcopy(self.start), shown_of(self.first))
            return self.sessions[key]

    # ---------------------------------------------------------------- folders
    def new_folder(self, kind: str) -> Path:
        """runs_dir/<kind>/<date>_<time>, as Hydra names them (a suffix when two start in one second)."""
        with self._lock:
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            folder, n = self.runs_dir / kind / stamp, 1
            while folder.exists():
                folder, n = self.runs_dir / kind / f"{stamp}_{n}", n + 1
            folder.mkdir(parents=True)
            return folder

    def path_of(self, label: str) -> Path:
        return self.runs_dir / label

    def label(self, path: Path) -> str:
        return runs.label(path, self.runs_dir)

    def run_labels(self) -> list[str]:
        return [self.label(p) for p in runs.find(self.runs_dir).runs]

    def upload(self, file: str) -> Path:
        """An uploaded file copied under runs_dir/uploads (the browser's copy is temporary)."""
        target = self.runs_dir / "uploads" / Path(file).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        return target

    # ---------------------------------------------------------------- compose, preview, launch
    def check(self, draft: Draft) -> Composed:
        return self.composer.check(draft)

    def launch(self, draft: Draft) -> tuple[Optional[Path], str]:
        """Start `llama2ft-train` with the draft's overrides in a new run folder; nothing starts on a problem."""
        composed = self.check(draft)
        if not composed.ok:
            return None, "not launched: the config has problems\n" + composed.error
        pinned = [o for o in composed.overrides if o.startswith("hydra.run.dir=")]
        folder = Path(pinned[-1].split("=", 1)[1]) if pinned else self.new_folder(TRAIN)
        args = composed.overrides + ([] if pinned else [f"hydra.run.dir={folder}"])
        job = self.jobs.start(str(folder.resolve()), TRAIN, args, folder)
        return folder, f"launched: {job.shown()}"

    def preview(self, draft: Draft) -> tuple[Optional[Job], Optional[Path], str]:
        """Start `llama2ft-prepare` with the draft's overrides in runs_dir/prepare/<time>."""
        composed = self.check(draft)
        if not composed.ok:
            return None, None, "not run: the config has problems\n" + composed.error
        folder = self.new_folder(data_preview.COMMAND)
        job = self.jobs.start(f"preview:{folder}", data_preview.COMMAND,
                              data_preview.prepare_args(composed.overrides, folder), folder)
        return job, folder, f"running: {job.shown()}"

    def tokenizer(self, composed: Composed) -> Any:
        """The tokenizer the data step used (the composed model's), loaded once."""
        key = str(composed.cfg.model.tokenizer or composed.cfg.model.name_or_path)
        if key not in self._tokenizers:
            self._tokenizers[key] = load_tokenizer(composed.cfg.model)
        return self._tokenizers[key]

    # ---------------------------------------------------------------- a run
    def job_of(self, folder: Path) -> Optional[Job]:
        return self.jobs.get(str(Path(folder).resolve()))

    def running(self, folder: Path) -> bool:
        job = self.job_of(folder)
        return job is not None and job.running

    def stop(self, folder: Path) -> str:
        """SIGTERM to the run's training, else to its running action (the chat server, an eval, ...)."""
        job = self.job_of(folder)
        if job is not None and job.running:
            job.stop()
            return "SIGTERM sent: the run finishes its step, writes a checkpoint and exits 75"
        _, action = self.action_of(folder)
        if action is not None and action.running:
            action.stop()
            return f"SIGTERM sent to {action.shown()}"
        return "nothing of this run is running"

    def resume(self, folder: Path) -> str:
        """The same command again: the job's own arguments, or for a run started elsewhere its overrides."""
        if RunDir(folder).is_finished():
            return "finished: nothing to resume"
        job = self.job_of(folder)
        args = job.args if job is not None else runs.resume_args(folder)
        try:
            job = self.jobs.start(str(Path(folder).resolve()), TRAIN, args, Path(folder))
        except RuntimeError as exc:
            return str(exc)
        return f"resumed: {job.shown()}"

    def command_of(self, folder: Path) -> str:
        job = self.job_of(folder)
        return job.shown() if job is not None else Job.shown_for(TRAIN, runs.resume_args(folder))

    def act(self, folder: Path, action: str, quant: str = "q8_0") -> str:
        """Start an action on a finished run; its output and result show with the run."""
        if not RunDir(folder).is_finished():
            return f"{self.label(folder)} is not finished"
        port = _free_port() if action == "chat" else 0
        planned = actions.plan(action, Path(folder), self.runs_dir, quant=quant, port=port, host=self.host,
                               auth=self.auth)
        key = f"{action}:{Path(folder).resolve()}"
        try:
            job = self.jobs.start(key, planned.command, planned.args, planned.result)
        except RuntimeError as exc:
            return str(exc)
        self.last_action[str(Path(folder).resolve())] = (action, key)
        return f"running: {job.shown()}"

    def action_of(self, folder: Path) -> tuple[Optional[str], Optional[Job]]:
        found = self.last_action.get(str(Path(folder).resolve()))
        return (found[0], self.jobs.get(found[1])) if found else (None, None)

    def close(self) -> None:
        self.jobs.stop_all()


def shown_of(composed: Composed) -> dict:
    """What the form shows of a composition: the fields' values and the method settings."""
    return {"fields": composed.field_values(), "method": composed.method_settings()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
