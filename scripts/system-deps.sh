#!/usr/bin/env bash
# Installs and starts what the browser, PostgreSQL, Slurm and METEOR tests need: Debian's chromium, a local
# PostgreSQL server on 127.0.0.1, a one-node Slurm cluster (slurm-wlm + munge, scripts/start-slurm.sh) and a Java
# runtime. Used by `make test` (and so by .ci/run). Without root it only says what is missing; the tests that need
# it are then skipped with a visible reason.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)  # METEOR 1.5 (harness/eval/nlgmetrics.py)
command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || need+=(slurm-wlm)  # tests/test_sweep_slurm.py
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "system-deps: installing ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/tmp/harness-apt.log 2>&1 \
      || { echo "system-deps: apt-get failed (see /tmp/harness-apt.log); browser/postgres/slurm tests will be skipped"; }
  else
    echo "system-deps: missing ${need[*]} and not root; the tests that need them will be skipped"
  fi
fi
# PostgreSQL: a throwaway cluster owned by the 'postgres' user, listening on 127.0.0.1:54329.
bash "$(dirname "$0")/start-postgres.sh" || echo "system-deps: PostgreSQL not started; postgres tests will be skipped"
# Slurm: munged, slurmctld and slurmd for one node on localhost (root only; config /etc/slurm/slurm.conf, state /tmp/harness-slurm).
bash "$(dirname "$0")/start-slurm.sh" || echo "system-deps: Slurm not started; slurm tests will be skipped"
exit 0
