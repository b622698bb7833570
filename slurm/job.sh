# shellcheck shell=bash
# The job logic shared by slurm/train.sbatch and slurm/watch.sbatch: the ranks' environment,
# the srun launch, and checkpoint-and-requeue on a signal. Sourced after slurm/env.sh (the site
# settings); sites should not need to edit this file.
#
# Signals (slurm/README.md, "Requeue"):
#   USR1  sent to this batch shell by `#SBATCH --signal=B:USR1@300` before the time limit:
#         forwarded to the ranks (srun passes USR1 on to every task), which stop at the next step
#         with a checkpoint and exit; then the job requeues itself and the next run resumes.
#   TERM  scancel or preemption: Slurm signals the ranks itself; USR1 is forwarded as well so
#         they checkpoint, and the job is not requeued here (Slurm requeues a preempted job
#         itself, thanks to --requeue; a cancelled one stays cancelled).
# USR1, not TERM, is what goes to srun: srun answers a TERM of its own by killing its tasks.

_PTYCL_TIMEOUT=""    # USR1 arrived: the time limit is near
_PTYCL_STOPPED=""    # TERM arrived: cancelled or preempted
_PTYCL_STEP_PID=""   # the srun running the ranks

ptycl_log() {
	printf '%s ptycl-slurm: %s\n' "$(date '+%F %T')" "$*" >&2
}

_ptycl_on_signal() {
	case $1 in
	USR1) _PTYCL_TIMEOUT=1 ;;
	TERM) _PTYCL_STOPPED=1 ;;
	esac
	if [[ -n $_PTYCL_STEP_PID ]] && kill -0 "$_PTYCL_STEP_PID" 2>/dev/null; then
		ptycl_log "caught SIG$1: forwarding SIGUSR1 to the ranks (srun pid $_PTYCL_STEP_PID): checkpoint and stop"
		kill -s USR1 "$_PTYCL_STEP_PID" 2>/dev/null || true
	else
		ptycl_log "caught SIG$1 while no ranks are running"
	fi
}

# Installed as soon as this file is sourced: from here on a signal never kills the batch shell.
trap '_ptycl_on_signal USR1' USR1
trap '_ptycl_on_signal TERM' TERM

# ptycl_job_environment: activate the Python environment and export what every rank needs:
# threads per rank from --cpus-per-task, and torch.distributed's rendezvous (MASTER_ADDR: the
# first node of the job; MASTER_PORT: from the job id, so jobs sharing a node do not collide).
ptycl_job_environment() {
	if [[ -z ${SLURM_JOB_ID:-} || -z ${SLURM_JOB_NODELIST:-} ]]; then
		ptycl_log "error: not inside a Slurm job (no SLURM_JOB_ID / SLURM_JOB_NODELIST): submit with sbatch"
		return 2
	fi
	if [[ -n ${PTYCL_VENV:-} ]]; then
		if [[ ! -f $PTYCL_VENV/bin/activate ]]; then
			ptycl_log "error: no virtual environment at PTYCL_VENV=$PTYCL_VENV (set it in slurm/env.sh)"
			return 2
		fi
		# shellcheck disable=SC1091  # the site's venv, not part of this repository
		source "$PTYCL_VENV/bin/activate"
	fi
	if ! PTYCL_BIN=$(command -v ptycl); then
		ptycl_log "error: no ptycl command on PATH (PTYCL_VENV=${PTYCL_VENV:-}; see slurm/README.md, Installing)"
		return 2
	fi
	export PTYCL_BIN

	# One rank per task: its threads are the task's CPUs (torch's intra-op pool, Numba).
	export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
	export NUMBA_NUM_THREADS=$OMP_NUM_THREADS
	# Since Slurm 22.05 srun no longer takes --cpus-per-task from the job: pass it on.
	if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
		export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
	fi

	local hosts
	if ! hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || [[ -z $hosts ]]; then
		ptycl_log "error: scontrol show hostnames '$SLURM_JOB_NODELIST' failed"
		return 2
	fi
	export MASTER_ADDR=${hosts%%$'\n'*}
	export MASTER_PORT=$((10000 + SLURM_JOB_ID % 20000))
}

