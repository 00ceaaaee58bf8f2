#!/usr/bin/env bash
# A real single-node Slurm (munged, slurmctld, slurmd) in one folder, for CI and tests.
#
#   slurm/local_cluster.sh install        # apt-get slurm-wlm and munge when missing
#   slurm/local_cluster.sh start DIR      # generate DIR/slurm.conf, start the daemons
#   slurm/local_cluster.sh stop DIR       # stop them by the pids in DIR
#
# After start, `export SLURM_CONF=DIR/slurm.conf` points sbatch, squeue and
# sinfo at it; nothing under /etc/slurm is touched. Runs as root.
set -euo pipefail

cmd=${1:-}
dir=${2:-}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
    [ -n "$dir" ] || { echo "usage: $0 start DIR" >&2; exit 2; }
    mkdir -p "$dir"/{state,spool,munge}
    dir=$(cd "$dir" && pwd)
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

    # munge: one key, one socket of our own
    [ -f /etc/munge/munge.key ] || /usr/sbin/mungekey -c
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        /usr/sbin/munged --force --pid-file="$dir/munge/munged.pid" 2>/dev/null || /usr/sbin/munged --force
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
        [ -f "$dir/munge/munged.pid" ] || pgrep -n munged > "$dir/munge/munged.pid"
    fi

    cat > "$dir/slurm.conf" <<CONF
ClusterName=qlift
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=$(( 6817 ))
SlurmdPort=$(( 6818 ))
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    export SLURM_CONF="$dir/slurm.conf"
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        echo "slurm: a slurmctld or slurmd already runs here (pids $(pgrep -d, -x 'slurmctld|slurmd')); stop it first" >&2
        exit 1
    fi
    /usr/sbin/slurmctld -f "$SLURM_CONF"
    /usr/sbin/slurmd -f "$SLURM_CONF"
    for _ in $(seq 100); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^idle'; then
            echo "slurm: node $host idle ($cpus CPUs); export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.2
    done
    echo "slurm: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    exit 1
}

stop() {
    [ -n "$dir" ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
    for f in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        if [ -f "$f" ]; then
            pid=$(cat "$f")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$f"
        fi
    done
}

case "$cmd" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
