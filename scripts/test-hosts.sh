#!/usr/bin/env bash
# test-hosts.sh: "hosts" on one machine for the multi-host tests (issue 11).
#
# Each host is a network namespace joined to a bridge in the root namespace,
# with its own address, its own host name (a UTS namespace) and a real sshd
# that accepts a key made for the test. The file system is shared: a binary
# built on this machine runs on every host under the same path. Needs root
# (scripts/install-deps.sh installs openssh-server).
#
#   test-hosts.sh check
#       Exit 0 when this machine can build hosts, else say why and exit 1
#       (tests call it to skip with a message).
#   test-hosts.sh up <name> <n> [--bad-key <i>]...
#       Build hosts 1..n (tearing down an earlier <name> first) and print one
#       line per host, "<hostname> <ip>", also written to <dir>/hosts. Host i
#       given with --bad-key authorizes another key, so it refuses the
#       client's. Waits (at most 10 s) until every sshd answers.
#   test-hosts.sh down <name>
#       Kill every process in the hosts' namespaces (sshd and all it
#       started), delete namespaces, veths and bridge, remove the state
#       directory. Never fails when things are already gone.
#   test-hosts.sh selftest
#       Build 3 hosts (the third with --bad-key) named "selftest", check
#       them (ssh, host names, stdin, multiplexing, the refused key, routes
#       to the head's address and between hosts), tear down, check nothing
#       is left. PASS/FAIL lines; non-zero exit on failure.
#
# Names and addresses, for <name> (lowercase letters, digits, '-'):
#   network    10.X.Y.0/24, X.Y derived from <name> (or LC_HOSTS_NET=10.77.3)
#   bridge     lc<tag>br in the root namespace, address 10.X.Y.1 (the head
#              listens there); <tag> is <name> if at most 9 characters, else
#              a hash of it (interface names have at most 15)
#   host i     namespace and host name lc-<name>-h<i>, address 10.X.Y.(10+i)
#              on its eth0 (veth to the bridge's port lc<tag>v<i>), lo up,
#              default route via 10.X.Y.1; sshd on port 22 of that address
#   names      inside the hosts, /etc/hosts names every host, and the head
#              (lc-<name>-head and this machine's host name: 10.X.Y.1);
#              /etc/resolv.conf points at 127.0.0.1, so other lookups fail at
#              once instead of timing out on an unreachable name server (by
#              ip netns exec's /etc/netns/<ns> bind mounts: /etc/netns/<ns> is
#              a symlink to <dir>/h<i>/etc). The root namespace's /etc/hosts
#              is not touched: address the hosts by IP or by ssh_config alias.
# State directory <dir> = ${LC_HOSTS_DIR:-/tmp/lc-hosts-<name>}:
#   env              NAME, NET, HEAD_IP, BRIDGE, N, DIR (shell-sourceable)
#   hosts            "<hostname> <ip>" per host
#   id_ed25519(.pub) the client key; other_ed25519(.pub) the bad-key hosts' key
#   ssh_config       for clients (ssh -F <dir>/ssh_config root@<ip> ...): the
#                    key, no host key checks, BatchMode, ConnectTimeout 5, and
#                    "Host lc-<name>-h<i>" aliases to the addresses
#   h<i>/            sshd_config, ssh_host_ed25519_key, authorized_keys,
#                    sshd.pid (sshd's PidFile), pid (as started), sshd.log,
#                    etc/hosts, etc/resolv.conf (the host's own)
set -euo pipefail

SSHD=/usr/sbin/sshd
PROG=test-hosts.sh
SELF=$(readlink -f "$0")

