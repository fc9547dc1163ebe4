#!/usr/bin/env bash
# Launch a deepgen experiment on a Cloud TPU VM slice (every host runs the same command).
#
#   PROJECT=my-proj BUCKET=my-bucket launch/tpu.sh all -- --config.train.steps=2000
#   DRY_RUN=1 PROJECT=p BUCKET=b launch/tpu.sh all     # print the gcloud sequence, run nothing
#
# Subcommands: create setup run logs tensorboard copy status delete all (= create setup run logs).
# Arguments after `--` go to the experiment (`python -m $EXPERIMENT --workdir ... ARGS`).
# See launch/README.md for the walk-through, preemption/resume and costs.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/tpu.sh [--dry-run] SUBCOMMAND [-- EXPERIMENT_ARGS...]
subcommands: create setup run logs tensorboard copy status delete all
settings (environment):
  PROJECT           Google Cloud project (required)
  ZONE              zone with the capacity you want       [us-central2-b]
  TPU_NAME          TPU VM (and queued-resource) name     [deepgen-tpu]
  ACCELERATOR_TYPE  e.g. v4-8 (1 host), v4-16 (2 hosts)   [v4-16]
  VERSION           TPU software version                  [tpu-ubuntu2204-base]
  SPOT              1: spot capacity (preemptible)         [0]
  QUEUED            1: create through a queued resource    [0]
  VALID_UNTIL       queued request expiry (with QUEUED=1)  [6h]
  BUCKET            gs bucket (no gs://) for the workdir   (required by run/tensorboard/copy/all)
  RUN_NAME          workdir is gs://BUCKET/runs/RUN_NAME   [TPU_NAME]
  EXPERIMENT        python module to run                  [experiments.gan_mnist]
  DATA_SOURCE       the run's --config.data.source        [download]
                    (download: the full dataset on each host, pinned sha256)
  REPO              git URL to clone on the workers; empty: copy this checkout (git archive REF)
  REF               branch/commit to deploy                [HEAD for a copy, main for a clone]
  DEST              local folder for `copy`                [runs]
  TB_PORT           TensorBoard port                       [6006]
  TB_REMOTE         1: run TensorBoard on worker 0 and forward the port [0]
  DRY_RUN           1: print every command, one per line, execute nothing [0]
USAGE
}

die() { echo "tpu.sh: error: $*" >&2; exit 2; }

DRY_RUN=${DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
[[ $# -ge 1 ]] || { usage >&2; die "missing SUBCOMMAND"; }
case $1 in -h|--help) usage; exit 0 ;; esac
CMD=$1; shift
if [[ ${1:-} == -- ]]; then shift; fi
EXP_ARGS=("$@")

PROJECT=${PROJECT:-}
ZONE=${ZONE:-us-central2-b}
TPU_NAME=${TPU_NAME:-deepgen-tpu}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-16}
VERSION=${VERSION:-tpu-ubuntu2204-base}
SPOT=${SPOT:-0}
QUEUED=${QUEUED:-0}
VALID_UNTIL=${VALID_UNTIL:-6h}
BUCKET=${BUCKET:-}
RUN_NAME=${RUN_NAME:-$TPU_NAME}
EXPERIMENT=${EXPERIMENT:-experiments.gan_mnist}
DATA_SOURCE=${DATA_SOURCE:-download}
REPO=${REPO:-}
DEST=${DEST:-runs}
TB_PORT=${TB_PORT:-6006}
TB_REMOTE=${TB_REMOTE:-0}
if [[ -n $REPO ]]; then REF=${REF:-main}; else REF=${REF:-HEAD}; fi

# --- validation: every problem is reported before any gcloud call -------------------------------
case $CMD in
  create|setup|run|logs|tensorboard|copy|status|delete|all) ;;
  *) usage >&2; die "unknown subcommand '$CMD'" ;;
