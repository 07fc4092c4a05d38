"""`hydra/launcher=local_gpus`: the jobs of a multirun on this machine's GPUs, several at once.

One job alone leaves a GPU idle much of the time (start-up, compilation, graph captures, validation); jobs sharing it
fill those gaps (docs/sweeps.md has the figures). Each job runs in a fresh process (spawned: no CUDA state, compiled
kernels or memory carried from one job to the next) that sees one GPU (`CUDA_VISIBLE_DEVICES`); at most
`jobs_per_gpu` jobs share a GPU, and a job starts as soon as a slot frees. A job's terminal output goes to
`output.txt` in its Hydra job folder; the launcher prints one line as each job starts and ends.

It lives under `hydra_plugins` because Hydra only instantiates launchers from there; nothing heavy is imported at the
top, since Hydra imports every plugin module when it starts."""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from ernerf.errors import ErnerfError

log = logging.getLogger(__name__)
OUTPUT = "output.txt"  # a job's stdout and stderr, in its Hydra job folder


def visible_gpus(gpus: str | int | Sequence[int] | None) -> list[str]:
    """The GPUs jobs may use: `auto` = every GPU this process sees (none without CUDA); a count = the first N; a list
    = those device numbers."""
    if gpus in (None, "auto"):
        listed = os.environ.get("CUDA_VISIBLE_DEVICES")
        if listed is not None:
            return [d.strip() for d in listed.split(",") if d.strip()]
        import torch  # only here: counting devices needs it, and Hydra imports this module at every start

        return [str(i) for i in range(torch.cuda.device_count())]
    if isinstance(gpus, int):
        return [str(i) for i in range(gpus)]
    return [str(g) for g in gpus]


def job_slots(gpus: list[str], jobs_per_gpu: int) -> list[str | None]:
    """One entry per job that may run at once: each GPU `jobs_per_gpu` times, GPUs taking turns so that a sweep
    smaller than the slots spreads over the GPUs; `jobs_per_gpu` slots without a GPU (None: the device is left as
    it is)."""
    if jobs_per_gpu < 1:
        raise ErnerfError(f"hydra.launcher.jobs_per_gpu must be 1 or more, got {jobs_per_gpu}")
    return [gpu for _ in range(jobs_per_gpu) for gpu in gpus] if gpus else [None] * jobs_per_gpu


def run_in_child(payload: bytes, gpu: str | None, output: str, result: Connection) -> None:
    """In the spawned process: see one GPU, write the terminal output to the job's file, run the job as Hydra does and
    send its JobReturn back through `result`. `payload`: the task function, the job's config, the Hydra context and
    Hydra's global state, cloudpickled (its resolvers are local functions, which pickle cannot send)."""
    import cloudpickle

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    sink = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(sink, stream.fileno())
    task_function, config, hydra_context, singleton_state = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(singleton_state)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    # the job's Hydra config holds structured-config classes (BasicSweeperConf, ...) that pickle cannot send back;
    # the sweep reads return values and each job's job.json, not this
    ret.hydra_cfg = None
    result.send(ret)


def check_one_device(config: DictConfig) -> None:
    """A job here sees one GPU: one that asks for several (DDP) would have Lightning start the whole command again
    for its other ranks. Refused before any job starts."""
    devices = config.get("trainer", {}).get("devices", 1)
    count = len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else devices
    if count not in (1, "1", "auto") or int(config.get("trainer", {}).get("num_nodes", 1)) != 1:
        raise ErnerfError(f"hydra/launcher=local_gpus gives each job one GPU, and job #{config.hydra.job.num} asks for "
                         f"trainer.devices={devices}: run data-parallel jobs with Hydra's own launcher (leave out "
                         "hydra/launcher=local_gpus) or hydra/launcher=slurm (docs/multigpu.md).")


def varying_overrides(job_overrides: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each job's overrides of the keys whose values differ between the jobs (all of them for a single job)."""
    jobs = [{o.partition("=")[0]: o for o in filter_overrides(list(overrides))} for overrides in job_overrides]
    keys = {key for job in jobs for key in job}
    differ = {key for key in keys if len({job.get(key) for job in jobs}) > 1} if len(jobs) > 1 else keys
    return [[o for key, o in job.items() if key in differ] for job in jobs]


def run_in_a_process(payload: bytes, gpu: str | None, output: str) -> tuple[JobReturn | None, int | None]:
    """Run the job in a freshly spawned process; (its JobReturn, None), or (None, its exit code) when it died before
    sending one."""
    context = get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=run_in_child, args=(payload, gpu, output, send))
    process.start()
    send.close()  # the child holds the only sending end: a child that dies ends the wait below
    try:
        ret = receive.recv()
    except EOFError:
        ret = None
    process.join()
    return ret, None if ret is not None else process.exitcode