die() { echo "$PROG: $*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

check_name() {
    [[ "$1" =~ ^[a-z0-9][a-z0-9-]{0,47}$ ]] ||
        die "bad name '$1' (lowercase letters, digits and '-', at most 48)"
}

# Everything derived from the name; sets NAME TAG BRIDGE DIR NET HEAD_IP.
derive() {
    NAME=$1
    local h
    h=$(printf '%s' "$NAME" | cksum | cut -d' ' -f1)
    if [ "${#NAME}" -le 9 ]; then TAG=$NAME; else TAG=$(printf '%08x' "$h"); fi
    BRIDGE="lc${TAG}br"
    DIR=${LC_HOSTS_DIR:-/tmp/lc-hosts-$NAME}
    if [ -n "${LC_HOSTS_NET:-}" ]; then
        NET=$LC_HOSTS_NET
        [[ "$NET" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] &&
            [ "${BASH_REMATCH[1]}" -le 255 ] && [ "${BASH_REMATCH[2]}" -le 255 ] &&
            [ "${BASH_REMATCH[3]}" -le 255 ] ||
            die "LC_HOSTS_NET must be three octets such as 10.77.3, not '$NET'"
    else
        # 10.64.0 .. 10.191.255: clear of the usual 10.0.x/10.1.x/10.255.x.
        NET="10.$((64 + h % 128)).$(((h / 128) % 256))"
    fi
    HEAD_IP="$NET.1"
}

host_name() { echo "lc-$NAME-h$1"; }
host_ip() { echo "$NET.$((10 + $1))"; }

# The state directory is removed only when it is ours (or empty).
dir_is_ours() {
    [ -f "$1/env" ] && grep -qx "NAME=$NAME" "$1/env"
}

remove_dir() {
    local d=$1
    [ -e "$d" ] || return 0
    if dir_is_ours "$d" || [ -z "$(ls -A "$d" 2>/dev/null)" ]; then
        rm -rf "$d"
    else
        echo "$PROG: not removing $d: not a test-hosts state directory of '$NAME'" >&2
    fi
}

cmd_check() {
    local why=() ns
    [ "$(id -u)" -eq 0 ] || why+=("not root")
    command -v ip >/dev/null 2>&1 || why+=("no 'ip' (iproute2)")
    command -v unshare >/dev/null 2>&1 || why+=("no 'unshare' (util-linux)")
    [ -x "$SSHD" ] || why+=("no $SSHD (openssh-server; scripts/install-deps.sh installs it)")
    command -v ssh >/dev/null 2>&1 || why+=("no 'ssh' (openssh-client)")
    command -v ssh-keygen >/dev/null 2>&1 || why+=("no 'ssh-keygen' (openssh-client)")
    if [ "${#why[@]}" -eq 0 ]; then
        # sshd without PAM refuses a locked account even for a key.
        case "$(getent shadow root 2>/dev/null | cut -d: -f2)" in
            '!'*) why+=("root's password is locked ('!' in /etc/shadow): sshd with UsePAM no refuses root; 'usermod -p \"*\" root' unlocks it for keys only") ;;
        esac
        ns="lc-check-$$"
        if ip netns add "$ns" 2>/dev/null; then
            ip netns exec "$ns" unshare --uts true 2>/dev/null ||
                why+=("cannot enter a UTS namespace inside a network namespace")
            ip netns delete "$ns" 2>/dev/null || true
        else
            why+=("cannot create network namespaces ('ip netns add' failed)")
        fi
    fi
    if [ "${#why[@]}" -gt 0 ]; then
        local w
        for w in "${why[@]}"; do echo "$PROG check: $w" >&2; done
        return 1
    fi
    return 0
}

# Kill pid if it is still one of this state directory's sshds.
kill_recorded() {
    local f=$1 pid
    [ -s "$f" ] || return 0
    pid=$(head -n1 "$f" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/"; then
        kill -9 "$pid" 2>/dev/null || true
    fi
}

cmd_down() {
    check_name "$1"
    derive "$1"
    local dir=$DIR alias ns pids i n
    # A state directory given at `up` time and forgotten since is on the bridge.
    if [ -z "${LC_HOSTS_DIR:-}" ]; then
        alias=$(ip -o link show dev "$BRIDGE" 2>/dev/null | sed -n 's/.* alias lc-hosts:\(\/[^ ]*\).*/\1/p' || true)
        if [ -n "$alias" ]; then dir=$alias; fi
    fi
    DIR=$dir
    # Multiplexing masters (ControlPath inside the state directory).
    if [ -d "$dir" ] && command -v ssh >/dev/null 2>&1; then
        local s
        for s in "$dir"/cm-* "$dir"/*/cm-*; do
            [ -S "$s" ] || continue
            ssh -o ControlPath="$s" -O exit dummy >/dev/null 2>&1 || true
        done
    fi
    # ssh clients still using this state directory (its ssh_config or key).
    if [ -d "$dir" ]; then
        local p
        for p in $(pgrep -x ssh 2>/dev/null || true); do
            tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$dir/" &&
                kill -9 "$p" 2>/dev/null || true
        done
    fi
    # Every process inside the namespaces, then the namespaces.
    local nss=()
    while read -r ns _; do
        [[ "$ns" =~ ^lc-$NAME-h[0-9]+$ ]] && nss+=("$ns")
    done < <(ip netns list 2>/dev/null || true)
    for ns in "${nss[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    if [ -d "$dir" ]; then
        for i in "$dir"/h*/pid "$dir"/h*/sshd.pid; do kill_recorded "$i"; done
    fi
    for ns in "${nss[@]}"; do
        for n in $(seq 50); do
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [ -z "$pids" ] && break
            echo "$pids" | xargs -r kill -9 2>/dev/null || true
            sleep 0.02
        done
    done
    # Bridge ports (deleting one end of a veth deletes both), namespaces, bridge.
    while read -r i; do
        ip link delete "$i" 2>/dev/null || true
    done < <(ip -o link show 2>/dev/null | sed -n "s/^[0-9]*: \(lc${TAG}v[0-9]*\)@.*/\1/p" || true)
    for ns in "${nss[@]}"; do
        ip netns delete "$ns" 2>/dev/null || true
    done
    for ns in /etc/netns/lc-"$NAME"-h*; do
        [[ "$ns" =~ /lc-$NAME-h[0-9]+$ ]] && [ -L "$ns" ] && rm -f "$ns"
    done
    ip link delete "$BRIDGE" 2>/dev/null || true
    remove_dir "$dir"
    return 0
}

cmd_up() {
    check_name "$1"
    local name=$1 n=$2
    shift 2
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] ||
        die "host count must be 1..200, not '$n'"
    local bad=()
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --bad-key)
                [ "$#" -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le "$n" ] ||
                    die "--bad-key needs a host number 1..$n"
                bad+=("$2"); shift 2 ;;
            *) die "unknown argument '$1'" ;;
        esac
    done
    cmd_check || die "this machine cannot build test hosts (above)"

    cmd_down "$name"
    derive "$name"
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
        die "$DIR exists and is not a test-hosts state directory; set LC_HOSTS_DIR"
    fi
    # The network must be free (ours was just removed).
    if [ -n "$(ip -4 -o addr show to "$NET.0/24" 2>/dev/null)" ] ||
       [ -n "$(ip -4 route show to "$NET.0/24" 2>/dev/null)" ]; then
        die "$NET.0/24 is already in use on this machine; choose another with LC_HOSTS_NET=10.a.b"
    fi

    mkdir -p "$DIR"
    chmod 700 "$DIR"
    {
        echo "NAME=$NAME"; echo "NET=$NET"; echo "HEAD_IP=$HEAD_IP"
        echo "BRIDGE=$BRIDGE"; echo "N=$n"; echo "DIR=$DIR"
    } > "$DIR/env"
    ssh-keygen -q -t ed25519 -N '' -C "lc-hosts-$NAME-client" -f "$DIR/id_ed25519"
    if [ "${#bad[@]}" -gt 0 ]; then
        ssh-keygen -q -t ed25519 -N '' -C "lc-hosts-$NAME-other" -f "$DIR/other_ed25519"
    fi
    mkdir -p /run/sshd    # sshd's privilege separation directory
    chmod 755 /run/sshd

    ip link add "$BRIDGE" type bridge stp_state 0 forward_delay 0
    ip link set dev "$BRIDGE" alias "lc-hosts:$DIR"
    ip addr add "$HEAD_IP/24" dev "$BRIDGE"
    ip link set dev "$BRIDGE" up

    local i ns ip hd port veth etc_hosts
    etc_hosts="127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
