#!/usr/bin/env bash
# device_check.sh: the one prepared check for the day a GPU is lent (issue 24, item 6).
#
#     bash benchmarks/device_check.sh [OUTDIR]      # OUTDIR default: $OUT if set, else runs/device_check
#                                                   # (in the repository); exit 0 when every check passed
#
# On a machine without a GPU (no `nvidia-smi -L` GPU and no /dev/nvidia0) it prints one line,
# "device_check: no GPU on this machine; nothing to check", and exits 0 (fast: no venv, no torch).
#
# On a GPU machine (written for one NVIDIA H200, 16 CPU cores, no network) it runs, in this order, each part
# under its own `timeout` (a hung part is killed and recorded; the next part still runs):
#
#   part       budget  what
#   venv        110 s  only when .venv/bin/lipsweep is missing or .venv cannot import lipsweep + torch:
#                      python3 -m venv --system-site-packages .venv && .venv/bin/pip install -e '.[test]'
#                      (system site-packages: a CUDA torch already on the machine is used; offline, pip fails
#                      and the JSON says so)
#   probe        20 s  torch version, CUDA build, torch.cuda.is_available(), the device; a GPU torch cannot
#                      use is said in the JSON, and the CUDA parts are then skipped (the sweep runs on CPU)
#   sweep (a)    90 s  `lipsweep run` of a 4-trial copy of rewind_ablation's smoke shape (rewind 0 / 0.1 x seed
#                      0 / 1; 64 px, width 16, 400 iterations, 2 levels) with device=cuda and resources
#                      {cpu: 1, gpu: 0.25}: 4 trials on the one GPU through Ray; temp store, Tune storage and
#                      MLflow (sqlite) in a temp dir; rc, wall time, trials finished, MLflow runs by status
#   platform(d)  90 s  one chain (Set5/baby denoise, 64 px, width 16, 300 iterations, 4 levels, seed 0) on CPU,
#                      on CUDA twice, on CUDA with deterministic kernels twice (TrialConfig.deterministic), each
#                      in its own store and process: per level dPSNR (psnr_ema) and mask Jaccard vs CPU, each
#                      record's platform, and whether each CUDA pair of repeats is bit-equal (mask hashes and
#                      every metric equal); a variant that raises (e.g. an op torch has no deterministic CUDA
#                      kernel for) is recorded with its error, the others are still compared
#   calibrate(b) 70 s  benchmarks/calibrate.py --devices cuda --merge into a copy of lipsweep/data/calibration.json
#                      in OUTDIR (sizes 64-512 x widths 16-128, 2 rounds of 1 s); the repo's table is untouched
#   gpu_seeds(c) 85 s  benchmarks/gpu_seeds.py --ks 1 4 8 at 256 and 512 px (25 iterations x 2 repeats; quality:
#                      4 seeds x 100 iterations)
#
# Budgets sum to 465 s; a hard deadline (DEVICE_CHECK_TOTAL_S, default 470 s from the start, less 8 s kept for
# the assembly) also caps every part's timeout, so the whole run ends in under 8 minutes even when the venv part
# or any other part runs long. Results: OUTDIR/device_check.json (one JSON: "parts" with each part's status
# passed / failed / timed_out / skipped, rc, wall_s, timeout_s and a failed part's last log lines; "passed",
# "failed", "skipped", "all_passed"; "probe", "sweep", "platform", "calibrate", "gpu_seeds" with each part's
# results), OUTDIR/calibration.json (the merged table copy) and OUTDIR/logs/PART.log. Scratch (stores, Tune,
# MLflow db) lives in a temp dir, removed at the end unless DEVICE_CHECK_KEEP=1.
#
# DEVICE_CHECK_CPU_DEBUG=1 runs the whole flow on a machine without a GPU at a tiny size, every "cuda" on the
# CPU (a check of this script, not a measurement); it never creates or changes the venv.

set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=${1:-${OUT:-$ROOT/runs/device_check}}
CPU_DEBUG=${DEVICE_CHECK_CPU_DEBUG:-0}
TOTAL=${DEVICE_CHECK_TOTAL_S:-470}
RESERVE=8
START=$(date +%s)

gpu_present() {
    if command -v nvidia-smi >/dev/null 2>&1 && timeout 20 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        return 0
    fi
    [ -e /dev/nvidia0 ]
}

if [ "$CPU_DEBUG" != 1 ] && ! gpu_present; then
    echo "device_check: no GPU on this machine; nothing to check"
    exit 0
fi

