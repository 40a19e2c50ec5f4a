#!/usr/bin/env bash
# test-slurm.sh: a one-node Slurm on this machine for the Slurm tests (issue 11).
#
# A munged, a slurmctld and a slurmd of its own (Debian's packages; the
# system's /etc/slurm and /etc/munge are not used), all files in one state
# directory, one node (this machine's short host name) with more CPUs than it
# has so that tests can run e.g. 8 tasks on 2 cores, and a partition "debug".
# Needs root (scripts/install-deps.sh installs munge, slurmctld, slurmd and
# slurm-client).
#
#   test-slurm.sh check
#       Exit 0 when this machine can run it, else say why and exit 1 (tests
#       call it to skip with a message).
#   test-slurm.sh up
#       Start munged, slurmctld and slurmd (tearing down an earlier instance
#       of the same state directory first), wait (at most 20 s) until the
#       node is idle, and print the path of <dir>/env. Interrupted (INT,
#       TERM, HUP), it tears down what it started.
#   test-slurm.sh down
#       Cancel every job, stop slurmd, slurmctld and munged, kill what is
#       left (slurmstepds and their tasks; srun and salloc processes with
#       this SLURM_CONF still waiting), remove the state directory. Never
#       fails when things are already gone.
#   test-slurm.sh selftest
#       up; srun/salloc checks (tasks, oversubscription, SLURM_PROCID,
#       an allocation with a step, scancel of a step and of a job); a step
#       left running; down; nothing left. PASS/FAIL lines; non-zero exit on failure.
#
# Clients: the environment is in <dir>/env, KEY=VALUE lines without quotes
# or "export" (a test sets them on the commands it runs; a shell does
# `set -a; . <dir>/env; set +a`):
#   SLURM_CONF=<dir>/slurm.conf
# Nothing else is needed: slurm.conf's AuthInfo names munged's socket, so
# srun, salloc, squeue, scancel, ... talk to this munged, not to the system's
# (/run/munge/munge.socket.2 is not used). The munge CLI tools need
# `--socket <dir>/munge/munge.socket.2` to reach it.
#
# Settings (environment):
#   LC_SLURM_DIR   state directory, default /tmp/lc-slurm (no spaces)
#   LC_SLURM_PORT  slurmctld's port, default 16817; slurmd's is the next one
#                  (not Slurm's 6817/6818, so a system Slurm is no clash)
#   LC_SLURM_CPUS  the node's CPUs, default 16 (slurmd reports what
#                  slurm.conf says: SlurmdParameters=config_overrides)
# One instance per state directory and port pair; the node name is this
# machine's, so two instances at once need different ports and are
# otherwise untested.
#
# State directory <dir>:
#   .lc-slurm        marker (down removes only a directory holding it, or an
#                    empty one)
#   env              for clients (above)
#   info             NODE, PARTITION, CPUS, PORT, DIR (shell-sourceable)
#   slurm.conf       the configuration (daemons get it with -f, clients by
#                    SLURM_CONF)
#   munge/           munge.key, munge.socket.2, munged.pid, munged.out (its
#                    log: in the foreground munged logs to stderr),
#                    munged.seed
#   ctld/            slurmctld's StateSaveLocation
#   spool/           slurmd's SlurmdSpoolDir
#   slurmctld.log slurmd.log slurmctld.pid slurmd.pid (the daemons' own)
#   *.out            the daemons' stdout/stderr
# Every daemon runs with LC_SLURM_INSTANCE=<dir> in its environment, and
# every slurmstepd (which slurmd starts with an environment of its own) has
# <dir>/slurmd.log open: that is how `down` finds what is left.
set -euo pipefail

PROG=test-slurm.sh
SELF=$(readlink -f "$0")
DIR=${LC_SLURM_DIR:-/tmp/lc-slurm}
PORT=${LC_SLURM_PORT:-16817}
CPUS=${LC_SLURM_CPUS:-16}
PARTITION=debug
UP_TIMEOUT=20
DAEMON_PATH=/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "$PROG: $*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