$HEAD_IP lc-$NAME-head $(hostname)"
    for i in $(seq "$n"); do etc_hosts+=$'\n'"$(host_ip "$i") $(host_name "$i")"; done
    mkdir -p /etc/netns
    : > "$DIR/hosts"
    : > "$DIR/ssh_config"
    for i in $(seq "$n"); do
        ns=$(host_name "$i"); ip=$(host_ip "$i"); hd="$DIR/h$i"
        veth="lc${TAG}v$i"
        mkdir -p "$hd/etc"
        printf '%s\n' "$etc_hosts" > "$hd/etc/hosts"
        printf '# test-hosts.sh: no name server on the test hosts\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "$hd/etc/resolv.conf"
        ln -sfn "$hd/etc" "/etc/netns/$ns"
        ip netns add "$ns"
        ip link add "$veth" type veth peer name "lc${TAG}p$i" netns "$ns"
        ip link set dev "$veth" master "$BRIDGE" up
        ip -n "$ns" link set dev "lc${TAG}p$i" name eth0
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set dev lo up
        ip -n "$ns" link set dev eth0 up
        ip -n "$ns" route add default via "$HEAD_IP"

        ssh-keygen -q -t ed25519 -N '' -C "$ns" -f "$hd/ssh_host_ed25519_key"
        if printf ' %s ' "${bad[@]}" | grep -q " $i "; then
            cp "$DIR/other_ed25519.pub" "$hd/authorized_keys"
        else
            cp "$DIR/id_ed25519.pub" "$hd/authorized_keys"
        fi
        cat > "$hd/sshd_config" <<EOF
