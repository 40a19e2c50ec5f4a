# addprocs over SSH to 3 hosts (1 Julia worker each), LibCluster against
# Julia's own Distributed, in the same run: the hosts are network namespaces
# with real sshds (scripts/test-hosts.sh, needs root; skipped, saying why,
# without it). Each library runs in a head process of its own, which adds
# and removes the 3 workers `1 + BENCH_SSH_ROUNDS` times: the first call in
# the process (compilation included), then the median of the others.
#
#   - LibCluster: its head listens on every interface (LIBCLUSTER_LISTEN,
#     the hosts reach it over the bridge), multiplexing on (its default)
#     and off (Distributed's default);
#   - Distributed (Julia 1.5's): its head connects to the workers, which
#     listen on their host's address (getipaddr(), the namespace's only
#     interface): no bind option is needed on either side; tunnel off.
#
# Both get the same sshflags (-F the harness's ssh_config) and the same
# julia (scripts/julia: ssh passes no environment, and Debian's Julia 1.5
# needs the libunwind that wrapper puts on its library path).
#
# Run: scripts/julia --project=bindings/julia/LibCluster bindings/julia/LibCluster/bench/bench_ssh.jl
# (bench.jl runs it at its end.) BENCH_SSH_ROUNDS: default 5.

using Printf
using Statistics: median

const REPO = normpath(joinpath(@__DIR__, "..", "..", "..", ".."))
const HOSTS_SH = joinpath(REPO, "scripts", "test-hosts.sh")
const REMOTE_JULIA = joinpath(REPO, "scripts", "julia")
const PROJECT = normpath(joinpath(@__DIR__, ".."))
const NAME = "jlbench"
const ROUNDS_SSH = parse(Int, get(ENV, "BENCH_SSH_ROUNDS", "5"))

# What each head runs: ARGS = state dir, julia, rounds[, multiplex]. It
# prints "times t1 t2 ..." (seconds per addprocs of the 3 workers, each
# checked on its host before it is removed again).
const ROUNDS_LOOP = raw"""
    dir, julia, rounds = ARGS[1], ARGS[2], parse(Int, ARGS[3])
    hosts = [split(l) for l in readlines(joinpath(dir, "hosts"))]
    machines = ["root@$(h[2])" for h in hosts]
    flags = `-F $(joinpath(dir, "ssh_config"))`
    times = Float64[]
    for _ in 1:rounds
        t = @elapsed ids = ADD(machines; sshflags = flags, exename = julia, tunnel = false, KW...)
        sort([remotecall_fetch(gethostname, p) for p in ids]) == sort(first.(hosts)) ||
            error("workers on the wrong hosts")
        push!(times, t)
        rmprocs(ids; waitfor = 30)
    end
    println("times ", join(times, " "))
    """

const LIBCLUSTER_HEAD = "using LibCluster, LibCluster.API\nconst ADD = addprocs\n" *
                        "const KW = (multiplex = parse(Bool, ARGS[4]),)\n" * ROUNDS_LOOP
const DISTRIBUTED_HEAD = "using Distributed\nconst ADD = addprocs\nconst KW = NamedTuple()\n" * ROUNDS_LOOP

function head_times(code, args, env)
    file = tempname() * ".jl"
    write(file, code)
    out = IOBuffer()
    cmd = setenv(`$(Base.julia_cmd()) --startup-file=no --project=$PROJECT $file $args`, merge(copy(ENV), env))
    p = run(pipeline(ignorestatus(cmd); stdout = out, stderr = out); wait = false)
    if timedwait(() -> process_exited(p), 300.0; pollint = 0.1) === :timed_out
        kill(p, Base.SIGKILL)
    end
    wait(p)
    text = String(take!(out))
    line = findfirst(l -> startswith(l, "times "), split(text, '\n'))
    line === nothing && error("the head failed:\n$text")
    parse.(Float64, split(split(text, '\n')[line])[2:end])
end

function row(what, ours, theirs, unit)
    ratio = ours / theirs
    @printf("%-44s %12.2f %12.2f %9.2fx  %s\n", what, ours, theirs, ratio, unit)
    ratio
end

function main()
    check = IOBuffer()
    if !success(pipeline(`$HOSTS_SH check`; stdout = check, stderr = check))
        println("addprocs over SSH: SKIPPED (the test hosts cannot run here: ", strip(String(take!(check))), ")")
        return
    end
    out = read(`$HOSTS_SH up $NAME 3`, String)
    dir = "/tmp/lc-hosts-$NAME"
    try
        n = 1 + ROUNDS_SSH
        lib_env = Dict("LIBCLUSTER_LISTEN" => "0.0.0.0")
        lc = head_times(LIBCLUSTER_HEAD, [dir, REMOTE_JULIA, string(n), "true"], lib_env)
        dist = head_times(DISTRIBUTED_HEAD, [dir, REMOTE_JULIA, string(n)], Dict{String,String}())
        lc_nomux = head_times(LIBCLUSTER_HEAD, [dir, REMOTE_JULIA, string(n), "false"], lib_env)
        println()
        println(@sprintf("%-44s %12s %12s %10s", "addprocs over SSH, 3 hosts x 1 worker", "LibCluster", "Distributed", "ratio"))
        row("first in process", lc[1], dist[1], "s")
        row("again (median of $(ROUNDS_SSH))", median(lc[2:end]), median(dist[2:end]), "s")
        row("  multiplex off, first in process", lc_nomux[1], dist[1], "s")
        row("  multiplex off, again (median of $(ROUNDS_SSH))", median(lc_nomux[2:end]), median(dist[2:end]), "s")
    finally
        run(pipeline(`$HOSTS_SH down $NAME`; stdout = devnull, stderr = devnull))
    end
end

main()
