#!/usr/bin/env bash
# Launch a deepgen experiment on a plain GPU host reachable by ssh.
#
#   HOST=me@gpu-box launch/gpu.sh all -- --config.train.steps=2000
#   DRY_RUN=1 HOST=me@gpu-box launch/gpu.sh all     # print the commands, run nothing
#
# Subcommands: sync setup run logs tensorboard copy stop all (= sync setup run logs).
# Arguments after `--` go to the experiment. The workdir lives on the host
# (REMOTE_DIR/runs/RUN_NAME); rerunning `run` resumes from its checkpoint.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/gpu.sh [--dry-run] SUBCOMMAND [-- EXPERIMENT_ARGS...]
subcommands: sync setup run logs tensorboard copy stop all
settings (environment):
  HOST        ssh destination, e.g. me@gpu-box (required)
  REMOTE_DIR  checkout on the host, relative to its home  [deepgen]
  RUN_NAME    workdir is REMOTE_DIR/runs/RUN_NAME         [gan_mnist]
  EXPERIMENT  python module to run                        [experiments.gan_mnist]
  DATA_SOURCE the run's --config.data.source             [download]
              (download: the full dataset, pinned sha256)
  PYTHON      python on the host used to make the venv    [python3]
  DEST        local folder for `copy`                     [runs]
  TB_PORT     TensorBoard port, forwarded to localhost    [6006]
  DRY_RUN     1: print every command, one per line, execute nothing [0]
USAGE
}

die() { echo "gpu.sh: error: $*" >&2; exit 2; }

DRY_RUN=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 1 ]] || { usage >&2; die "missing SUBCOMMAND"; }
case $1 in -h|--help) usage; exit 0 ;; esac
CMD=$1; shift
if [[ ${1:-} == -- ]]; then shift; fi
EXP_ARGS=("$@")

HOST=${HOST:-}
REMOTE_DIR=${REMOTE_DIR:-deepgen}
RUN_NAME=${RUN_NAME:-gan_mnist}
EXPERIMENT=${EXPERIMENT:-experiments.gan_mnist}
DATA_SOURCE=${DATA_SOURCE:-download}
PYTHON=${PYTHON:-python3}
DEST=${DEST:-runs}
TB_PORT=${TB_PORT:-6006}

case $CMD in
  sync|setup|run|logs|tensorboard|copy|stop|all) ;;
  *) usage >&2; die "unknown subcommand '$CMD'" ;;
esac
[[ -n $HOST ]] || die "HOST is not set (export HOST=user@gpu-host)"
[[ $HOST =~ ^[A-Za-z0-9_.@-]+$ ]] || die "bad HOST '$HOST' (an ssh destination like user@host)"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9_./-]+$ ]] || die "bad REMOTE_DIR '$REMOTE_DIR'"
[[ $RUN_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "bad RUN_NAME '$RUN_NAME' (letters, digits, . _ -)"
[[ $EXPERIMENT =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "bad EXPERIMENT '$EXPERIMENT' (a module name)"
case $DATA_SOURCE in
  auto|dir|download|tfds|embedded) ;;
  *) die "bad DATA_SOURCE '$DATA_SOURCE' (auto, dir, download, tfds or embedded)" ;;
esac
[[ $TB_PORT =~ ^[0-9]+$ ]] || die "bad TB_PORT '$TB_PORT'"
[[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "bad DRY_RUN '$DRY_RUN' (0 or 1)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKDIR=runs/$RUN_NAME   # relative to REMOTE_DIR on the host
LOG=$WORKDIR.log
PID=$WORKDIR.pid

sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else sq "$1"; fi
}
show() { local w out=""; for w in "$@"; do out+="$(quote "$w") "; done; printf '%s\n' "${out% }"; }
x() {
  if [[ $DRY_RUN == 1 ]]; then show "$@"; else show "$@" | sed 's/^/+ /' >&2; "$@"; fi
}
on_host() { local remote=$1; shift; x ssh "$@" "$HOST" "cd $REMOTE_DIR && $remote"; }

do_sync() {
  x ssh "$HOST" "mkdir -p $REMOTE_DIR"
  x rsync -az --delete --exclude=.git/ --exclude=.venv/ --exclude=runs/ --exclude=__pycache__/ \
    "$ROOT/" "$HOST:$REMOTE_DIR/"
}

do_setup() {
  on_host "(test -x .venv/bin/python || $PYTHON -m venv .venv) && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e \".[gpu]\""
}

do_run() {
  local args="" a
  for a in "${EXP_ARGS[@]}"; do args+=" $(quote "$a")"; done
  # The full dataset, not the embedded sample: a host without network fails instead of training
  # on 5,000 digits. An explicit --config.data.source among the arguments wins.
  [[ " ${EXP_ARGS[*]} " == *" --config.data.source="* ]] || args+=" --config.data.source=$DATA_SOURCE"
  # Detached so a dropped connection does not stop training; rerunning resumes from WORKDIR.
  on_host "mkdir -p runs && setsid nohup .venv/bin/python -m $EXPERIMENT --workdir $WORKDIR$args >> $LOG 2>&1 < /dev/null & echo \$! > $PID; echo started $EXPERIMENT, log $REMOTE_DIR/$LOG"
}

do_logs() { on_host "tail -n +1 -F $LOG" -t; }

do_tensorboard() {
  echo "TensorBoard: http://localhost:$TB_PORT" >&2
  on_host ".venv/bin/tensorboard --logdir $WORKDIR --port $TB_PORT" -L "$TB_PORT:localhost:$TB_PORT"
}

do_copy() { x mkdir -p "$DEST/$RUN_NAME"; x rsync -az "$HOST:$REMOTE_DIR/$WORKDIR/" "$DEST/$RUN_NAME/"; }

# SIGTERM: the loop finishes its step, saves a checkpoint and exits.
do_stop() { on_host "kill -TERM \$(cat $PID) && echo sent SIGTERM to \$(cat $PID)"; }

case $CMD in
  all) do_sync; do_setup; do_run; do_logs ;;
  *) "do_$CMD" ;;
esac
