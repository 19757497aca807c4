"""Reads bundles' accelerate configs the way `accelerate launch` does, without GPUs: the
launcher's own checks of the file and its flags, the environment it would give each process,
and the DeepSpeed or FSDP plugin built from that environment as each process would build it.

    python validate_configs.py BUNDLE...

Prints one line per bundle; exits non-zero at the first config accelerate rejects.
"""
import os
import sys
from unittest import mock

from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env


def validate(bundle):
    config = os.path.join(bundle, "accelerate.json")
    args = launch_command_parser().parse_args(["--config_file", config, os.path.join(bundle, "train.py"), bundle])
    # The launcher counts the GPUs it would start processes on; there are none here.
    with mock.patch("torch.cuda.device_count", return_value=args.num_processes or 1):
        args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        # As launch_command() sets it before starting DeepSpeed's launcher.
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()
        return f"deepspeed zero stage {plugin.zero_stage}, {args.num_processes} processes"
    if args.use_fsdp:
        env = prepare_multi_gpu_env(args)
        # Each process would find its GPU; FSDP refuses the CPU as the device weights go to.
        gpu = mock.patch("accelerate.utils.dataclasses.get_torch_accelerator_backend", return_value=("cuda", None))
        with mock.patch.dict(os.environ, env), gpu:
            plugin = FullyShardedDataParallelPlugin()
        wrap = getattr(plugin.auto_wrap_policy, "__name__", plugin.auto_wrap_policy)
        return f"fsdp {plugin.sharding_strategy}, wrap {wrap}, {args.num_processes} processes"
    return f"{'multi-process' if args.multi_gpu else 'one process'}, {args.num_processes} processes"


for bundle in sys.argv[1:]:
    print(f"{bundle}: accelerate reads it: {validate(bundle)}")