mkdir -p "$OUTDIR" || { echo "device_check: cannot create $OUTDIR" >&2; exit 1; }
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$ROOT" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX") || { echo "device_check: no temp dir" >&2; exit 1; }
LOGS=$OUTDIR/logs
mkdir -p "$WORK/parts" "$LOGS"
VENV=$ROOT/.venv
PY=$VENV/bin/python
DC=$ROOT/benchmarks/device_check.py

now_s() { date +%s.%N; }

# part_status NAME STATUS [RC START END TIMEOUT BUDGET REASON]: the part's line in the JSON
part_status() {
    local reason=${8:-}
    reason=${reason//\\/\\\\}
    reason=${reason//\"/\\\"}
    printf '{"status": "%s", "rc": %s, "start": %s, "end": %s, "timeout_s": %s, "budget_s": %s, "reason": "%s", "log": "%s"}\n' \
        "$2" "${3:-null}" "${4:-null}" "${5:-null}" "${6:-null}" "${7:-null}" "$reason" "$LOGS/$1.log" \
        >"$WORK/parts/$1.json"
}

# run_part NAME BUDGET CMD...: CMD under `timeout`, capped by the deadline; output in logs/NAME.log
run_part() {
    local name=$1 budget=$2 left t rc start end
    shift 2
    left=$(( START + TOTAL - RESERVE - $(date +%s) ))
    t=$budget
    [ "$left" -lt "$t" ] && t=$left
    if [ "$t" -lt 10 ]; then
        part_status "$name" skipped null null null null "$budget" "out of time: ${left}s left before the deadline"
        echo "device_check: $name skipped (out of time)"
        return 1
    fi
    echo "device_check: $name (timeout ${t}s) ..."
    start=$(now_s)
    DEVICE_CHECK_PART_TIMEOUT=$t timeout -k 5 "$t" "$@" >"$LOGS/$name.log" 2>&1 </dev/null
    rc=$?
    end=$(now_s)
    part_status "$name" ran "$rc" "$start" "$end" "$t" "$budget" ""
    echo "device_check: $name rc $rc"
    return "$rc"
}

skip_part() {  # NAME REASON
    part_status "$1" skipped null null null null null "$2"
    echo "device_check: $1 skipped ($2)"
}

venv_ok() {
    [ -x "$VENV/bin/lipsweep" ] && [ -x "$PY" ] && timeout 30 "$PY" -c 'import lipsweep.cli.main, torch' >/dev/null 2>&1
}

# --- facts about the machine, for the JSON -----------------------------------------------------------------
{
    printf '{"started_epoch": %s, "started": "%s", "host": "%s", "nproc": %s, "outdir": "%s", "work_dir": "%s",' \
        "$START" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hostname 2>/dev/null || echo unknown)" "$(nproc 2>/dev/null || echo null)" \
        "$OUTDIR" "$WORK"
    printf ' "cpu_debug": %s, "deadline_s": %s,' "$([ "$CPU_DEBUG" = 1 ] && echo true || echo false)" "$TOTAL"
    printf ' "calibrate_device": "%s",' "$([ "$CPU_DEBUG" = 1 ] && echo cpu || echo cuda)"
    printf ' "git_commit": "%s",' "$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    printf ' "nvidia_smi": ['
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv,noheader 2>/dev/null \
            | head -8 | sed 's/"/\\"/g; s/.*/"&"/' | paste -sd, -
    fi
    printf ']}\n'
} >"$WORK/meta.json"

# --- venv --------------------------------------------------------------------------------------------------
if venv_ok; then
    skip_part venv "present: .venv imports lipsweep and torch"
elif [ "$CPU_DEBUG" = 1 ]; then
    skip_part venv "cpu debug: the venv is never created or changed"
else
    run_part venv 110 bash -c '
        set -u
        venv=$1
        if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sys" >/dev/null 2>&1; then
            rm -rf "$venv"  # a copy whose interpreter link points at another machine
            python3 -m venv --system-site-packages "$venv" || exit 10
        fi
        pip=("$venv/bin/pip" install --disable-pip-version-check --retries 2 --timeout 15)
        "${pip[@]}" -e ".[test]" && exit 0
        echo "device_check: retrying without build isolation (offline: setuptools from the system site-packages)"
        "${pip[@]}" --no-build-isolation -e ".[test]"' _ "$VENV"
fi
if [ -x "$PY" ] && "$PY" -c 'import sys' >/dev/null 2>&1; then
    ASSEMBLE_PY=$PY
else
    ASSEMBLE_PY=python3
fi

# --- probe -------------------------------------------------------------------------------------------------
CUDA=0
run_part probe 20 "$PY" "$DC" probe --out "$WORK/probe.json"
if [ -f "$WORK/probe.json" ] && "$ASSEMBLE_PY" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("cuda_available") else 1)' \
        "$WORK/probe.json" 2>/dev/null; then
    CUDA=1
