"""Stage check: validate params.yaml and every stage's raw inputs before any stage runs.

python -m stages.check

`dvc repro` and `dvc exp run` delete a stage's outputs before they run it, so a
params typo or a bad input file, which the stage itself refuses in one line, would
still cost the previous adapter, prepared data or git-tracked reports. Every stage
lists this stage's output (data/checked.json) among its deps, so DVC runs this
first and stops here, before it deletes anything. The output's bytes never change
while everything is valid: a valid edit reruns only the stages that depend on it.
(The alternative, `persist: true` on every output, would turn off DVC's run-cache
for those stages; see docs/reliability.md.)

What is checked: every section of params.yaml (tunelab.config.load_params: unknown
sections and keys with a close-match suggestion, every error of a bad section);
each prepare scenario's raw inputs, read and checked by the prepare code itself in
memory (tunelab.scenarios.build); the base models' corpus; the svd image and the als
ratings file when they are files. A scenario whose section and input files (size,
mtime) and loader code are unchanged since its last successful check is not read
again (.tunelab/check.json), so that an edit elsewhere in params.yaml stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunelab.runtime import run_stage

OUT = Path("data/checked.json")
MEMO = Path(".tunelab/check.json")
# Constant while everything is valid: stages depend on it, it must not make them rerun.
CONTENT = {"checked": "params.yaml and the raw inputs of every stage (stages/check.py)"}


def fingerprint(section: Any, paths: list[Path]) -> str:
    """Hash of a params section, the stat of every file under ``paths`` and the loaders."""
    import tunelab.config
    import tunelab.data

    h = hashlib.sha256(json.dumps(section.model_dump(), sort_keys=True, default=str).encode())
    code = [
        *sorted(Path(tunelab.config.__file__).parent.glob("*.py")),
        *sorted(Path(tunelab.data.__file__).parent.glob("*.py")),
    ]
    for f in code:
        h.update(f.read_bytes())
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat() if f.exists() else None
            h.update(f"{f}\0{st and st.st_size}\0{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def check_inputs(sections: dict[str, Any]) -> list[str]:
    """Check every scenario's raw inputs (memoised); return one summary word per scenario."""
    from tunelab.errors import TunelabError
    from tunelab.io import write_json
    from tunelab.scenarios import SCENARIOS, build, input_paths

    memo = json.loads(MEMO.read_text()) if MEMO.is_file() else {}
    done = []
    try:
        for scenario in SCENARIOS:
            params = sections[f"prepare.{scenario}"]
            key = fingerprint(params, input_paths(scenario, params))
            if memo.get(scenario) == key:
                done.append(f"{scenario} (unchanged)")
                continue
            prepared = build(scenario, params)
            memo[scenario] = key
            done.append(f"{scenario} ({sum(map(len, prepared.splits.values()))} records)")
        for name in (n for n in sections if n.startswith("pretrain.")):
            from tunelab.data.domain_text import read_documents, source_files

            data = sections[name].data  # the domain text parses (drops are per document)
            for path in source_files(Path(data.source)):
                read_documents(path, data.text_key)
        for name in ("base.text", "base.vision"):
            if sections[name].source == "build":
                from tunelab.data.text import read_corpus

                read_corpus(Path(sections[name].corpus))
        svd, als = sections["lowrank.svd"], sections["lowrank.als"]
        if not svd.image.startswith("skimage.data.") and not Path(svd.image).is_file():
            raise TunelabError(f"lowrank.svd.image: {svd.image}", "file not found")
        if als.dataset == "movielens" and not Path(als.ratings_path).is_file():
            raise TunelabError(f"lowrank.als.ratings_path: {als.ratings_path}", "file not found")
    finally:
        write_json(MEMO, memo)
    return done


def check() -> None:
    from tunelab.config import load_params
    from tunelab.io import write_json

    sections = load_params()
    done = check_inputs(sections)
    write_json(OUT, CONTENT)
    print(f"check: params.yaml valid ({len(sections)} sections); inputs valid: {', '.join(done)}")


def main() -> None:
    run_stage(check)


if __name__ == "__main__":
    main()
