#!/bin/sh
# Starts this bundle's job: a PEFT Studio run for accelerate (transformers + PEFT).
#   PYTHON             the Python with torch, transformers, peft and accelerate (python3)
#   PEFT_STUDIO_MODEL  the base model's folder on this machine (job.json's path by default)
#   MAIN_PROCESS_PORT  the processes' rendezvous port (accelerate's default)
# Arguments go to the entry point: --resume continues from out/checkpoints.
# Full paths, so that `ps` shows which bundle each process trains.
cd "$(dirname "$0")" || exit 1
exec "${PYTHON:-python3}" -m accelerate.commands.launch --config_file "$PWD/accelerate.json" \
  ${MAIN_PROCESS_PORT:+--main_process_port "$MAIN_PROCESS_PORT"} "$PWD/train.py" "$PWD" "$@"
