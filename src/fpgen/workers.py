"""A batch spread over several GPUs: one worker process per GPU, jobs handed out as workers ask for them.

The parent process owns the list of jobs. Every message a worker sends asks for its next job and
carries the outcome of its last one (nothing when it starts), so a worker that finishes early takes
the next job (uneven jobs balance out), each job goes to exactly one worker, and the parent always
knows which job each worker holds. Jobs are handed out grouped by model, and a worker is given
another job of the models it has loaded while there is one, so each worker loads each model once.

Nothing but the outcomes lives in the parent: outputs and job folders are on disk. A worker that
dies loses only the job it held (reported failed; its job folder is continued by the next run) and
the others go on. Ctrl-C or SIGTERM in the parent sends SIGTERM to every worker; each stops its job
the way Ctrl-C stops a one-process batch (the job folder kept, resumable), reports it and exits. A
second Ctrl-C kills the workers. Workers are started with Ctrl-C ignored, so only the parent decides.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from fpgen.batch import BatchJob, Outcome, in_file_order, run_jobs, triage
from fpgen.errors import ExitCode, InputError
from fpgen.terminal import library_bars_off

# label -> (load_models, run_job, on_job) for ``fpgen.batch.run_jobs``; picklable, since it is sent to the workers
MakeRunner = Callable[[str], tuple[Callable, Callable, Callable]]


@dataclass(frozen=True)
class Worker:
    label: str  # cuda:N (as --device cuda:N names the GPU in the parent) or cpu:N (the Nth CPU worker)
    env: dict[str, str]  # set in the worker before it touches CUDA
    threads: int | None = None  # CPU threads for torch; None leaves torch's default


def plan_workers(gpus: str, device: str) -> list[Worker]:
    """The workers ``--gpus`` asks for: one per GPU, each seeing only its GPU, or with ``--device cpu`` N CPU workers.

    CPU workers share the cores unless OMP_NUM_THREADS says how many threads each takes.
    """
    if device == "cpu":
        count = _count(gpus, None)
        threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // count)
        return [Worker(f"cpu:{i}", {}, threads) for i in range(count)]
    import torch

    available = torch.cuda.device_count()
    count = _count(gpus, available)
    if not 1 <= count <= available:
        hint = f"pass --gpus {available} or fewer" if available else "on a machine without GPUs, --device cpu --gpus N runs N CPU workers"
        raise InputError(f"--gpus {gpus}: PyTorch sees {available} GPU(s) here", hint)
    if device not in ("auto", "cuda") and count > 1:
        raise InputError(f"--device {device} names one device, and --gpus {gpus} gives each worker a GPU of its own", "use --device cuda (or auto) with --gpus")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [item.strip() for item in visible.split(",")] if visible else [str(i) for i in range(available)]
    return [Worker(f"cuda:{i}", {"CUDA_VISIBLE_DEVICES": ids[i]}) for i in range(count)]


def _count(gpus: str, available: int | None) -> int:
    """``--gpus`` as a number of workers: a whole number, or ``all`` the GPUs (``available``; None with ``--device cpu``)."""
    if gpus == "all" and available is not None:
        return available
    if not gpus.isdigit() or int(gpus) < 1:
        seen = "with --device cpu it is the number of CPU workers" if available is None else f"PyTorch sees {available} GPU(s) here"
        raise InputError(f"--gpus takes a number of at least 1{'' if available is None else ' or all'} (got {gpus!r}); {seen}", "e.g. --gpus 2")
    return int(gpus)


def run_parallel(jobs: list[BatchJob], workers: list[Worker], make_runner: MakeRunner) -> list[Outcome]:
    """Run the valid jobs on ``workers`` (one process each); outcomes in file order, each naming its worker."""
    outcomes, todo = triage(jobs)
    if not todo:
        return in_file_order(jobs, outcomes)
    processes: dict[Connection, tuple[Worker, BaseProcess]] = {}
    held: dict[Connection, BatchJob | None] = {}  # the job each worker is running
    stopping = False

    def stop(signum=None, frame=None) -> None:
        """Ctrl-C or SIGTERM: ask every worker to stop its job (SIGTERM); a second time, kill them."""
        nonlocal stopping
        for _, process in processes.values():
            if stopping:
                process.kill()
            else:
                process.terminate()
        stopping = True

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for worker in workers:
            conn, process = _start(worker, make_runner)
            processes[conn], held[conn] = (worker, process), None
        for sig in saved:
            signal.signal(sig, stop)
        while processes:
            for conn in wait(list(processes)):
                worker, process = processes[conn]
                try:
                    outcome = conn.recv()
                except (EOFError, ConnectionResetError):  # the worker is gone
                    process.join()
                    if held[conn] is not None:
                        outcomes[held[conn].line] = _lost(held[conn], worker, process.exitcode, stopping)
                    del processes[conn]
                    continue
                if outcome is not None:
                    outcomes[outcome.line] = outcome
                    if outcome.status == "interrupted":  # stopped from outside (e.g. SIGTERM to a worker): so is the batch
                        stopping = True
                last = held[conn]
                held[conn] = None if stopping else next_job(todo, last.spec.models_key() if last else None)
                try:
                    conn.send(held[conn])
                except OSError:  # it died meanwhile: its end of file comes next
                    pass
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for _, process in processes.values():  # only when the parent itself failed
            process.terminate()
            process.join()
    return in_file_order(jobs, outcomes)


def _start(worker: Worker, make_runner: MakeRunner) -> tuple[Connection, BaseProcess]:
    """Start a worker in a fresh interpreter (no CUDA state inherited) with Ctrl-C ignored: it stops on the parent's SIGTERM."""
    spawn = get_context("spawn")
    mine, theirs = spawn.Pipe()
    process = spawn.Process(target=_work, args=(theirs, worker, make_runner), name=f"fpgen {worker.label}")
    with ignoring(signal.SIGINT):  # inherited through exec
        process.start()
    theirs.close()
    return mine, process