# test-hosts.sh: host $ns ($ip)
ListenAddress $ip:22
HostKey $hd/ssh_host_ed25519_key
PidFile $hd/sshd.pid
AuthorizedKeysFile $hd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 10:30:100
AcceptEnv LIBCLUSTER_*
PrintMotd no
UseDNS no
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
        # ip netns exec and unshare exec in place: $! is sshd itself. Every
        # session it forks inherits the namespace's host name.
        setsid ip netns exec "$ns" unshare --uts \
            sh -c 'echo "$1" > /proc/sys/kernel/hostname && exec "$2" -D -e -f "$3"' \
            sh "$ns" "$SSHD" "$hd/sshd_config" \
            < /dev/null >> "$hd/sshd.log" 2>&1 &
        echo "$!" > "$hd/pid"
        echo "$ns $ip" >> "$DIR/hosts"
        printf 'Host %s\n    HostName %s\n' "$ns" "$ip" >> "$DIR/ssh_config"
    done
    cat >> "$DIR/ssh_config" <<EOF
Host *
    User root
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
    ConnectTimeout 5
EOF

    # Wait until every sshd answers with its banner.
    local deadline=$((SECONDS + 10)) ok pid
    for i in $(seq "$n"); do
        ip=$(host_ip "$i"); hd="$DIR/h$i"; pid=$(cat "$hd/pid")
        ok=0
        while [ "$SECONDS" -le "$deadline" ]; do
            if ! kill -0 "$pid" 2>/dev/null; then
                sed 's/^/  /' "$hd/sshd.log" >&2 || true
                die "sshd of host $i ($ip) exited (log above, $hd/sshd.log)"
            fi
            if timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/22" && head -c 4 <&3' _ "$ip" 2>/dev/null |
                grep -q '^SSH-'; then
                ok=1; break
            fi
            sleep 0.05
        done
        [ "$ok" -eq 1 ] || die "sshd of host $i ($ip) did not answer within 10 s ($hd/sshd.log)"
    done
    cat "$DIR/hosts"
}