fi

if [ "$CPU_DEBUG" = 1 ]; then
    DEBUG=(--cpu-only)
else
    DEBUG=()
fi

# --- (a) the sweep: 4 trials on one GPU through Ray ---------------------------------------------------------
if [ "$CUDA" = 1 ] || [ "$CPU_DEBUG" = 1 ]; then
    run_part sweep 90 "$PY" "$DC" sweep --work "$WORK" --out "$WORK/sweep.json" --timeout 80 ${DEBUG[@]+"${DEBUG[@]}"}
else  # what works without CUDA in torch: the same sweep on the CPUs, labelled so
    run_part sweep 90 "$PY" "$DC" sweep --work "$WORK" --out "$WORK/sweep.json" --timeout 80 --cpu-only
fi

# --- (d) one chain: CPU vs CUDA, deterministic off / on, repeats --------------------------------------------
if [ "$CPU_DEBUG" = 1 ]; then
    run_part platform 90 "$PY" "$DC" platform --work "$WORK" --out "$WORK/platform.json" --timeout 80 \
        --cpu-only --width 8 --iters 30 --levels 2 --jobs 1
elif [ "$CUDA" = 1 ]; then
    run_part platform 90 "$PY" "$DC" platform --work "$WORK" --out "$WORK/platform.json" --timeout 80
else
    skip_part platform "torch.cuda.is_available() is False (see probe)"
fi

# --- (b) calibration of cuda into a copy of the table -------------------------------------------------------
cp lipsweep/data/calibration.json "$OUTDIR/calibration.json" 2>/dev/null || true
if [ "$CPU_DEBUG" = 1 ]; then
    run_part calibrate 70 "$PY" benchmarks/calibrate.py --devices cpu --merge --out "$OUTDIR/calibration.json" \
        --sizes 64 96 128 --widths 8 16 --rounds 1 --budget 0.2
elif [ "$CUDA" = 1 ]; then
    run_part calibrate 70 "$PY" benchmarks/calibrate.py --devices cuda --merge --out "$OUTDIR/calibration.json" \
        --sizes 64 128 256 512 --widths 16 32 64 128 --rounds 2 --budget 1.0
else
    skip_part calibrate "torch.cuda.is_available() is False (see probe)"
fi

# --- (c) batched seeds on the GPU -------------------------------------------------------------------------
if [ "$CPU_DEBUG" = 1 ]; then
    run_part gpu_seeds 85 "$PY" benchmarks/gpu_seeds.py --cpu --ks 1 2 --size 64 --width 8 --iters 5 --repeats 1 \
        --quality-seeds 2 --out "$WORK/gpu_seeds.json"
elif [ "$CUDA" = 1 ]; then
    run_part gpu_seeds 85 "$PY" benchmarks/gpu_seeds.py --ks 1 4 8 --size 256 512 --iters 25 --repeats 2 \
        --quality-iters 100 --quality-seeds 4 --out "$WORK/gpu_seeds.json"
else
    skip_part gpu_seeds "torch.cuda.is_available() is False (see probe)"
fi

# --- the one JSON --------------------------------------------------------------------------------------------
"$ASSEMBLE_PY" "$DC" assemble --work "$WORK" --out "$OUTDIR/device_check.json"
rc=$?  # 0: every check passed; 1: one failed or was skipped (the JSON says which)
if [ ! -s "$OUTDIR/device_check.json" ]; then  # the assembly itself failed: the parts' raw statuses instead
    rc=2
    {
        printf '{"check": "benchmarks/device_check.sh (issue 24)", "assemble_failed": true, "parts_raw": ['
        cat "$WORK"/parts/*.json 2>/dev/null | paste -sd, -
        printf ']}\n'
    } >"$OUTDIR/device_check.json"
fi
if [ "${DEVICE_CHECK_KEEP:-0}" = 1 ]; then
    echo "device_check: scratch kept in $WORK"
else
    rm -rf "$WORK"
fi
echo "device_check: $(( $(date +%s) - START )) s in all; results in $OUTDIR/device_check.json"
exit "$rc"