def next_job(todo: list[BatchJob], models_key: tuple | None) -> BatchJob | None:
    """Take the next job for a worker: one needing the models it has loaded if any is left, else the next in line."""
    for index, job in enumerate(todo):
        if job.spec.models_key() == models_key:
            return todo.pop(index)
    return todo.pop(0) if todo else None


def _lost(job: BatchJob, worker: Worker, exitcode: int | None, stopping: bool) -> Outcome:
    """The outcome of a job whose worker died before reporting it; its job folder, if any, is continued by the next run."""
    status, code = ("interrupted", ExitCode.INTERRUPTED) if stopping else ("failed", ExitCode.FAILED)
    error = f"worker {worker.label} ended (exit code {exitcode}) during the job; run the batch again to continue it"
    return Outcome(job.line, str(job.spec.output), status, error=error, exit_code=code, worker=worker.label)


@contextmanager
def ignoring(sig: int):
    """Start processes inside it to have them ignore ``sig`` (inherited through exec; Python keeps an ignored SIGINT ignored)."""
    saved = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(sig, saved)


def _work(conn: Connection, worker: Worker, make_runner: MakeRunner) -> None:
    """A worker process: ask the parent for jobs until it answers None, run them with ``run_jobs``, send each outcome."""
    os.environ.update(worker.env)  # before anything initialises CUDA
    library_bars_off()  # workers share the terminal: a bar's line, drawn without a newline, would swallow another worker's
    signal.signal(signal.SIGTERM, _stop_once)
    if worker.threads:
        import torch

        torch.set_num_threads(worker.threads)

    def claimed():
        while (job := conn.recv()) is not None:
            yield job

    try:
        conn.send(None)
        for outcome in run_jobs(claimed(), *make_runner(worker.label)):
            conn.send(replace(outcome, worker=worker.label))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped between jobs, or the parent is gone: no job is running


def _stop_once(signum, frame) -> None:
    """SIGTERM stops the job the way Ctrl-C does; later ones are ignored so the job folder is left tidy."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