# ptycl_output_dir ARGS...: the run.output_dir that `ptycl ARGS` will use (the config file's, or
# a --set run.output_dir=... override), asked of ptycl itself (`ptycl config --get`), so that it
# is read by the ranks' interpreter and loader whatever `python` is on PATH.
ptycl_output_dir() {
	local -a config_args=()
	while (($#)); do
		case $1 in
		-c | --config | --set)
			config_args+=("$1" "${2:-}")
			shift $(($# > 1 ? 2 : 1))
			;;
		--config=* | --set=*)
			config_args+=("$1")
			shift
			;;
		*) shift ;;
		esac
	done
	"$PTYCL_BIN" config "${config_args[@]}" --get run.output_dir
}

# ptycl_launch SUBCOMMAND ARGS...: run `ptycl SUBCOMMAND ARGS` on every task of the job (srun),
# with --resume when the run's checkpoint exists; requeue the job when USR1 stopped it and the
# ranks exited 0 (they checkpointed). Returns the ranks' exit status (0 after a requeue).
ptycl_launch() {
	local subcommand=$1
	shift
	local -a args=("$@")
	local output_dir
	output_dir=$(ptycl_output_dir "${args[@]}") || return 2
	local checkpoint=$output_dir/checkpoints/latest.pt
	if [[ -f $checkpoint ]]; then
		local arg given=""
		for arg in "${args[@]}"; do
			if [[ $arg == --resume ]]; then given=1; fi
		done
		[[ -n $given ]] || args+=(--resume)
		ptycl_log "checkpoint $checkpoint exists: resuming it (restart ${SLURM_RESTART_COUNT:-0} of this job); to start afresh, remove it or --set run.output_dir=ELSEWHERE"
	else
		ptycl_log "no checkpoint in $output_dir/checkpoints: starting afresh"
	fi

	local -a launcher=(srun --kill-on-bad-exit=1)
	if [[ -n ${PTYCL_SRUN_MPI:-} ]]; then
		launcher+=("--mpi=$PTYCL_SRUN_MPI")
	fi
	local -a extra=()
	read -r -a extra <<<"${PTYCL_SRUN_OPTS:-}"
	launcher+=("${extra[@]}")

	ptycl_log "job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST}: ${SLURM_NTASKS:-?} rank(s), ${OMP_NUM_THREADS} thread(s) each, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
	ptycl_log "outputs and checkpoints: $output_dir"
	ptycl_log "running: ${launcher[*]} $PTYCL_BIN $subcommand ${args[*]}"
	if [[ -n $_PTYCL_TIMEOUT$_PTYCL_STOPPED ]]; then
		ptycl_log "signalled while starting: not launching"
	else
		"${launcher[@]}" "$PTYCL_BIN" "$subcommand" "${args[@]}" &
		_PTYCL_STEP_PID=$!
		# A trapped signal makes `wait` return early (status > 128) while the step runs on:
		# wait again until it has ended, then collect its status.
		while kill -0 "$_PTYCL_STEP_PID" 2>/dev/null; do
			wait "$_PTYCL_STEP_PID" || true
		done
	fi
	local rc=0
	if [[ -n $_PTYCL_STEP_PID ]]; then
		wait "$_PTYCL_STEP_PID" || rc=$?
	fi
	trap - USR1 TERM # the ranks are gone: nothing left to forward to
	ptycl_log "ranks exited with status $rc"

	if [[ -n $_PTYCL_STOPPED ]]; then
		ptycl_log "stopped by SIGTERM (scancel or preemption): not requeueing here (Slurm requeues a preempted job itself)"
		return "$rc"
	fi
	if [[ -z $_PTYCL_TIMEOUT ]]; then
		return "$rc"
	fi
	if ((rc != 0)); then
		# The ranks did not checkpoint and stop as asked (a full disk, a crash): another
		# allocation would most likely end the same way.
		ptycl_log "time limit near, but the ranks failed (status $rc): not requeueing; fix the cause, then resubmit to resume from the latest intact checkpoint"
		return "$rc"
	fi
	local restarts=${SLURM_RESTART_COUNT:-0}
	local limit=${PTYCL_MAX_REQUEUES:-20}
	if ((restarts >= limit)); then
		ptycl_log "time limit near, but the job was requeued $restarts time(s) already (PTYCL_MAX_REQUEUES=$limit): not requeueing; resubmit to continue"
		return 3
	fi
	ptycl_log "time limit near: requeueing job $SLURM_JOB_ID; it resumes from $checkpoint"
	if ! scontrol requeue "$SLURM_JOB_ID"; then
		ptycl_log "error: scontrol requeue $SLURM_JOB_ID failed; resubmit the same command to resume"
		return 3
	fi
	return 0
}
