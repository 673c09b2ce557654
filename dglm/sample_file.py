"""A file of samples written as they are made and continued after an interruption (`dglm generate --output`).

Each batch of samples is appended in one write of whole lines, so a killed run leaves at most one unfinished
last line, which a resumed run removes. The run's settings are kept beside the file (OUT.settings.json); a
resumed run must have the same settings, and the samples the file holds must be the first ones of the run,
checked one by one by (prefix index, sample index, seed), so that the finished file is exactly what one
uninterrupted run writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dglm.config import declared_settings
from dglm.errors import DglmError
from dglm.pipeline import Sample

UNRECORDED = {"decoder_dtype": "float32"}  # what a run that left a setting out meant (the CLI records it only if set)


class SampleFile:
    def __init__(self, path: Path, run: dict[str, Any], form: str = "jsonl", resume: bool = False):
        """`run` describes the run (model, prefixes, attributes, seed, settings): what a resumed run must match."""
        self.path, self.form = path, form
        self.settings_path = path.with_name(path.name + ".settings.json")
        if resume:
            if form != "jsonl":
                raise DglmError("--resume needs JSONL output (a text file cannot be checked sample by sample); "
                                "drop --format text")
            if not path.is_file():
                raise DglmError(f"--resume: {path} does not exist yet; run without --resume to start it")
            self.check_same_run(run)
            self.held = self.check_held(run["num_samples"], run["seed"])
        else:
            if path.exists() and path.stat().st_size > 0:
                raise DglmError(f"{path} already holds samples; pass --resume to continue that run, or remove the file")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.settings_path.write_text(json.dumps(run, indent=2) + "\n")
            path.write_bytes(b"")
            self.held = 0

    @staticmethod
    def recorded(path: Path, reader: str = "--resume") -> dict[str, Any]:
        """The settings recorded beside `path` by the run that wrote it; `reader` names who needs them, for the
        error."""
        settings_path = path.with_name(path.name + ".settings.json")
        try:
            return json.loads(settings_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DglmError(f"{reader}: cannot read {settings_path} ({error}), which "
                            "records the run's settings") from None

    def check_same_run(self, run: dict[str, Any]) -> None:
        """Refuse to resume with other settings; a setting newer than the file, now at its declared default (one that
        changes nothing, such as candidates 1), is what the earlier run did."""
        recorded = self.recorded(self.path)
        defaults = {name: spec.default for name, (_, spec, _) in declared_settings().items()}
        then, now = ({key: record.get(key, UNRECORDED.get(key)) for key in set(recorded) | set(run)}
                     for record in (recorded, run))
        differences = [f"{key}: {then[key]!r} then, {now[key]!r} now" for key in sorted(then)
                       if then[key] != now[key] and not (key not in recorded and key in defaults
                                                         and now[key] == defaults[key])]
        if differences:
            raise DglmError(f"--resume with other settings than the run that wrote {self.path} "
                            f"({'; '.join(differences)}); use the same settings, or write to a new file")

    def check_held(self, num_samples: int, seed: int) -> int:
        """How many samples the file already holds, after checking each is the run's next one; an unfinished last
        line (the run was killed while writing it) is cut off."""
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            with open(self.path, "r+b") as file:
                file.truncate(len(complete))
        lines = complete.splitlines()
        for k, line in enumerate(lines):
            try:
                record = json.loads(line)
                held = (record["prefix_index"], record["sample_index"], record["seed"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DglmError(f"{self.path} line {k + 1} is not a sample written by `dglm generate`; "
                                "write to a new file") from None
            expected = (k // num_samples, k % num_samples, seed + k)
            if held != expected:
                raise DglmError(f"{self.path} line {k + 1} holds (prefix {held[0]}, sample {held[1]}, seed {held[2]}), "
                                f"but this run's sample {k + 1} is (prefix {expected[0]}, sample {expected[1]}, seed "
                                f"{expected[2]}); the file was not written by this run")
        return len(lines)

    def append(self, samples: list[Sample], extra: list[dict[str, Any]] | None = None) -> None:
        """Add a batch of samples in one write of whole lines; `extra` adds fields to each sample's JSONL line."""
        if extra is None:
            text = "".join(format_sample(sample, self.form) for sample in samples)
        else:
            text = "".join(json.dumps({**sample.to_dict(), **fields}, ensure_ascii=False) + "\n"
                           for sample, fields in zip(samples, extra))
        with open(self.path, "ab", buffering=0) as file:
            file.write(text.encode("utf-8"))


def format_sample(sample: Sample, form: str) -> str:
    """One sample as a JSONL line, or as a readable block of text."""
    if form == "jsonl":
        return json.dumps(sample.to_dict(), ensure_ascii=False) + "\n"
    targets = ", ".join(f"{c.attribute}={c.label}:{c.weight:g}" for c in sample.constraints) or "unguided"
    return (f"--- prefix {sample.prefix_index}, sample {sample.sample_index} ({targets}; "
            f"seed {sample.seed})\n"  # as in JSONL
            f"{sample.text}\n")
