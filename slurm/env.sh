# shellcheck shell=bash
# Site settings for the ptycl batch scripts (slurm/train.sbatch, slurm/watch.sbatch).
#
# This is the one file a site adapts. The batch script sources it on the first node of the job,
# before anything runs, with PTYCL_HOME set to the ptycl checkout. Keep it to settings: the job
# logic (environment, launch, requeue) is in slurm/job.sh, which sites should not need to edit.
#
# Every PTYCL_* setting below keeps a value already in the environment, so one job can override
# it at submission without editing this file (sbatch passes the environment on by default):
#     PTYCL_SRUN_MPI=pmix sbatch slurm/train.sbatch -c configs/continual-64.yaml
#
# The #SBATCH lines (partition, account, GPUs, time) cannot be set from here: Slurm reads them
# before the script runs. Give them on the sbatch command line or edit the .sbatch files
# (slurm/README.md, "Adapting to a site").

# --- 1. Modules -----------------------------------------------------------------------------
# Load the compilers, CUDA and the MPI that mpi4py was built against. Batch shells are not login
# shells: if `module` is not defined there, initialise it first (Environment Modules:
# /etc/profile.d/modules.sh; Lmod: /etc/profile.d/lmod.sh or z00_lmod.sh). For example:
#
#   type module >/dev/null 2>&1 || source /etc/profile.d/modules.sh
#   module purge
#   module load gcc/12 cuda/12.4 openmpi/5.0
#
# Nothing is loaded by default.

# --- 2. Python environment ------------------------------------------------------------------
# The virtual environment holding ptycl, CUDA torch and mpi4py (slurm/README.md, "Installing");
# its bin/activate is sourced. Empty: activate nothing here (e.g. a conda environment activated
# above, or ptycl already on PATH).
PTYCL_VENV=${PTYCL_VENV-$PTYCL_HOME/.venv}

# --- 3. MPI flavour -------------------------------------------------------------------------
# How srun starts the ranks so that MPI_Init in each of them finds the others (srun --mpi=...):
#   pmi2  MPICH, MVAPICH, Intel MPI, and the `mpich` wheel from PyPI (pip install 'ptycl[mpich]')
#   pmix  Open MPI 4/5 (built with PMIx, as most site builds are)
#   ""    no --mpi flag: the cluster's MpiDefault (slurm.conf), e.g. cray_shasta on HPE Cray
# `srun --mpi=list` shows what your Slurm offers. The wrong one shows up at once: every rank
# sees a world of 1 and ptycl stops with an error naming these two flags.
PTYCL_SRUN_MPI=${PTYCL_SRUN_MPI-pmi2}

# Extra srun options, split on spaces, each in --option=value form, e.g. binding:
#   PTYCL_SRUN_OPTS="--cpu-bind=cores --gpu-bind=closest"
PTYCL_SRUN_OPTS=${PTYCL_SRUN_OPTS-}

# --- 4. Requeue -----------------------------------------------------------------------------
# After the time-limit warning (#SBATCH --signal=B:USR1@300) the ranks checkpoint and the job
# requeues itself, at most this many times (counted by Slurm in SLURM_RESTART_COUNT): a guard
# against a job that makes no progress requeueing for ever. 0: never requeue.
PTYCL_MAX_REQUEUES=${PTYCL_MAX_REQUEUES-20}

# --- 5. Communication -----------------------------------------------------------------------
# torch.distributed meets at the first node of the job (MASTER_ADDR, from
# `scontrol show hostnames`) on port 10000 + job id % 20000 (MASTER_PORT); job.sh sets both.
# NCCL picks its network itself; pin it where a node has several, for example:
#   export NCCL_SOCKET_IFNAME=ib0      # the interface for NCCL's and gloo's sockets
#   export GLOO_SOCKET_IFNAME=ib0
#   export NCCL_IB_HCA=mlx5            # which InfiniBand adapters NCCL uses
# NCCL_DEBUG=INFO prints what it chose.

# --- 6. Watch mode --------------------------------------------------------------------------
# slurm/watch.sbatch discovers scans by polling the directory (ptycl watch --polling): inotify
# does not see files written from other nodes on NFS, Lustre or GPFS. 0: inotify, for a
# directory on the job's own node.
PTYCL_WATCH_POLLING=${PTYCL_WATCH_POLLING-1}
