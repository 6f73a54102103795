"""Checks before a run writes anything: is a checkpoint complete, which one to resume from, and may the output
folder be written into."""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors import safe_open

from .args import FaPNTrainingArguments

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint (a run stopped while writing it), or None when it is."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "it has no trainer_state.json, the file the Trainer writes last"
    try:
        json.loads(state.read_text())["global_step"]
    except (ValueError, KeyError, TypeError):
        return "its trainer_state.json is cut short"
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        return "it has no model weights (model.safetensors)"
    for path in weights:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception:  # safetensors' own errors for a truncated header or data
            return f"{path.name} is cut short"
    return None


def resolve_resume_checkpoint(output_dir: str | Path, resume: str | bool | None) -> str | None:
    """The checkpoint folder to resume from: `resume` itself, or with `"last"` (or True) the newest `checkpoint-N`
    in `output_dir`. A checkpoint that a stopped run left incomplete raises a `ValueError` that names it and offers
    the newest complete one; a missing one raises `FileNotFoundError`."""
    if resume in (None, "", False):
        return None
    if resume is True or str(resume).lower() in ("last", "true"):
        output_dir = Path(output_dir)
        found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)]
        checkpoints = sorted(found, key=lambda p: int(_CHECKPOINT_NAME.fullmatch(p.name).group(1)))
        if not checkpoints:
            raise FileNotFoundError(f"resume_from_checkpoint=last: {output_dir} holds no checkpoint-* folder")
        chosen = checkpoints[-1]
    else:
        chosen = Path(resume)
        if not chosen.is_dir():
            raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint folder {chosen}")
        checkpoints = [chosen]
    problem = checkpoint_problem(chosen)
    if problem is None:
        return str(chosen)
    previous = next((c for c in reversed(checkpoints[:-1]) if checkpoint_problem(c) is None), None)
    offer = (
        f"resume from the previous one with --resume_from_checkpoint {previous}"
        if previous is not None
        else "there is no earlier complete checkpoint to resume from"
    )
    raise ValueError(
        f"checkpoint {chosen} is incomplete: {problem} (the run was probably stopped while writing it); {offer}, "
        f"or delete {chosen}"
    )


def check_output_dir(training_args: FaPNTrainingArguments) -> None:
    """Refuses to train into a non-empty `output_dir` unless resuming or `overwrite_output_dir` (the Trainer's
    convention): a new run must not mix its files with an earlier one's."""
    output_dir = Path(training_args.output_dir)
    if training_args.overwrite_output_dir or training_args.resume_from_checkpoint or not output_dir.is_dir():
        return
    entries = sorted(path.name for path in output_dir.iterdir())
    if not entries:
        return
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    resume = any(_CHECKPOINT_NAME.fullmatch(name) for name in entries)
    raise FileExistsError(
        f"output_dir {output_dir} is not empty ({shown}): choose another folder"
        + (", resume the run with --resume_from_checkpoint last" if resume else "")
        + ", or pass --overwrite_output_dir true to write over it"
    )


__all__ = ["check_output_dir", "checkpoint_problem", "resolve_resume_checkpoint"]
