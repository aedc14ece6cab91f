"""The distributed path, executed (issue 16). A paper command line (`python -m hvr_nbs.taxonrl`, zero-shot and GRPO at a tiny size)
runs under `accelerate launch` with two CPU processes (DDP over gloo): it trains, evaluates on rank 0 only and writes one set of
tables, consistent with a single-process run of the same seed and global batch. The shipped DeepSpeed ZeRO-3 and FSDP accelerate
configs load and validate through accelerate's own launcher and plugin classes (DeepSpeed itself need not be installed).

Two CPU processes need `accelerate launch --multi_gpu --num_processes 2`: accelerate's launcher is torchrun's then, and the
trainer's `use_cpu` makes each process a gloo CPU rank. `accelerate launch --cpu --num_processes 2` starts ONE process unless
MPI is set up (`--mpirun_hostfile`): accelerate's simple launcher."""
import json, os, socket, subprocess, sys
from pathlib import Path
from unittest import mock
import numpy as np
import pandas as pd
import pytest

# The same global batch both ways: 4 completions (2 prompts x 2 generations) per optimiser step
ARGS = ["--profile", "smoke", "--methods", "zero-shot,grpo", "--seeds", "0", "--steps", "2", "--n-eval", "4",
        "--set", "train__num_generations=2", "--set", "train__max_completion_length=16", "--set", "eval__max_new_tokens=16",
        "--set", "train__sft_steps=2"]
TABLES = ("results.csv", "train_logs.csv", "table1_accuracy.csv", "table3_lengths.csv")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "The command line once in one process (per-device batch 4) and once under accelerate with two processes (2 each)."
    tmp = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1", HF_HOME=str(tmp/"hf"),  # no user accelerate config is read
               HVR_CACHE=os.environ.get("HVR_CACHE") or str(tmp/"cache"))
    env.pop("HVR_RUNS", None)
    single = subprocess.run([sys.executable, "-m", "hvr_nbs.taxonrl", *ARGS, "--out", str(tmp/"single"),
                             "--set", "train__per_device_batch=4"], env=env, capture_output=True, text=True, timeout=1200)
    assert single.returncode == 0, single.stderr[-3000:]
    accelerate = Path(sys.executable).parent/"accelerate"
    ddp = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                          "-m", "hvr_nbs.taxonrl", *ARGS, "--out", str(tmp/"ddp"), "--set", "train__per_device_batch=2"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return dict(single=(tmp/"single", single), ddp=(tmp/"ddp", ddp))


@pytest.mark.slow
def test_two_processes_train_evaluate_once_and_write_one_set_of_tables(runs):
    out, r = runs["ddp"]
    assert [l.split()[0] for l in r.stdout.splitlines() if l.strip()].count("method") == 1  # the table was printed once: by rank 0
    for t in TABLES: assert (out/t).exists(), t
    assert json.loads((out/"manifest.json").read_text())["experiment"] == "taxonrl-cli"
    assert (out/"grpo-s0"/"model"/"model.safetensors").exists()  # the distributed path: saved once, evaluated from it on rank 0
    assert not (runs["single"][0]/"grpo-s0"/"model").exists()
    res = pd.read_csv(out/"results.csv")
    assert res.groupby("method").size().to_dict() == {"grpo": 4, "zero-shot": 4}  # each evaluation item once
    assert pd.read_csv(out/"grpo-s0"/"completions.csv").shape[0] == 4


