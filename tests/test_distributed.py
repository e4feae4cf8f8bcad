"""Issue 11: distributed data-parallel training (torchrun), on CPU with gloo over loopback.

Two processes train one model on the tiny synthetic dataset: both hold identical weights at the end, rank 0 alone
writes, validation covers the whole split, the checkpoint loads, evaluates and exports like a single-process one,
a run is repeatable and resumes exactly, a process that dies ends the run with a one-line error and nothing
half-written, and a launch without torchrun's environment is a one-line error. The sampler and the collectives
are checked on their own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import kws.train.batches as train_data
import kws.train.distributed as kd
import kws.train.loop as train_module
from kws.cli import main
from kws.errors import KWSError
from kws.model.checkpoint import WEIGHTS_KEY, load_checkpoint, model_from_checkpoint, run_config
from kws.train.distributed import ShardedSampler
from kws.train.launch import ENV_VARS, Launch, read_environment
from kws.train.run_folder import OUTPUTS
from support.tiny import tiny_run_config

WORKER_TIMEOUT_S = 300
SINGLE_PROCESS_KEYS = {
    "format",
    "version",
    "kws_version",
    "config",
    "labels",
    WEIGHTS_KEY,
    "train_model",
    "optimizer",
    "scheduler",
    "epoch",
    "step",
    "best_accuracy",
    "history",
    "data_summary",
    "world_size",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "GLOO_SOCKET_IFNAME": "lo",
    }


def _train_worker(rank: int, world: int, port: int, job: dict) -> None:
    """One rank of a distributed ``kws.train.loop.train`` (run in a spawned process, torchrun's environment set by
    hand). Writes ``rankN.json`` (its outcome) and ``rankN.pt`` (its weights after every epoch) to job["results"]."""
    os.environ.update(_loopback_env(rank, world, port))
    results = Path(job["results"])
    real_check = kd.Context.check_replicas

    def check_and_keep(self, what, *modules):
        real_check(self, what, *modules)
        torch.save([m.state_dict() for m in modules], results / f"rank{rank}.pt")

    kd.Context.check_replicas = check_and_keep
    if job.get("die_at_epoch") is not None and rank == 1:
        real_batches = train_data.epoch_batches

        def dying(data, augmenter, sampler, config, epoch, in_process):
            if epoch == job["die_at_epoch"]:
                os._exit(3)  # killed: no exception, no clean-up
            return real_batches(data, augmenter, sampler, config, epoch, in_process)

        train_data.epoch_batches = dying
    outcome: dict = {"rank": rank}
    try:
        train_module.train(job["config"], Path(job["out"]), resume=job.get("resume", False), threads=1)
        outcome["status"] = "ok"
    except KWSError as exc:
        outcome["status"], outcome["error"] = "error", str(exc)
    except SystemExit as exc:
        outcome["status"], outcome["code"] = "exit", exc.code
    (results / f"rank{rank}.json").write_text(json.dumps(outcome))


def _launch(target, world: int, job: dict) -> list[int | None]:
    """Run ``target(rank, world, port, job)`` in ``world`` spawned processes; their exit codes."""
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, world, port, job)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WORKER_TIMEOUT_S)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail(f"a distributed worker hung for {WORKER_TIMEOUT_S} s")
    return [p.exitcode for p in procs]


def _train_distributed(config, out: Path, results: Path, **job) -> tuple[list[int | None], list[dict]]:
    results.mkdir(parents=True, exist_ok=True)
    codes = _launch(_train_worker, 2, {"config": config, "out": str(out), "results": str(results), **job})
    outcomes = []
    for rank in range(2):
        path = results / f"rank{rank}.json"
        outcomes.append(json.loads(path.read_text()) if path.is_file() else {"rank": rank, "status": "died"})
    return codes, outcomes


def _ddp_config(full_dataset: Path, workers: int = 0):
    config = tiny_run_config((str(full_dataset),), epochs=2)
    return replace(config, train=replace(config.train, num_workers=workers))


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path) -> dict:
    """A 2-process gloo run of the tiny config (2 epochs), and the same config trained by one process."""
    base = tmp_path_factory.mktemp("ddp")
    codes, outcomes = _train_distributed(_ddp_config(full_dataset), base / "run", base / "results")
    single = base / "single"
    train_module.train(_ddp_config(full_dataset), single, threads=1)
    return {"out": base / "run", "results": base / "results", "codes": codes, "outcomes": outcomes, "single": single}


# ------------------------------------------------------------------------------------------------ launching


def test_no_torchrun_environment_is_a_single_process() -> None:
    assert read_environment({}) == Launch()
    assert read_environment({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) == Launch()  # --nproc_per_node 1
    env = _loopback_env(1, 4, 29500) | {"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert read_environment(env) == Launch(world_size=4, rank=1, local_rank=1, local_world_size=2)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "29500"}, "MASTER_ADDR"),
        ({"WORLD_SIZE": "2"}, "RANK and MASTER_ADDR and MASTER_PORT are not"),
        ({"RANK": "1"}, "WORLD_SIZE is not"),
        ({"LOCAL_RANK": "0"}, "WORLD_SIZE is not"),
        (_loopback_env(0, 2, 29500) | {"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
        (_loopback_env(2, 2, 29500), "RANK=2 is out of range"),
        (_loopback_env(0, 2, 70000), "MASTER_PORT=70000"),
    ],
)
def test_half_a_torchrun_environment_is_refused(env: dict, expected: str) -> None:
    with pytest.raises(KWSError, match="torchrun") as info:
        read_environment(env)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_distributed_flag_needs_torchrun() -> None:
    with pytest.raises(KWSError, match="--distributed needs torchrun's environment"):
        read_environment({}, required=True)


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "29500"}])
def test_bad_launch_is_one_line_on_the_command_line(
    tmp_path: Path, full_dataset: Path, capsys, monkeypatch, env: dict
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["train", "--data", str(full_dataset), "--out", str(tmp_path / "run"), "--max-steps", "1"]
    code = main(argv + (["--distributed"] if not env else []))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "torchrun" in err, err
    assert not (tmp_path / "run").exists()


def test_help_shows_the_torchrun_command(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "torchrun --nproc_per_node N -m kws train" in text and "--workers" in text and "--cache" in text


def test_python_dash_m_kws_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "kws", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("kws "), done.stderr


# ------------------------------------------------------------------------------------------------ sampler


@pytest.mark.parametrize("size, batch, world", [(100, 8, 2), (101, 8, 2), (7, 4, 3), (64, 16, 4), (5, 8, 1)])
def test_sampler_shards_one_shared_permutation(size: int, batch: int, world: int) -> None:
    samplers = [ShardedSampler(size, batch, seed=3, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        order = np.random.default_rng([3, epoch]).permutation(size)
        padded = np.resize(order, -(-size // world) * world)  # repeated at its start to a multiple of world
        per_rank = [s.batches(epoch) for s in samplers]
        assert {len(b) for b in per_rank} == {samplers[0].steps_per_epoch}  # every rank steps alike
        for step in range(samplers[0].steps_per_epoch):
            sizes = {len(b[step]) for b in per_rank}
            assert len(sizes) == 1  # equal batch sizes on every rank
            joined = np.concatenate([b[step] for b in per_rank])  # the global batch: a run of the permutation
            start = step * batch * world
            np.testing.assert_array_equal(joined, padded[start : start + len(joined)])
        seen = np.concatenate([np.concatenate(b) for b in per_rank])
        assert set(seen) == set(range(size)) and len(seen) == len(padded)
        again = [np.concatenate(s.batches(epoch)) for s in samplers]  # drawn again: the same
        assert all(np.array_equal(np.concatenate(a), b) for a, b in zip(per_rank, again, strict=True))
    assert not np.array_equal(samplers[0].batches(0)[0], samplers[0].batches(1)[0])


def test_single_process_sampler_is_the_old_order() -> None:
    sampler = ShardedSampler(50, 16, seed=7)
    order = np.random.default_rng([7, 4]).permutation(50)
    assert sampler.steps_per_epoch == 4
    for b, idx in enumerate(sampler.batches(4)):
        np.testing.assert_array_equal(idx, order[b * 16 : (b + 1) * 16])


def test_rank_seeds_keep_rank_0s_and_differ_per_rank() -> None:
    assert kd.rank_seed(12345, 0) == 12345
    seeds = {kd.rank_seed(s * 100_003 + e, r) for s in (0, 1, 2**32 - 1) for e in (0, 59) for r in range(8)}
    assert len(seeds) == 3 * 2 * 8


# ------------------------------------------------------------------------------------------------ collectives


def _collectives_worker(rank: int, world: int, port: int, job: dict) -> None:
    os.environ.update(_loopback_env(rank, world, port))
    torch.set_num_threads(1)
    results = Path(job["results"])
    outcome: dict = {}
    with kd.session("cpu") as context:
        outcome["backend"] = context.backend
        outcome["sum"] = context.all_sum(np.array([rank + 1.0, 10.0 * rank])).tolist()
        total = 7
        mine = np.arange(total, dtype=np.float32)[rank::world, None] * np.ones((1, 3), np.float32)
        outcome["gathered"] = context.gather_shards(mine, total).tolist()
        outcome["lead"] = context.lead(lambda: f"from rank {context.rank}")
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        context.check_replicas("at the start", model)
        with torch.no_grad():
            if rank == 1:
                model.bias[0] += 1e-6
        try:
            context.check_replicas("after a step", model)
            outcome["mismatch"] = None
        except KWSError as exc:
            outcome["mismatch"] = str(exc)
    (results / f"rank{rank}.json").write_text(json.dumps(outcome))


@pytest.mark.slow
def test_collectives_across_two_processes(tmp_path: Path) -> None:
    codes = _launch(_collectives_worker, 2, {"results": str(tmp_path)})
    assert codes == [0, 0]
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for o in out:
        assert o["backend"] == "gloo"
        assert o["sum"] == [3.0, 10.0]
        assert o["gathered"] == [[float(i)] * 3 for i in range(7)]  # every row, in the original order
        assert o["lead"] == "from rank 0"
        assert "model copies differ after a step (rank 1 vs rank 0)" in o["mismatch"]


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_two_processes_hold_identical_weights(ddp_run: dict) -> None:
    assert ddp_run["codes"] == [0, 0], ddp_run["outcomes"]
    assert [o["status"] for o in ddp_run["outcomes"]] == ["ok", "ok"]
    ranks = [torch.load(ddp_run["results"] / f"rank{r}.pt", weights_only=True) for r in range(2)]
    last = load_checkpoint(ddp_run["out"] / "last.pt")
    for module in range(2):  # the training weights, then their moving average
        for name, tensor in ranks[0][module].items():
            torch.testing.assert_close(ranks[1][module][name], tensor, rtol=0, atol=0)
            saved = last["train_model" if module == 0 else WEIGHTS_KEY][name]
            torch.testing.assert_close(saved, tensor, rtol=0, atol=0)


@pytest.mark.slow
def test_rank_0_alone_writes_a_single_process_checkpoint(ddp_run: dict) -> None:
    out = ddp_run["out"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(OUTPUTS)
    assert _temporaries(out) == []
    single = load_checkpoint(ddp_run["single"] / "best.pt")
    best = load_checkpoint(out / "best.pt")
    assert set(best) == set(single) == SINGLE_PROCESS_KEYS | {"evaluation"}
    assert best["world_size"] == 2 and single["world_size"] == 1
    assert {k: v.shape for k, v in best[WEIGHTS_KEY].items()} == {k: v.shape for k, v in single[WEIGHTS_KEY].items()}
    assert best["config"] == single["config"]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    # 2 processes x 16 clips per step: half the single process's steps, every training clip once per epoch
    single_steps = load_checkpoint(ddp_run["single"] / "last.pt")["step"]
    assert abs(history[-1]["step"] - single_steps / 2) <= 2
    assert all(h["clips_per_second"] > 0 for h in history)


@pytest.mark.slow
def test_validation_covers_the_whole_split(ddp_run: dict, full_dataset: Path) -> None:
    from kws.data.splits import prepare

    model, labels, payload = model_from_checkpoint(ddp_run["out"] / "best.pt")
    config = run_config(payload)
    fc = config.features
    val = prepare(config.data, fc.sample_rate, fc.clip_samples, config.train.seed, ("validation",), labels=labels)
    val = val.splits["validation"]
    accuracy, loss = train_module._accuracy(model, val.audio, val.labels)  # one process, every clip
    record = payload["history"][payload["epoch"] - 1]
    assert record["val_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert record["val_loss"] == pytest.approx(loss, rel=1e-5)  # a shard's mean would differ far more
    half_loss = train_module._accuracy(model, val.audio[::2], val.labels[::2])[1]
    assert half_loss != pytest.approx(loss, rel=1e-5)


@pytest.mark.slow
def test_checkpoint_evaluates_and_exports_like_a_single_process_one(
    ddp_run: dict, full_dataset: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from kws.export.onnx_export import export_clip_model, save_model
    from support.synthetic import synth_clip

    best = ddp_run["out"] / "best.pt"
    code = main(["evaluate", str(best), "--data", str(full_dataset), "--split", "test", "--out", str(tmp_path / "ev")])
    assert code == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    payload = load_checkpoint(best)
    assert report["accuracy"] == pytest.approx(payload["evaluation"]["accuracy"], abs=1e-12)
    assert report["clips"] == payload["evaluation"]["clips"] > 0
    capsys.readouterr()

    model, labels, payload = model_from_checkpoint(best)
    path = tmp_path / "kws.onnx"
    save_model(export_clip_model(model, labels, payload.get("evaluation")), path)
    rng = np.random.default_rng(0)
    clips = np.stack([synth_clip(w, rng) for w in ("yes", "no", "up", "down", None)]).astype(np.float32)
    session = ort.InferenceSession(str(path))
    onnx_scores = session.run(None, {session.get_inputs()[0].name: clips})[0]
    with torch.no_grad():
        torch_scores = torch.softmax(model.classify(torch.from_numpy(clips)), -1).numpy()
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)


@pytest.mark.slow
def test_dead_rank_then_resume_repeats_the_run(ddp_run: dict, full_dataset: Path, tmp_path: Path) -> None:
    """Rank 1 is killed at the start of epoch 2: rank 0 ends with a one-line error, last.pt holds epoch 1 whole;
    resuming with 2 processes (and DataLoader workers, which must not change anything) gives the uninterrupted
    run's weights bit for bit."""
    config = _ddp_config(full_dataset, workers=1)
    out = tmp_path / "run"
    codes, outcomes = _train_distributed(config, out, tmp_path / "killed", die_at_epoch=1)
    assert codes[1] == 3 and outcomes[1]["status"] == "died"
    assert outcomes[0]["status"] == "error", outcomes[0]
    error = outcomes[0]["error"]
    assert "another process of the distributed run stopped" in error and "--resume" in error and "\n" not in error
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert _temporaries(out) == []
    assert not (out / "test.json").exists()

    codes, outcomes = _train_distributed(config, out, tmp_path / "resumed", resume=True)
    assert codes == [0, 0] and [o["status"] for o in outcomes] == ["ok", "ok"], outcomes
    a, b = load_checkpoint(ddp_run["out"] / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key in (WEIGHTS_KEY, "train_model"):
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=0, atol=0)


