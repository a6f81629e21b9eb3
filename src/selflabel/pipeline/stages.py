"""Resumable stages: each leaves a marker in ``WORK/stages/`` with the settings it ran with.

A finished stage is skipped when rerun; an interrupted one resumes. A finished stage whose settings changed is
refused unless ``force`` names it (or an earlier stage): then it and every later stage are redone. A stage still to
run (interrupted, or new: one more round, fine-tuning) makes every finished stage after it stale, so a finished run
extends without ``force``.

Under torchrun every process walks the stages together: a stage marked ``every_rank`` (DDP training, sharded
pseudo-labelling) runs in every process, any other in rank 0 alone; rank 0 writes the markers and clears, and every
process waits for the others at the end of each stage, so that the next one sees what it wrote.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selflabel import progress
from selflabel.atomic import atomic_write_json
from selflabel.distributed import barrier, dist_info
from selflabel.errors import SelflabelError


def say(message: str) -> None:
    """A progress line of the recipe, flushed at once (batch logs see it when it happens); rank 0 alone prints."""
    progress.say(message)


@dataclass(frozen=True)
class Stage:
    """One step of the recipe: its name, the config sections its result depends on, what it writes, and whether
    every torchrun process runs it (or rank 0 alone)."""

    name: str
    sections: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[], None]
    every_rank: bool = False


class StageRunner:
    """Runs stages in order in a work folder, with markers, settings checks and forced redos."""

    def __init__(
        self,
        work: Path,
        settings: Mapping[str, Any],
        identity: Mapping[str, Any],
        defaults: Mapping[str, Any] | None = None,
    ):
        """`settings`: the resolved config as a dict; `identity`: what else a stage's result depends on (data);
        `defaults`: the default config as a dict (a setting newer than a stage's marker, at its default, is no
        change)."""
        self.work = work
        self.settings = settings
        self.identity = dict(identity)
        self.defaults = defaults
        self.info = dist_info()

    def fingerprint(self, stage: Stage, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.identity)
        settings = self.settings if settings is None else settings
        for key in stage.sections:
            value: Any = settings
            for part in key.split("."):
                value = value[part]
            out[key] = value
        return out

    def marker(self, stage: Stage) -> Path:
        return self.work / "stages" / f"{stage.name}.json"

    def done(self, stage: Stage) -> bool:
        marker = self.marker(stage)
        return marker.is_file() and json.loads(marker.read_text())["status"] == "done"

    def clear(self, stage: Stage) -> None:
        for rel in stage.outputs:
            path = self.work / rel
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.marker(stage).unlink(missing_ok=True)

    def prepare(self, stages: Sequence[Stage], force: Sequence[str]) -> None:
        """Check reused stages' settings and clear the stages to redo: the forced ones and those after a pending one."""
        names = [s.name for s in stages]
        unknown = sorted(set(force) - set(names))
        if unknown:
            raise SelflabelError(f"--force {unknown[0]}: not a stage of this run; stages are {', '.join(names)}")
        first_forced = min((names.index(f) for f in force), default=len(stages))
        pending = next((i for i, s in enumerate(stages) if not self.done(s)), len(stages))
        # stages from `cut` on are redone: the forced ones, and those after a stage still to run (new, e.g. one
        # more round, or interrupted: that one resumes, so its own settings are checked)
        cut = min(first_forced, pending + 1)
        self.check_settings(stages[:cut])
        if self.info.is_main:
            for stage in stages[cut:]:
                self.clear(stage)
        barrier(self.info)

    def run(self, stages: Sequence[Stage]) -> list[str]:
        """Run every stage not yet done; return the names of the stages that ran."""
        ran = []
        for i, stage in enumerate(stages, 1):
            if self.done(stage):
                say(f"==> [{i}/{len(stages)}] {stage.name}: done earlier, skipped")
                continue
            say(f"==> [{i}/{len(stages)}] {stage.name}")
            start = time.perf_counter()
            fingerprint = self.fingerprint(stage)
            if self.info.is_main:
                atomic_write_json(self.marker(stage), {"status": "started", "settings": fingerprint})
            if stage.every_rank or self.info.is_main:
                stage.run()
            barrier(self.info)
            seconds = round(time.perf_counter() - start, 2)
            if self.info.is_main:
                atomic_write_json(self.marker(stage), {"status": "done", "seconds": seconds, "settings": fingerprint})
            ran.append(stage.name)
        return ran

    def first_changed(self, stages: Sequence[Stage]) -> tuple[Stage, str] | None:
        """The first stage (finished or started) whose settings differ from the current ones, and the difference."""
        for stage in stages:
            marker = self.marker(stage)
            if not marker.is_file():
                continue
            before = json.loads(marker.read_text())["settings"]
            now = self.fingerprint(stage)
            if self.defaults is not None:
                before = _added_at_default(before, now, self.fingerprint(stage, self.defaults))
            if before != now:
                return stage, _first_difference(before, now)
        return None

    def check_settings(self, stages: Sequence[Stage]) -> None:
        """Refuse to reuse a stage (finished or started) whose settings differ from the current ones."""
        changed = self.first_changed(stages)
        if changed:
            stage, difference = changed
            raise SelflabelError(
                f"{self.work}: stage '{stage.name}' ran with other settings ({difference}); "
                f"rerun with --force {stage.name} to redo it and every later stage"
            )


def _added_at_default(before: Any, now: Any, default: Any) -> Any:
    """`before` with each key it lacks taken from `now` where `now` holds the default value: a setting added to
    selflabel after a stage ran, and left at its default, changes nothing that stage did."""
    if not (isinstance(before, dict) and isinstance(now, dict) and isinstance(default, dict)):
        return before
    out = {key: _added_at_default(value, now.get(key), default.get(key)) for key, value in before.items()}
    out.update({key: now[key] for key in now.keys() - before.keys() if key in default and now[key] == default[key]})
    return out


def _first_difference(before: Any, now: Any, path: str = "") -> str:
    if isinstance(before, dict) and isinstance(now, dict):
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                return _first_difference(before.get(key), now.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {before!r} -> {now!r}"
