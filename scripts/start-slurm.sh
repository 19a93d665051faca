#!/usr/bin/env bash
# Starts a one-node Slurm cluster on this machine for the Slurm sweep tests (tests/test_sweep_slurm.py) and for
# trying docs/cluster.md: munged, slurmctld and slurmd on localhost, one node with this machine's CPUs, partition
# `debug`. Idempotent (exits 0 at once when the node already answers, for any user). Starting it needs root and
# Debian's slurm-wlm + munge (scripts/system-deps.sh installs them).
#
#     sudo bash scripts/start-slurm.sh && sinfo
#
# Written for containers: no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), no accounting
# database, SlurmUser=root. State and logs live in $HARNESS_SLURM_STATE (default /tmp/harness-slurm); the config
# goes to $SLURM_CONF (default /etc/slurm/slurm.conf, where sbatch looks), and a slurm.conf this script did not
# write is never replaced.
set -euo pipefail
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
STATE=${HARNESS_SLURM_STATE:-/tmp/harness-slurm}
MARK="# written by harness scripts/start-slurm.sh"
NODE=$(hostname -s)
say() { echo "start-slurm: $*"; }

for b in slurmctld slurmd munged sinfo sbatch scontrol; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || { say "no $b; install slurm-wlm and munge (scripts/system-deps.sh)"; exit 1; }
done
export PATH="$PATH:/usr/sbin"
node_state() { timeout 20 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1 | tr -d '*~#!%@$^-' || true; }
running() { [ -f "$1" ] && ps -p "$(cat "$1")" >/dev/null 2>&1; }  # not kill -0: works for non-root too
if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" && running "$STATE/slurmctld.pid" && running "$STATE/slurmd.pid"; then
  case "$(node_state)" in idle|mix|mixed|alloc|allocated) say "already running (node $NODE $(node_state), config $CONF)"; exit 0;; esac
fi
[ "$(id -u)" = 0 ] || { say "needs root (slurmd runs jobs as their users; munged and the config under /etc)"; exit 1; }
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  say "$CONF exists and was not written by this script: not touching a real cluster's config (set SLURM_CONF=/another/slurm.conf)"
  exit 1
fi

# munge: the key (created if missing) and the daemon, run as the munge user
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key --force; \
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then runuser -u munge -- /usr/sbin/munged; else /usr/sbin/munged --force; fi
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null || { say "munged did not start (see /var/log/munge/munged.log)"; exit 1; }
fi

# slurm.conf: one node (this machine's CPUs and memory), one partition
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/d"
cat >"$CONF" <<EOF
$MARK: a one-node test cluster on this machine.
# Start: sudo bash scripts/start-slurm.sh   State and logs: $STATE   Docs: docs/cluster.md
ClusterName=harness
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=600
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

if ! running "$STATE/slurmctld.pid"; then
  SLURM_CONF=$CONF slurmctld || { say "slurmctld failed to start; see $STATE/slurmctld.log"; tail -5 "$STATE/slurmctld.log" 2>/dev/null; exit 1; }
else
  SLURM_CONF=$CONF scontrol reconfigure >/dev/null 2>&1 || true
fi
if ! running "$STATE/slurmd.pid"; then
  SLURM_CONF=$CONF slurmd || { say "slurmd failed to start; see $STATE/slurmd.log"; tail -5 "$STATE/slurmd.log" 2>/dev/null; exit 1; }
fi
for i in $(seq 60); do
  st=$(SLURM_CONF=$CONF node_state)
  case "$st" in
    idle|mix|mixed|alloc|allocated) say "running: node $NODE $st ($CPUS CPUs), partition debug, config $CONF"; exit 0;;
    down|drain|drained|draining|fail) SLURM_CONF=$CONF scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true;;
  esac
  sleep 1
done
say "node $NODE did not become idle (state: ${st:-unknown}); see $STATE/slurmctld.log and $STATE/slurmd.log"
tail -5 "$STATE/slurmctld.log" "$STATE/slurmd.log" 2>/dev/null || true
exit 1