esac
[[ -n $PROJECT ]] || die "PROJECT is not set (export PROJECT=your-gcp-project)"
[[ $ACCELERATOR_TYPE =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] \
  || die "bad ACCELERATOR_TYPE '$ACCELERATOR_TYPE' (expected e.g. v4-8, v4-16, v5litepod-16)"
[[ $TPU_NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] \
  || die "bad TPU_NAME '$TPU_NAME' (lowercase letters, digits and '-', starting with a letter)"
[[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "bad ZONE '$ZONE' (expected e.g. us-central2-b)"
[[ $SPOT == 0 || $SPOT == 1 ]] || die "bad SPOT '$SPOT' (0 or 1)"
[[ $QUEUED == 0 || $QUEUED == 1 ]] || die "bad QUEUED '$QUEUED' (0 or 1)"
[[ $TB_REMOTE == 0 || $TB_REMOTE == 1 ]] || die "bad TB_REMOTE '$TB_REMOTE' (0 or 1)"
[[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "bad DRY_RUN '$DRY_RUN' (0 or 1)"
[[ $VALID_UNTIL =~ ^[0-9]+[smhd]$ ]] || die "bad VALID_UNTIL '$VALID_UNTIL' (e.g. 30m, 6h, 2d)"
[[ $RUN_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "bad RUN_NAME '$RUN_NAME' (letters, digits, . _ -)"
[[ $EXPERIMENT =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "bad EXPERIMENT '$EXPERIMENT' (a module name)"
case $DATA_SOURCE in
  auto|dir|download|tfds|embedded) ;;
  *) die "bad DATA_SOURCE '$DATA_SOURCE' (auto, dir, download, tfds or embedded)" ;;
esac
[[ $TB_PORT =~ ^[0-9]+$ ]] || die "bad TB_PORT '$TB_PORT'"
case $CMD in
  run|tensorboard|copy|all)
    [[ -n $BUCKET ]] || die "BUCKET is not set (the workdir is gs://BUCKET/runs/RUN_NAME)"
    [[ $BUCKET =~ ^[a-z0-9][-a-z0-9_.]*[a-z0-9]$ ]] \
      || die "bad BUCKET '$BUCKET' (a bucket name without gs://)" ;;
esac

WORKDIR="gs://$BUCKET/runs/$RUN_NAME"
# shellcheck disable=SC2016  # $HOME is expanded on the workers, not here
REMOTE_DIR='$HOME/deepgen'
LOG="\$HOME/deepgen-$RUN_NAME.log"  # one log per worker; worker 0's is the one that talks
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GC=(--zone="$ZONE" --project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)

# --- execution: print (DRY_RUN=1) or echo and run -----------------------------------------------
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
quote() {  # shell-quote one word, leaving plain words (and --flag=) readable
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  elif [[ $1 =~ ^(--[a-z-]+=)(.*)$ ]]; then printf '%s' "${BASH_REMATCH[1]}"; sq "${BASH_REMATCH[2]}"
  else sq "$1"; fi
}
show() { local w out=""; for w in "$@"; do out+="$(quote "$w") "; done; printf '%s\n' "${out% }"; }
x() {
  if [[ $DRY_RUN == 1 ]]; then show "$@"; else show "$@" | sed 's/^/+ /' >&2; "$@"; fi
}
ssh_all() { x "${TPU[@]}" ssh "$TPU_NAME" "${GC[@]}" --worker=all --command="$1"; }
ssh0() { x "${TPU[@]}" ssh "$TPU_NAME" "${GC[@]}" --worker=0 "${@:2}" --command="$1"; }

# --- subcommands --------------------------------------------------------------------------------
do_create() {
  local spot=(); [[ $SPOT == 1 ]] && spot=(--spot)
  if [[ $QUEUED == 1 ]]; then
    x "${QR[@]}" create "$TPU_NAME" --node-id="$TPU_NAME" "${GC[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION" "${spot[@]}" \
      --valid-until-duration="$VALID_UNTIL"
    # The request waits in a queue; the VM exists only once its state is ACTIVE.
    local state
    while :; do
      state=$(x "${QR[@]}" describe "$TPU_NAME" "${GC[@]}" --format='value(state.state)')
      [[ $DRY_RUN == 1 ]] && { echo "$state"; break; }
      echo "queued resource $TPU_NAME: $state" >&2
      case $state in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $TPU_NAME is $state" ;;
      esac
      sleep 30
    done
  else
    x "${TPU[@]}" create "$TPU_NAME" "${GC[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" "${spot[@]}"
  fi
}

do_setup() {
  local fetch
  if [[ -n $REPO ]]; then
    fetch="rm -rf $REMOTE_DIR && git clone --quiet $(quote "$REPO") $REMOTE_DIR"
    fetch+=" && git -C $REMOTE_DIR checkout --quiet $(quote "$REF")"
  else
    # This checkout's committed tree at REF, the same tarball on every worker.
    local tarball=/tmp/deepgen-$RUN_NAME.tar.gz
    x git -C "$ROOT" archive --format=tar.gz --output="$tarball" "$REF"
    x "${TPU[@]}" scp "$tarball" "$TPU_NAME:deepgen.tar.gz" "${GC[@]}" --worker=all
    fetch="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf \$HOME/deepgen.tar.gz -C $REMOTE_DIR"
  fi
  # python3-venv is not on the base image; jax[tpu] brings libtpu.
  ssh_all "set -e; dpkg -s python3-venv >/dev/null 2>&1 || (sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv); $fetch; python3 -m venv $REMOTE_DIR/.venv; $REMOTE_DIR/.venv/bin/pip install -q -U pip; cd $REMOTE_DIR && .venv/bin/pip install -q -e \".[tpu]\""
}

do_run() {
  local args="" a
  for a in "${EXP_ARGS[@]}"; do args+=" $(quote "$a")"; done
  # The full dataset, not the embedded sample: a host without network fails instead of training
  # on 5,000 digits. An explicit --config.data.source among the arguments wins.
  [[ " ${EXP_ARGS[*]} " == *" --config.data.source="* ]] || args+=" --config.data.source=$DATA_SOURCE"
  # Every worker runs the same program; DEEPGEN_DISTRIBUTED=1 makes each call
  # jax.distributed.initialize(), which finds its peers from the TPU VM metadata.
  # Detached (setsid nohup) so a dropped ssh does not kill the run; rerunning resumes.
  ssh_all "cd $REMOTE_DIR && DEEPGEN_DISTRIBUTED=1 setsid nohup .venv/bin/python -m $EXPERIMENT --workdir $WORKDIR$args >> $LOG 2>&1 < /dev/null & echo started $EXPERIMENT on \$(hostname), log $LOG"
}

do_logs() { ssh0 "tail -n +1 -F $LOG"; }

do_tensorboard() {
  if [[ $TB_REMOTE == 1 ]]; then
    ssh0 "$REMOTE_DIR/.venv/bin/tensorboard --logdir $WORKDIR --port $TB_PORT" \
      --ssh-flag="-L $TB_PORT:localhost:$TB_PORT"
  else
    x tensorboard --logdir "$WORKDIR" --port "$TB_PORT"
  fi
}

do_copy() { x mkdir -p "$DEST"; x gcloud storage cp -r "$WORKDIR" "$DEST/"; }

do_status() {
  [[ $QUEUED == 1 ]] && x "${QR[@]}" describe "$TPU_NAME" "${GC[@]}"
  x "${TPU[@]}" describe "$TPU_NAME" "${GC[@]}"
}

do_delete() {
  if [[ $QUEUED == 1 ]]; then
    x "${QR[@]}" delete "$TPU_NAME" "${GC[@]}" --force --quiet
  else
    x "${TPU[@]}" delete "$TPU_NAME" "${GC[@]}" --quiet
  fi
}

case $CMD in
  all) do_create; do_setup; do_run; do_logs ;;
  *) "do_$CMD" ;;
esac