cmd_selftest() {
    local name=selftest fails=0 t0 t1 out rc dir
    pass() { echo "PASS: $*"; }
    fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

    if ! cmd_check; then echo "SKIP: this machine cannot build test hosts"; return 1; fi
    t0=$(date +%s.%N)
    if ! out=$(bash "$SELF" up "$name" 3 --bad-key 3); then
        fail "up $name 3 --bad-key 3"; bash "$SELF" down "$name" || true; return 1
    fi
    t1=$(date +%s.%N)
    pass "up 3 hosts in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s"
    derive "$name"
    dir=$DIR
    local cfg="$dir/ssh_config" ssh=(ssh -F "$dir/ssh_config")
    local lines
    lines=$(wc -l < "$dir/hosts")
    [ "$out" = "$(cat "$dir/hosts")" ] && [ "$lines" -eq 3 ] &&
        pass "up printed 3 hosts, same as $dir/hosts" || fail "up's output: $out"
    local pids=() i
    for i in 1 2 3; do pids+=("$(cat "$dir/h$i/pid")"); done
    [ "$(cat "$dir/h1/sshd.pid" 2>/dev/null)" = "${pids[0]}" ] &&
        pass "the recorded pid is sshd's own" || fail "pid ${pids[0]} vs sshd.pid $(cat "$dir/h1/sshd.pid" 2>/dev/null)"

    # Host names, by address and by alias.
    for i in 1 2; do
        out=$("${ssh[@]}" "root@$(host_ip $i)" hostname 2>&1) || true
        [ "$out" = "$(host_name $i)" ] && pass "ssh root@$(host_ip $i) hostname: $out" ||
            fail "ssh root@$(host_ip $i) hostname: '$out'"
    done
    out=$("${ssh[@]}" "$(host_name 2)" 'hostname; cat /proc/sys/kernel/hostname; ip -4 -o addr show dev eth0' 2>&1) || true
    [[ "$out" == "$(host_name 2)"$'\n'"$(host_name 2)"$'\n'*"$(host_ip 2)/24"* ]] &&
        pass "ssh by alias $(host_name 2): its name and address" || fail "ssh $(host_name 2): '$out'"
    [ "$(hostname)" != "$(host_name 1)" ] && pass "root namespace keeps its host name ($(hostname))" ||
        fail "root namespace's host name changed"

    # Names inside the hosts.
    out=$("${ssh[@]}" "root@$(host_ip 1)" "getent hosts $(host_name 3) lc-$name-head" 2>&1) || true
    [[ "$out" == "$(host_ip 3)"*"$(host_name 3)"$'\n'"$HEAD_IP"*"lc-$name-head"* ]] &&
        pass "host 1 resolves host 3 and the head" || fail "names on host 1: '$out'"
    t0=$SECONDS
    out=$("${ssh[@]}" "root@$(host_ip 1)" 'getent hosts no-such-host.invalid; echo rc=$?' 2>&1) || true
    [ "$out" = "rc=2" ] && [ $((SECONDS - t0)) -le 3 ] &&
        pass "an unknown name fails at once on a host" || fail "unknown name: '$out' in $((SECONDS - t0)) s"

    # Standard input passes through.
    out=$(echo secret | "${ssh[@]}" "root@$(host_ip 1)" 'read x; echo got:$x' 2>&1) || true
    [ "$out" = "got:secret" ] && pass "stdin passes through ssh" || fail "stdin: '$out'"

    # Environment passes with SendEnv (AcceptEnv LIBCLUSTER_*).
    out=$(LIBCLUSTER_SELFTEST=42 "${ssh[@]}" -o SendEnv=LIBCLUSTER_SELFTEST "root@$(host_ip 1)" 'echo "env:$LIBCLUSTER_SELFTEST"' 2>&1) || true
    [ "$out" = "env:42" ] && pass "SendEnv LIBCLUSTER_* accepted" || fail "SendEnv: '$out'"

    # Multiplexing: two commands, one connection (one authentication in the log).
    local mux=(-o ControlMaster=auto -o "ControlPath=$dir/cm-%h" -o ControlPersist=30)
    local ip1 auth0 auth1
    ip1=$(host_ip 1)
    auth0=$(grep -c 'Accepted publickey' "$dir/h1/sshd.log" || true)
    out=$("${ssh[@]}" "${mux[@]}" "root@$ip1" hostname 2>&1) || true
    if "${ssh[@]}" "${mux[@]}" -O check "root@$ip1" >/dev/null 2>&1; then
        pass "ControlMaster: ssh -O check finds the master"
    else
        fail "ControlMaster: no master after the first connection ($out)"
    fi
    out=$("${ssh[@]}" "${mux[@]}" "root@$ip1" 'echo again; hostname' 2>&1) || true
    auth1=$(grep -c 'Accepted publickey' "$dir/h1/sshd.log" || true)
    [ "$out" = "again"$'\n'"$(host_name 1)" ] && [ "$((auth1 - auth0))" -eq 1 ] &&
        pass "ControlMaster: second command reused the connection (1 authentication for 2)" ||
        fail "ControlMaster: output '$out', $((auth1 - auth0)) authentications"
    # The master is left running on purpose: `down` must end it.

    # The bad-key host refuses.
    out=$("${ssh[@]}" "root@$(host_ip 3)" true 2>&1) && rc=0 || rc=$?
    [ "$rc" -eq 255 ] && [[ "$out" == *"Permission denied"* ]] &&
        pass "bad-key host refuses the key (exit $rc: $out)" || fail "bad-key host: exit $rc, '$out'"
    grep -q 'Connection closed by authenticating user root' "$dir/h3/sshd.log" &&
        pass "bad-key host's sshd log shows the refused authentication" ||
        fail "bad-key host's log: $(tail -n 3 "$dir/h3/sshd.log")"

    # Routes: a namespace reaches the head's address; hosts reach each other.
    local lst port lpid
    lst=$(mktemp)
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
s.settimeout(10)
for _ in range(2):
    c, _a = s.accept(); c.sendall(b"hello-head\n"); c.close()
' "$HEAD_IP" > "$lst" &
    else
        perl -MIO::Socket::INET -e '
$| = 1; my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], LocalPort => 0, Listen => 8, ReuseAddr => 1) or die;
print $s->sockport, "\n";
for (1..2) { my $c = $s->accept or last; print $c "hello-head\n"; close $c }
' "$HEAD_IP" > "$lst" &
    fi
    lpid=$!
    for i in $(seq 100); do [ -s "$lst" ] && break; sleep 0.02; done
    port=$(head -n1 "$lst")
    out=$(timeout 5 ip netns exec "$(host_name 2)" bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -n1 <&3' _ "$HEAD_IP" "$port" 2>&1) || true
    [ "$out" = "hello-head" ] && pass "namespace $(host_name 2) reaches the head at $HEAD_IP:$port" ||
        fail "namespace to head $HEAD_IP:$port: '$out'"
    out=$("${ssh[@]}" "root@$(host_ip 1)" "exec 3<>/dev/tcp/$HEAD_IP/$port && head -n1 <&3" 2>&1) || true
    [ "$out" = "hello-head" ] && pass "a process started through ssh reaches the head" ||
        fail "ssh session to head: '$out'"
    kill "$lpid" 2>/dev/null || true; wait "$lpid" 2>/dev/null || true; rm -f "$lst"
    out=$("${ssh[@]}" "root@$(host_ip 1)" "exec 3<>/dev/tcp/$(host_ip 2)/22 && head -c 7 <&3" 2>&1) || true
    [ "$out" = "SSH-2.0" ] && pass "host 1 reaches host 2's sshd across the bridge" ||
        fail "host 1 to host 2: '$out'"

    # A process started through ssh, left running: down must end it.
    "${ssh[@]}" "root@$(host_ip 2)" 'nohup sleep 300 >/dev/null 2>&1 < /dev/null &' || true
    out=$(ip netns pids "$(host_name 2)" | wc -l)
    [ "$out" -ge 2 ] && pass "a stray process runs on host 2 ($out processes in the namespace)" ||
        fail "stray process on host 2: $out processes"

    # Down, and nothing left.
    local nspids=()
    for i in 1 2 3; do
        while read -r rc; do nspids+=("$rc"); done < <(ip netns pids "$(host_name $i)" 2>/dev/null || true)
    done
    t0=$(date +%s.%N)
    bash "$SELF" down "$name" && rc=0 || rc=$?
    t1=$(date +%s.%N)
    [ "$rc" -eq 0 ] && pass "down in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s" || fail "down: exit $rc"
    out=$(ip netns list | grep -E "^lc-$name-h" || true)
    [ -z "$out" ] && pass "no namespace left" || fail "namespaces left: $out"
    out=$(ip -o link show | grep -E "lc${TAG}(br|v[0-9])" || true)
    [ -z "$out" ] && pass "no bridge or veth left" || fail "links left: $out"
    out=""
    # A zombie (killed, its parent init not yet done with it) is no process left.
    for i in $(printf '%s\n' "${pids[@]}" "${nspids[@]}" | sort -u); do
        [ -r "/proc/$i/stat" ] && [ "$(sed 's/^.*) \(.\).*/\1/' "/proc/$i/stat" 2>/dev/null)" != Z ] &&
            out+=" $i($(tr '\0' ' ' < "/proc/$i/cmdline" 2>/dev/null))"
    done
    out+=$(pgrep -f -- "$dir/" | tr '\n' ' ' || true)
    [ -z "${out// /}" ] && pass "no sshd, session, stray or ControlMaster process left (${#nspids[@]} were in the namespaces)" || fail "processes left:$out"
    [ ! -e "$dir" ] && pass "state directory removed" || fail "$dir still exists"
    out=$(ls -d /etc/netns/lc-"$name"-h* 2>/dev/null || true)
    [ -z "$out" ] && pass "no /etc/netns entry left" || fail "left: $out"
    bash "$SELF" down "$name" && pass "down again (already gone) succeeds" || fail "second down failed"

    if [ "$fails" -eq 0 ]; then echo "selftest: all passed"; return 0; fi
    echo "selftest: $fails failed"
    return 1
}

case "${1:-}" in
    check) [ "$#" -eq 1 ] || usage; cmd_check ;;
    up) [ "$#" -ge 3 ] || usage; shift; cmd_up "$@" ;;
    down) [ "$#" -eq 2 ] || usage; cmd_down "$2" ;;
    selftest) [ "$#" -eq 1 ] || usage; cmd_selftest ;;
    *) usage ;;
esac