check_settings() {
    [[ "$DIR" =~ ^/[A-Za-z0-9._/-]+$ ]] && [ "$DIR" != / ] ||
        die "LC_SLURM_DIR must be an absolute path of letters, digits and ._-/ (not '$DIR')"
    DIR=${DIR%/}
    [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1024 ] && [ "$PORT" -le 65534 ] ||
        die "LC_SLURM_PORT must be 1024..65534, not '$PORT'"
    [[ "$CPUS" =~ ^[0-9]+$ ]] && [ "$CPUS" -ge 1 ] && [ "$CPUS" -le 1024 ] ||
        die "LC_SLURM_CPUS must be 1..1024, not '$CPUS'"
}

node_name() { hostname -s; }

client() { env SLURM_CONF="$DIR/slurm.conf" "$@"; }

cmd_check() {
    local why=() b
    [ "$(id -u)" -eq 0 ] || why+=("not root")
    for b in munged slurmctld slurmd; do
        [ -x "/usr/sbin/$b" ] || why+=("no /usr/sbin/$b (scripts/install-deps.sh installs munge, slurmctld, slurmd)")
    done
    for b in srun salloc sinfo squeue scancel scontrol; do
        command -v "$b" >/dev/null 2>&1 || why+=("no '$b' (slurm-client; scripts/install-deps.sh installs it)")
    done
    command -v setsid >/dev/null 2>&1 || why+=("no 'setsid' (util-linux)")
    command -v ss >/dev/null 2>&1 || why+=("no 'ss' (iproute2)")
    if [ "${#why[@]}" -eq 0 ]; then
        local plugdir
        plugdir=$(ls -d /usr/lib/*/slurm-wlm 2>/dev/null | head -n1 || true)
        for b in proctrack_linuxproc task_none select_cons_tres auth_munge cred_munge; do
            [ -n "$plugdir" ] && [ -e "$plugdir/$b.so" ] || why+=("no Slurm plugin $b.so (in /usr/lib/*/slurm-wlm)")
        done
        [ -n "$(node_name 2>/dev/null)" ] || why+=("no host name ('hostname -s' is empty)")
    fi
    if [ "${#why[@]}" -gt 0 ]; then
        local w
        for w in "${why[@]}"; do echo "$PROG check: $w" >&2; done
        return 1
    fi
    return 0
}