@pytest.mark.slow
def test_two_processes_agree_with_one_process(runs):
    "Same tables and columns; the untrained start identical cell by cell; GRPO on the same items, schedule and global batch."
    a_dir, b_dir = runs["single"][0], runs["ddp"][0]
    ls = lambda d: sorted(p.name for p in d.iterdir() if p.suffix == ".csv")
    assert ls(a_dir) == ls(b_dir)
    probe = lambda cols: [c for c in cols if not c.startswith("held-out/")]  # the held-out probe runs in one process only (runs.train_and_evaluate)
    for t in TABLES:
        a, b = pd.read_csv(a_dir/t), pd.read_csv(b_dir/t)
        assert probe(a.columns) == probe(b.columns), t
    for t in ("table1_accuracy.csv", "table3_lengths.csv"):  # same rows (methods) in the same order
        assert pd.read_csv(a_dir/t).iloc[:, 0].tolist() == pd.read_csv(b_dir/t).iloc[:, 0].tolist(), t
    a, b = pd.read_csv(a_dir/"results.csv"), pd.read_csv(b_dir/"results.csv")
    pd.testing.assert_frame_equal(a[a.method == "zero-shot"].reset_index(drop=True), b[b.method == "zero-shot"].reset_index(drop=True))
    items = ["method", "seed", "idx", "prompt", "label", "stratum"]
    pd.testing.assert_frame_equal(a[items], b[items])  # the trained model is scored on the same items
    la, lb = (pd.read_csv(d/"train_logs.csv").dropna(subset=["loss"]).reset_index(drop=True) for d in (a_dir, b_dir))
    assert la.step.tolist() == lb.step.tolist() == [1, 2]
    np.testing.assert_allclose(la.learning_rate, lb.learning_rate)  # the same schedule
    np.testing.assert_allclose(la.epoch, lb.epoch)  # the same share of the data per step: the 2 ranks split one global batch
    assert np.isfinite(lb.loss).all() and np.isfinite(lb.grad_norm).all()
    ratio = lb.num_tokens / la.num_tokens  # rollouts are sampled on each rank's own RNG stream: same prompts, other completions
    assert ((ratio > 0.5) & (ratio < 2)).all(), ratio.tolist()


def _launch_env(path, kind):
    "The environment `accelerate launch --config_file path` gives its processes."
    from accelerate.commands.launch import launch_command_parser, _validate_launch_command, prepare_multi_gpu_env, prepare_deepspeed_cmd_env
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(path), "train.py"]))
    if kind == "zero3":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as `launch_command` sets it
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_shipped_zero3_and_fsdp_configs_validate_through_accelerate(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType, DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from hvr_nbs.taxonrl import main
    paths = main(["--write-accelerate-configs", str(tmp_path), "--num-processes", "8"])  # what the command line ships
    c = {k: load_config_from_file(str(p)) for k, p in paths.items()}
    assert (c["zero3"].distributed_type, c["fsdp"].distributed_type) == (DistributedType.DEEPSPEED, DistributedType.FSDP)
    assert c["zero3"].num_processes == c["fsdp"].num_processes == 8 and c["zero3"].mixed_precision == "bf16"
    args, env = _launch_env(paths["zero3"], "zero3")
    assert args.use_deepspeed and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    with mock.patch.dict(os.environ, env):
        ds = DeepSpeedPlugin()  # built from the launcher's environment, as in each process; needs no deepspeed install
    assert ds.zero_stage == 3 and ds.zero3_init_flag and ds.zero3_save_16bit_model
    assert ds.deepspeed_config["zero_optimization"]["stage"] == 3 and ds.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    args, env = _launch_env(paths["fsdp"], "fsdp")
    assert args.use_fsdp and env["FSDP_VERSION"] == "2"
    with mock.patch.dict(os.environ, env):
        fsdp = FullyShardedDataParallelPlugin()
    assert fsdp.fsdp_version == 2 and fsdp.reshard_after_forward is True and fsdp.cpu_ram_efficient_loading
    assert fsdp.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy" and fsdp.state_dict_type.name == "FULL_STATE_DICT"
    bad = dict(env, FSDP_STATE_DICT_TYPE="NO_SUCH_TYPE")  # the same check fails on a config accelerate would refuse
    with mock.patch.dict(os.environ, bad), pytest.raises((ValueError, KeyError)):
        FullyShardedDataParallelPlugin()