def exit_reason(exitcode: int | None) -> str:
    """`SIGSEGV` for a process a signal ended, `exit code N` otherwise."""
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def record_lost_job(config: DictConfig, swept: Sequence[str], why: str, output: str) -> None:
    """The job's record (`ernerf.apps.sweeps.JOB_RECORD`, what the sweep's summary reads) for a job whose process died
    before writing it: failed, with why."""
    from ernerf.apps.sweeps import lost_job_record  # here: the sweep's own record format, imported when needed

    values = dict(o.lstrip("+~").split("=", 1) for o in swept if "=" in o)
    lost_job_record(Path(output).parent, config.hydra.job.num, values, f"{why}; its output: {output}")


def lost_job_return(config: DictConfig) -> JobReturn:
    """What a job that died gives the sweeper: no figure, as a job that failed inside returns (so that a search counts
    it as a failed trial and the sweep goes on)."""
    ret = JobReturn()
    ret.cfg, ret.status, ret.return_value = config, JobStatus.COMPLETED, None
    return ret


class LocalGPULauncher(Launcher):
    """gpus: auto | a count | a list of device numbers; jobs_per_gpu: jobs sharing one GPU at once."""

    def __init__(self, gpus: Any = "auto", jobs_per_gpu: int = 1) -> None:
        self.gpus, self.jobs_per_gpu = gpus, int(jobs_per_gpu)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        slots = job_slots(visible_gpus(self.gpus), self.jobs_per_gpu)
        where = f"{len(set(slots))} GPU(s), {self.jobs_per_gpu} job(s) each" if slots[0] is not None else "no GPU"
        log.info("launching %d job(s), %d at once (%s)", len(job_overrides), len(slots), where)
        configs = [self.job_config(overrides, initial_job_idx + i) for i, overrides in enumerate(job_overrides)]
        for config in configs:
            check_one_device(config)
        free: queue.Queue = queue.Queue()
        for slot in slots:
            free.put(slot)
        with ThreadPoolExecutor(len(slots)) as threads:
            futures = [threads.submit(self.run_job_on_a_slot, config, swept, free)
                       for config, swept in zip(configs, varying_overrides(job_overrides))]
            return [future.result() for future in futures]

    def job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        """The job's config as Hydra's basic launcher composes it, numbered `idx`."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        return config

    def run_job_on_a_slot(self, config: DictConfig, swept: Sequence[str], free: queue.Queue) -> JobReturn:
        """Wait for a free slot, run the job in a fresh process there, give the slot back; `swept`: what tells the job
        from the others, for its lines on the terminal."""
        import cloudpickle

        gpu = free.get()
        num = config.hydra.job.num
        output = str(Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir) / OUTPUT)
        log.info("#%d started%s: %s (output: %s)", num, f" on GPU {gpu}" if gpu is not None else "", " ".join(swept),
                 output)
        start = time.monotonic()
        payload = cloudpickle.dumps((self.task_function, config, self.hydra_context, Singleton.get_state()))
        try:
            ret, exitcode = run_in_a_process(payload, gpu, output)
        finally:
            free.put(gpu)
        minutes = (time.monotonic() - start) / 60
        if ret is None:  # the process died (a signal, os._exit) before it could report: the sweep goes on
            why = f"its process died ({exit_reason(exitcode)})"
            record_lost_job(config, swept, why, output)
            log.warning("#%d failed after %.1f min: %s; its output: %s", num, minutes, why, output)
            return lost_job_return(config)
        if ret.status == JobStatus.COMPLETED:
            value, metric = ret.return_value, config.get("optimized_metric") or "its figure"
            told = f"{metric} {value:.4g}" if isinstance(value, (int, float)) else f"no {metric} (no validation ran?)"
            log.info("#%d ended in %.1f min: %s", num, minutes, told)
        else:
            log.warning("#%d failed after %.1f min (its output: %s)", num, minutes, output)
        return ret