# Processes of this instance: the marker in the environment (the daemons),
# a Slurm or munge daemon with the state directory on its command line (one
# whose environment could not be read, say), a slurmstepd with a file of the
# state directory open (its log, slurmd.log: slurmd starts it with an
# environment of its own).
instance_pids() {
    local p f
    # One grep over every environment (-z: NUL-separated entries).
    grep -lxzF -- "LC_SLURM_INSTANCE=$DIR" /proc/[0-9]*/environ 2>/dev/null |
        sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' | grep -vx "$$" || true
    for p in $(pgrep -x munged 2>/dev/null; pgrep -x slurmctld 2>/dev/null; pgrep -x slurmd 2>/dev/null); do
        tr '\0' '\n' 2>/dev/null < "/proc/$p/cmdline" | grep -qF -- "$DIR/" && echo "$p"
    done
    for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
        for f in /proc/"$p"/fd/*; do
            case "$(readlink "$f" 2>/dev/null || true)" in
                "$DIR"/*) echo "$p"; break ;;
            esac
        done
    done
    return 0
}

# srun and salloc processes using this instance's slurm.conf.
client_pids() {
    local p
    for p in $(pgrep -x 'srun|salloc' 2>/dev/null || true); do
        [ "$p" -ne $$ ] || continue
        tr '\0' '\n' 2>/dev/null < "/proc/$p/environ" | grep -qxF "SLURM_CONF=$DIR/slurm.conf" && echo "$p"
    done
    return 0
}

# The given pids and all their descendants.
with_descendants() {
    [ "$#" -gt 0 ] || return 0
    ps -e -o pid=,ppid= 2>/dev/null | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2; pids[++m] = $1 }
        END {
            do {
                changed = 0
                for (i = 1; i <= m; i++)
                    if (!(pids[i] in keep) && (parent[pids[i]] in keep)) { keep[pids[i]] = 1; changed = 1 }
            } while (changed)
            for (p in keep) print p
        }'
}

alive() {
    # A zombie is not alive.
    [ -r "/proc/$1/stat" ] && [ "$(sed 's/^.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# Signal the daemon in pid file f if its command line is still exe with our
# state directory.
signal_recorded() {
    local sig=$1 f=$2 pid
    [ -s "$f" ] || return 0
    pid=$(head -n1 "$f" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF -- "$DIR/"; then
        kill "-$sig" "$pid" 2>/dev/null || true
    fi
}

dir_is_ours() { [ -f "$1/.lc-slurm" ]; }

cmd_down() {
    check_settings
    local n pids p left
    # 1. Jobs: cancel them while slurmctld still answers (bounded).
    if [ -f "$DIR/slurm.conf" ] && [ -s "$DIR/slurmctld.pid" ] &&
       alive "$(head -n1 "$DIR/slurmctld.pid")" && command -v squeue >/dev/null 2>&1; then
        local jobs
        jobs=$(client timeout 5 squeue -h -o %A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            client timeout 5 scancel $jobs >/dev/null 2>&1 || true
            for n in $(seq 50); do
                [ -z "$(client timeout 5 squeue -h -o %A 2>/dev/null || true)" ] && break
                sleep 0.1
            done
        fi
    fi
    # 2. The daemons, politely (each cleans up its own socket and pid file).
    for p in slurmd.pid slurmctld.pid munge/munged.pid; do
        signal_recorded TERM "$DIR/$p"
    done
    for n in $(seq 30); do
        left=0
        for p in slurmd.pid slurmctld.pid munge/munged.pid; do
            [ -s "$DIR/$p" ] && alive "$(head -n1 "$DIR/$p")" &&
                tr '\0' ' ' 2>/dev/null < "/proc/$(head -n1 "$DIR/$p")/cmdline" | grep -qF -- "$DIR/" && left=1
        done
        [ "$left" -eq 0 ] && break
        sleep 0.1
    done
    # 3. Whatever is left of this instance (a daemon that did not stop, a
    # slurmstepd and its tasks, a daemon whose pid file was never written)
    # and everything it started; then srun and salloc clients of it that are
    # still waiting for it (not what they started).
    for n in $(seq 20); do
        mapfile -t pids < <(instance_pids)
        [ "${#pids[@]}" -eq 0 ] && break
        with_descendants "${pids[@]}" | xargs -r kill -9 2>/dev/null || true
        sleep 0.05
    done
    client_pids | xargs -r kill -9 2>/dev/null || true
    # 4. The state directory.
    if [ -e "$DIR" ]; then
        if dir_is_ours "$DIR" || [ -z "$(ls -A "$DIR" 2>/dev/null)" ]; then
            rm -rf "$DIR"
        else
            echo "$PROG: not removing $DIR: not a test-slurm state directory" >&2
        fi
    fi
    return 0
}

port_in_use() {
    # Any line (-H: no header) is a listener.
    [ "$(ss -Hltn "sport = :$1" 2>/dev/null | wc -l)" -gt 0 ]
}

write_conf() {
    local node=$1
    cat > "$DIR/slurm.conf" <<EOF
# test-slurm.sh: a one-node Slurm for the libcluster tests ($DIR)
ClusterName=lctest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket.2
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes tracked by their parentage, tasks not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# The node has the CPUs this file says, not the machine's, so that tests
# can run more tasks than there are cores.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=30
SlurmctldTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=2
MessageTimeout=10
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

# Start a daemon in the foreground of a new session, with a clean
# environment carrying the marker; prints its pid.
start_daemon() {
    local out=$1
    shift
    setsid env -i PATH="$DAEMON_PATH" HOME=/root LC_SLURM_INSTANCE="$DIR" "$@" \
        < /dev/null >> "$out" 2>&1 &
    echo "$!"
}

show_log() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "--- $f (last lines)" >&2
        tail -n 15 "$f" | sed 's/^/  /' >&2
    done
}

cmd_up() {
    check_settings
    cmd_check || die "this machine cannot run a test Slurm (above)"
    # Interrupted, up leaves nothing (killed, the next up or down cleans up;
    # failed, the state directory stays for its logs until then).
    trap 'trap - INT TERM HUP; echo "$PROG: up interrupted; tearing down" >&2; cmd_down; exit 130' INT TERM HUP
    cmd_down
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
        die "$DIR exists and is not a test-slurm state directory; set LC_SLURM_DIR"
    fi
    local p
    for p in "$PORT" "$((PORT + 1))"; do
        ! port_in_use "$p" || die "port $p is in use on this machine; choose others with LC_SLURM_PORT"
    done
    local node
    node=$(node_name)

    # munged wants its socket's directory searchable by all.
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    : > "$DIR/.lc-slurm"
    mkdir -m 755 "$DIR/munge" "$DIR/spool"
    mkdir -m 700 "$DIR/ctld"
    echo "SLURM_CONF=$DIR/slurm.conf" > "$DIR/env"
    {
        echo "NODE=$node"; echo "PARTITION=$PARTITION"; echo "CPUS=$CPUS"
        echo "PORT=$PORT"; echo "DIR=$DIR"
    } > "$DIR/info"
    write_conf "$node"

    # munged: its own key and socket.
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$DIR/munge/munge.key" --bits=1024 >/dev/null
    else
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=128 count=1 status=none
    fi
    chmod 400 "$DIR/munge/munge.key"
    local mpid cpid dpid
    mpid=$(start_daemon "$DIR/munge/munged.out" /usr/sbin/munged --foreground --force \
        --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket.2" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" --num-threads=2)
    local deadline=$((SECONDS + UP_TIMEOUT))
    while [ ! -S "$DIR/munge/munge.socket.2" ]; do
        if ! alive "$mpid"; then
            show_log "$DIR/munge/munged.out" "$DIR/munge/munged.log"
            die "munged exited (logs above)"
        fi
        [ "$SECONDS" -le "$deadline" ] || die "munged did not create its socket within $UP_TIMEOUT s"
        sleep 0.05
    done

    # slurmctld, then slurmd (which registers the node with it).
    cpid=$(start_daemon "$DIR/slurmctld.out" /usr/sbin/slurmctld -D -c -f "$DIR/slurm.conf")
    while ! client timeout 2 scontrol ping 2>/dev/null | grep -q 'is UP'; do
        if ! alive "$cpid"; then
            show_log "$DIR/slurmctld.out" "$DIR/slurmctld.log"
            die "slurmctld exited (logs above)"
        fi
        [ "$SECONDS" -le "$deadline" ] || { show_log "$DIR/slurmctld.log"; die "slurmctld did not answer within $UP_TIMEOUT s"; }
        sleep 0.1
    done
    dpid=$(start_daemon "$DIR/slurmd.out" /usr/sbin/slurmd -D -N "$node" -f "$DIR/slurm.conf")
    local state=""
    while :; do
        state=$(client timeout 2 sinfo -h -N -n "$node" -o %t 2>/dev/null || true)
        [ "$state" = idle ] && break
        if ! alive "$dpid"; then
            show_log "$DIR/slurmd.out" "$DIR/slurmd.log"
            die "slurmd exited (logs above)"
        fi
        [ "$SECONDS" -le "$deadline" ] ||
            { show_log "$DIR/slurmd.log" "$DIR/slurmctld.log"; die "node $node not idle within $UP_TIMEOUT s (state '$state')"; }
        sleep 0.1
    done
    trap - INT TERM HUP
    echo "$DIR/env"
}

cmd_selftest() {
    check_settings
    local fails=0 t0 t1 out rc envf
    pass() { echo "PASS: $*"; }
    fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
    secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

    if ! cmd_check; then echo "SKIP: this machine cannot run a test Slurm"; return 1; fi
    local tstart
    tstart=$(date +%s.%N)
    t0=$tstart
    if ! envf=$(bash "$SELF" up); then
        fail "up"; bash "$SELF" down || true; return 1
    fi
    t1=$(date +%s.%N)
    pass "up in $(secs "$t0" "$t1") s"
    [ "$envf" = "$DIR/env" ] && [ "$(cat "$envf")" = "SLURM_CONF=$DIR/slurm.conf" ] &&
        pass "up printed $envf: $(cat "$envf")" || fail "up printed '$envf'"
    local node
    node=$(node_name)
    local dpids=() p
    for p in munge/munged.pid slurmctld.pid slurmd.pid; do dpids+=("$(head -n1 "$DIR/$p" 2>/dev/null || true)"); done

    # The clients, with only the env file.
    (
        fails=0
        set -a; . "$envf"; set +a
        unset SLURM_JOB_ID SLURM_JOBID SLURM_NTASKS SLURM_NNODES
        cd /tmp

        out=$(sinfo -h -o '%P %a %D %t %c' 2>&1) || true
        [ "$out" = "$PARTITION* up 1 idle $CPUS" ] && pass "sinfo: $out" || fail "sinfo: '$out'"

        t0=$(date +%s.%N)
        out=$(timeout 20 srun -N1 -n4 hostname 2>&1) && rc=0 || rc=$?
        t1=$(date +%s.%N)
        [ "$rc" -eq 0 ] && [ "$(printf '%s\n' "$out" | grep -cx "$node")" -eq 4 ] &&
            [ "$(printf '%s\n' "$out" | wc -l)" -eq 4 ] &&
            pass "srun -N1 -n4 hostname: 4 lines '$node' in $(secs "$t0" "$t1") s" ||
            fail "srun -N1 -n4 hostname: exit $rc, '$out'"

        t0=$(date +%s.%N)
        out=$(timeout 20 srun -n8 sh -c 'echo "$SLURM_PROCID $SLURM_JOB_ID $SLURM_NTASKS $SLURM_STEP_ID"' 2>&1) && rc=0 || rc=$?
        t1=$(date +%s.%N)
        local ids jobs
        ids=$(printf '%s\n' "$out" | awk '{print $1}' | sort -n | tr '\n' ' ')
        jobs=$(printf '%s\n' "$out" | awk '$2 ~ /^[0-9]+$/ && $3 == 8 {print $2}' | sort -u | wc -l)
        [ "$rc" -eq 0 ] && [ "$ids" = "0 1 2 3 4 5 6 7 " ] && [ "$jobs" -eq 1 ] &&
            pass "srun -n8 on $(nproc) cores: SLURM_PROCID 0..7, one SLURM_JOB_ID, SLURM_NTASKS=8 ($(secs "$t0" "$t1") s)" ||
            fail "srun -n8: exit $rc, '$out'"

        t0=$(date +%s.%N)
        out=$(timeout 20 salloc -n3 sh -c 'echo "$SLURM_NTASKS"; srun -n3 sh -c "echo step \$SLURM_JOB_ID.\$SLURM_STEP_ID"' 2>/dev/null) && rc=0 || rc=$?
        t1=$(date +%s.%N)
        [ "$rc" -eq 0 ] && [ "$(printf '%s\n' "$out" | head -n1)" = 3 ] &&
            [ "$(printf '%s\n' "$out" | grep -cE '^step [0-9]+\.0$')" -eq 3 ] &&
            pass "salloc -n3: SLURM_NTASKS=3 and a 3-task step inside ($(secs "$t0" "$t1") s)" ||
            fail "salloc -n3: exit $rc, '$out'"

        # A step of sleeps, cancelled by step id, then one cancelled by job id.
        local how target pidf job i gone sp sleeps
        for how in step job; do
            pidf=$(mktemp)
            srun -n3 sh -c 'echo $$ >> "$0"; exec sleep 600' "$pidf" > /dev/null 2>&1 &
            sp=$!
            for i in $(seq 200); do [ "$(wc -l < "$pidf")" -ge 3 ] && break; sleep 0.05; done
            job=$(squeue -h -o %A 2>/dev/null | head -n1)
            mapfile -t sleeps < "$pidf"
            if [ "${#sleeps[@]}" -ne 3 ] || [ -z "$job" ]; then
                fail "scancel ($how): the 3 sleeps did not start (job '$job', ${#sleeps[@]} pids)"
                kill "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true; rm -f "$pidf"; continue
            fi
            if [ "$how" = step ]; then target="$job.0"; else target=$job; fi
            t0=$(date +%s.%N)
            scancel "$target" 2>&1 || true
            gone=0
            for i in $(seq 200); do
                if ! kill -0 "$sp" 2>/dev/null; then
                    local any=0
                    for p in "${sleeps[@]}"; do alive "$p" && any=1; done
                    [ "$any" -eq 0 ] && { gone=1; break; }
                fi
                sleep 0.05
            done
            t1=$(date +%s.%N)
            wait "$sp" 2>/dev/null && rc=0 || rc=$?
            out=""
            for p in "${sleeps[@]}"; do alive "$p" && out+=" $p"; done
            for p in $(pgrep -x sleep 2>/dev/null || true); do
                tr '\0' '\n' 2>/dev/null < "/proc/$p/environ" | grep -qx "SLURM_JOB_ID=$job" && out+=" $p"
            done
            [ "$gone" -eq 1 ] && [ -z "$out" ] &&
                pass "scancel $target ($how id): srun (exit $rc) and its 3 sleeps gone in $(secs "$t0" "$t1") s" ||
                fail "scancel $target: srun or sleeps left after $(secs "$t0" "$t1") s:$out"
            rm -f "$pidf"
            for i in $(seq 100); do
                [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.05
            done
        done
        exit "$fails"
    ) && rc=0 || rc=$?
    fails=$((fails + rc))

    # A step left running when down comes: down must end it and its srun.
    local lpidf lsrun lsleeps=() i
    lpidf=$(mktemp)
    client srun -n2 sh -c 'echo $$ >> "$0"; exec sleep 600' "$lpidf" > /dev/null 2>&1 &
    lsrun=$!
    for i in $(seq 200); do [ "$(wc -l < "$lpidf")" -ge 2 ] && break; sleep 0.05; done
    mapfile -t lsleeps < "$lpidf"
    rm -f "$lpidf"
    [ "${#lsleeps[@]}" -eq 2 ] && pass "a step of 2 sleeps left running for down" ||
        fail "the step left for down did not start (${#lsleeps[@]} pids)"

    # Down, and nothing left.
    t0=$(date +%s.%N)
    bash "$SELF" down && rc=0 || rc=$?
    t1=$(date +%s.%N)
    [ "$rc" -eq 0 ] && pass "down in $(secs "$t0" "$t1") s" || fail "down: exit $rc"
    out=""
    for p in "${dpids[@]}"; do [ -n "$p" ] && alive "$p" && out+=" $p($(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline"))"; done
    for p in $(instance_pids); do out+=" $p($(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline"))"; done
    [ -z "$out" ] && pass "no munged, slurmctld, slurmd or slurmstepd of this instance left (were ${dpids[*]})" ||
        fail "processes left:$out"
    out=""
    for p in "$lsrun" "${lsleeps[@]}"; do alive "$p" && out+=" $p($(tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline"))"; done
    [ -z "$out" ] && pass "the step left running is gone, its srun too" || fail "left of the step:$out"
    wait "$lsrun" 2>/dev/null || true
    [ ! -e "$DIR" ] && pass "state directory removed" || fail "$DIR still exists"
    ! port_in_use "$PORT" && ! port_in_use "$((PORT + 1))" && pass "ports $PORT and $((PORT + 1)) free" ||
        fail "ports $PORT/$((PORT + 1)) still in use"
    bash "$SELF" down && pass "down again (already gone) succeeds" || fail "second down failed"
    t1=$(date +%s.%N)

    if [ "$fails" -eq 0 ]; then echo "selftest: all passed in $(secs "$tstart" "$t1") s"; return 0; fi
    echo "selftest: $fails failed"
    return 1
}

case "${1:-}" in
    check) [ "$#" -eq 1 ] || usage; check_settings; cmd_check ;;
    up) [ "$#" -eq 1 ] || usage; cmd_up ;;
    down) [ "$#" -eq 1 ] || usage; cmd_down ;;
    selftest) [ "$#" -eq 1 ] || usage; cmd_selftest ;;
    *) usage ;;
esac