@pytest.mark.slow
def test_rank_0s_startup_error_ends_every_rank(ddp_run: dict, tmp_path: Path) -> None:
    """Training anew into a folder that holds a run: rank 0 (which alone checks and locks the folder) fails with
    the usual one-line error, and the other rank leaves quietly instead of waiting for it."""

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in ddp_run["out"].iterdir() if p.is_file() and p.name != ".lock"}

    before = files()
    config = run_config(load_checkpoint(ddp_run["out"] / "last.pt"))
    codes, outcomes = _train_distributed(config, ddp_run["out"], tmp_path / "results")
    assert outcomes[0]["status"] == "error" and "already holds a run" in outcomes[0]["error"], outcomes
    assert outcomes[1] == {"rank": 1, "status": "exit", "code": 2}
    assert codes == [0, 0]  # the workers themselves returned (their outcomes say how)
    assert files() == before


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_refused(ddp_run: dict, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ddp_run["out"], run)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(KWSError, match=r"trained by 2 process\(es\) and this run has 1"):
        train_module.train(None, run, resume=True)  # type: ignore[arg-type]
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_a_single_process_initialises_nothing_distributed(full_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a single process must not join a process group")

    monkeypatch.setattr(torch.distributed, "init_process_group", refuse)
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    config = tiny_run_config((str(full_dataset),), epochs=1)
    train_module.train(replace(config, train=replace(config.train, max_steps=1)), tmp_path / "run", threads=1)
    assert not torch.distributed.is_initialized()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["world_size"] == 1


@pytest.mark.slow
def test_torchrun_launches_kws_train(full_dataset: Path, tmp_path: Path) -> None:
    """The real command: `torchrun --standalone --nproc_per_node 2 -m kws train ...` (a free localhost port)."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "kws"]
    argv += ["train", "--data", str(full_dataset), "--labels", "yes,no,up,down", "--hidden-size", "16"]
    argv += ["--validation-percent", "15", "--testing-percent", "15", "--epochs", "1", "--max-steps", "2"]
    argv += ["--threads", "1", "--cache", str(cache), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env |= {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best checkpoint:") == 1  # rank 0 alone prints...
    assert done.stderr.count("epoch 1/1: loss") == 1  # ...and logs
    assert "x 2 processes (gloo)" in done.stderr
    payload = load_checkpoint(out / "best.pt")
    assert payload["world_size"] == 2 and payload["step"] == 2
    assert any(cache.iterdir())  # the decoded-audio cache the processes shared
