# Workers on other hosts (issue 11), included from runtests.jl (uses its
# `within`, `@progress`, JULIA, PROJECT). Expected results are
# Distributed's `addprocs(machines)` and SlurmClusterManager.jl's
# `addprocs(SlurmManager())`, tested for real: hosts are network namespaces
# on a bridge with their own host names and sshds (scripts/test-hosts.sh),
# Slurm is a one-node Slurm of this file's own (scripts/test-slurm.sh).
# Each part is skipped, saying why, where its harness cannot run.
#
# The heads run in child processes (this suite's head listens on loopback
# and has workers of its own): one listening on every interface, and for
# tunnel mode one on loopback, which the workers reach only through the
# tunnel. Each prints what it saw as a `RESULT` line, tested here.

const REPO = normpath(joinpath(@__DIR__, "..", "..", "..", ".."))
const HOSTS_SH = joinpath(REPO, "scripts", "test-hosts.sh")
const SLURM_SH = joinpath(REPO, "scripts", "test-slurm.sh")
# The remote workers' julia: ssh passes no environment, and Debian's Julia
# 1.5 needs the libunwind that scripts/julia puts on its library path.
const REMOTE_JULIA = joinpath(REPO, "scripts", "julia")
const HOSTS_NAME = "jltest"
const SLURM_ENV = Dict("LC_SLURM_DIR" => "/tmp/lc-slurm-jltest", "LC_SLURM_PORT" => "16867")

"Whether `script check` passes; else the reasons it gives."
function harness_check(script; env = Dict{String,String}())
    out = IOBuffer()
    p = run(pipeline(ignorestatus(setenv(`$script check`, merge(copy(ENV), env))); stdout = out, stderr = out))
    (p.exitcode == 0, strip(String(take!(out))))
end

"""
Runs `cmd` (stdout and stderr together) for at most `secs`, killing it
then; returns (exit code, output). Bounded: a stuck child fails the test.
"""
function run_child(cmd::Cmd, secs; env = Dict{String,String}())
    out = IOBuffer()
    p = run(pipeline(ignorestatus(setenv(cmd, merge(copy(ENV), env))); stdout = out, stderr = out); wait = false)
    if timedwait(() -> process_exited(p), Float64(secs); pollint = 0.05) === :timed_out
        kill(p, Base.SIGKILL)
        wait(p)
        return (-1, String(take!(out)) * "\n[killed after $secs s]")
    end
    (p.exitcode, String(take!(out)))
end

"The `RESULT` line a child printed, evaluated (a Dict), or nothing."
function child_result(output)
    for l in split(output, '\n')
        startswith(l, "RESULT ") && return Core.eval(Main, Meta.parse(l[8:end]))
    end
    nothing
end

# The Julia processes left in host i's namespace (by their program: the
# remote shell's command line names julia too).
julia_left(i) = filter(split(read(`ip netns pids lc-$HOSTS_NAME-h$i`, String))) do p
    argv0 = first(split(try read("/proc/$p/cmdline", String) catch; "" end, '\0'))
    occursin("julia", basename(argv0))
end

const SSH_HEAD = raw"""
    using LibCluster, LibCluster.API
    using LibCluster.ClusterUtils: describepids
    dir, wrapper, workdir, slow = ARGS
    ips = [split(l)[2] for l in readlines(joinpath(dir, "hosts"))]
    flags = `-F $(joinpath(dir, "ssh_config"))`
    R = Dict{Symbol,Any}()
    R[:t3] = @elapsed ids = addprocs([("root@$(ips[1])", 1), "root@$(ips[2])", "root@$(ips[3]) 10.0.0.99"];
                                     sshflags = flags, exename = wrapper, dir = workdir,
                                     env = ["LC_LAUNCH_TEST" => "over ssh"])
    R[:ids] = ids
    R[:hosts] = [remotecall_fetch(gethostname, p) for p in ids]
    R[:env] = [remotecall_fetch(() -> get(ENV, "LC_LAUNCH_TEST", ""), p) for p in ids]
    R[:pwd] = [remotecall_fetch(pwd, p) for p in ids]
    R[:project] = remotecall_fetch(Base.active_project, ids[2]) == Base.active_project()
    R[:cross] = remotecall_fetch(q -> remotecall_fetch(gethostname, q), ids[1], ids[3])
    # LIBCLUSTER_TLS=on (cross-host): every connection here crosses hosts.
    R[:encrypted] = [LibCluster.connection_encrypted(p) for p in ids]
    R[:cross_encrypted] = remotecall_fetch(q -> LibCluster.connection_encrypted(q), ids[1], ids[3])
    R[:tls_env] = [remotecall_fetch(() -> get(ENV, "LIBCLUSTER_TLS", ""), p) for p in ids]
    # A worker's output reaches the head (its ssh session outlives addprocs).
    R[:printed] = remotecall_fetch(() -> (println("a line from ", gethostname()); flush(stdout); true), ids[1])
    R[:describe] = describepids(procs())
    R[:procs_of] = procs(ids[2])
    R[:bad_t] = @elapsed R[:bad] = try
        addprocs(["root@$(ips[4])"]; sshflags = flags, exename = wrapper); "no error"
    catch e
        sprint(showerror, e)
    end
    R[:tolerated] = addprocs(["root@$(ips[2])", "root@$(ips[4])"]; sshflags = flags, exename = wrapper,
                             tolerate_failures = true)
    R[:tolerated_host] = remotecall_fetch(gethostname, R[:tolerated][1])
    R[:badkw] = try addprocs(["root@$(ips[1])"]; sshflag = flags); "" catch e; string(nameof(typeof(e))) end
    # A program that never joins: the call's own startup timeout ends it.
    R[:slow_t] = @elapsed R[:slow] = try
        addprocs(["root@$(ips[3])"]; sshflags = flags, exename = slow, startup_timeout = 0.5); "no error"
    catch e
        sprint(showerror, e)
    end
    R[:nworkers] = nworkers()
    rmprocs(workers())
    R[:after] = workers()
    println("RESULT ", repr(R))
    """

# The tunnel mode's head: on loopback (LIBCLUSTER_LISTEN), master_worker
# (tunnelled workers listen on their own loopback).
const TUNNEL_HEAD = raw"""
    using LibCluster, LibCluster.API
    dir, wrapper = ARGS
    ips = [split(l)[2] for l in readlines(joinpath(dir, "hosts"))]
    flags = `-F $(joinpath(dir, "ssh_config"))`
    R = Dict{Symbol,Any}()
    R[:t] = @elapsed ids = addprocs(["root@$(ips[1])", "root@$(ips[2])"]; sshflags = flags, exename = wrapper,
                                    tunnel = true, multiplex = false, topology = :master_worker)
    R[:head] = LibCluster.head_address()[1]
    R[:hosts] = [remotecall_fetch(gethostname, p) for p in ids]
    R[:sum] = remotecall_fetch(+, ids[2], 1, 2)
    # Loopback at both ends (ssh carries them, encrypted): plain under cross-host.
    R[:encrypted] = [LibCluster.connection_encrypted(p) for p in ids]
    R[:listen] = remotecall_fetch(() -> LibCluster.head_address()[1], ids[1])
    R[:notunnel] = try
        addprocs(["root@$(ips[1])"]; sshflags = flags, exename = wrapper, topology = :master_worker); "no error"
    catch e
        sprint(showerror, e)
    end
    rmprocs(ids)
    R[:after] = workers()
    println("RESULT ", repr(R))
    """

const SLURM_HEAD = raw"""
    using LibCluster, LibCluster.API
    wrapper, workdir = ARGS
    R = Dict{Symbol,Any}()
    m = SlurmManager(launch_timeout = 40, srun_args = `--cpus-per-task=1`)
    R[:ntasks] = m.ntasks
    R[:jobid] = m.jobid == parse(Int, ENV["SLURM_JOB_ID"])
    R[:t] = @elapsed ids = addprocs(m; exename = wrapper, dir = workdir, env = ["LC_LAUNCH_TEST" => "slurm"])
    R[:ids] = ids
    R[:tasks] = [remotecall_fetch(() -> (ENV["SLURM_JOB_ID"], ENV["SLURM_PROCID"], ENV["SLURM_STEP_ID"],
                                         get(ENV, "SLURM_CPUS_PER_TASK", ""), ENV["LC_LAUNCH_TEST"], pwd()), p)
                 for p in ids]
    R[:cross] = remotecall_fetch(q -> remotecall_fetch(myid, q), ids[1], ids[2])
    # scancel ends the step: its workers leave the cluster.
    run(`scancel $(ENV["SLURM_JOB_ID"]).$(R[:tasks][1][3])`)
    R[:left_t] = @elapsed begin
        t0 = time()
        while !isempty(intersect(workers(), ids)) && time() - t0 < 20
            sleep(0.05)
        end
    end
    R[:after] = workers()
    R[:dead] = try remotecall_fetch(myid, ids[1]); "" catch e; string(nameof(typeof(e))) end
    println("RESULT ", repr(R))
    """

@testset "launchers" begin

@testset "addprocs over SSH" begin
    @progress "addprocs over SSH"
    ok, why = harness_check(HOSTS_SH)
    if !ok
        @info "SKIPPED: addprocs over SSH: the test hosts cannot run here: $why"
        @test_skip false
    else
    up = run_child(`$HOSTS_SH up $HOSTS_NAME 4 --bad-key 4`, 30)
    try
        @test up[1] == 0
        hosts = [split(l) for l in split(strip(up[2]), '\n')]
        @test length(hosts) == 4
        names, ips = first.(hosts), last.(hosts)
        dir = "/tmp/lc-hosts-$HOSTS_NAME"
        flags = `-F $dir/ssh_config`
        workdir = realpath(mktempdir())
        slow = joinpath(workdir, "never-joins")
        write(slow, "#!/bin/sh\nexec sleep 30\n")
        chmod(slow, 0o755)
        file = joinpath(workdir, "ssh_head.jl")
        write(file, SSH_HEAD)
        code, out = run_child(`$JULIA --startup-file=no --project=$PROJECT $file $dir $REMOTE_JULIA $workdir $slow`, 90;
                              env = Dict("LIBCLUSTER_LISTEN" => "0.0.0.0", "LIBCLUSTER_TLS" => "on"))
        R = child_result(out)
        (code == 0 && R !== nothing) || println(out)
        @test code == 0
        @test R isa Dict
        if R isa Dict
            @info "addprocs over ssh to 3 hosts (3 Julia workers): $(round(R[:t3], digits = 2)) s"
            # Each worker on its host, started there with dir and env.
            @test R[:ids] == [2, 3, 4]
            @test R[:hosts] == names[1:3]
            @test R[:env] == fill("over ssh", 3)
            @test R[:pwd] == fill(workdir, 3)
            @test R[:project]
            @test R[:cross] == names[3]              # worker to worker, across hosts
            @test R[:encrypted] == [true, true, true]   # TLS across hosts (LIBCLUSTER_TLS=on)
            @test R[:cross_encrypted]
            @test R[:tls_env] == fill("cross-host", 3)  # the head told them, over ssh
            @test R[:printed] && occursin("a line from $(names[1])", out)
            # describepids: one group per host, the head's on its own.
            @test sort(collect(values(R[:describe]))) == [[1], [2], [3], [4]]
            @test R[:procs_of] == [3]
            # A host refusing the key: named, with ssh's reason, promptly.
            @test occursin(ips[4], R[:bad]) && occursin("Permission denied", R[:bad])
            @test R[:bad_t] < 15
            # tolerate_failures: the good host's worker joins; the bad one is a warning.
            @test length(R[:tolerated]) == 1
            @test R[:tolerated_host] == names[2]
            @test occursin("warn: addprocs: worker", out) && count("Permission denied", out) >= 1
            @test R[:badkw] == "ArgumentError"       # as Distributed, a misspelt keyword
            @test occursin("startup timeout of 500ms", R[:slow])
            @test R[:slow_t] < 8
            @test R[:nworkers] == 4
            @test R[:after] == [1]
        end
        # Nothing of the child's is left on any host.
        within(15, "the remote workers to exit") do
            while any(i -> !isempty(julia_left(i)), 1:3)
                sleep(0.05)
            end
        end
        @test all(i -> isempty(julia_left(i)), 1:3)

        # Tunnel mode, from a head on loopback: only the tunnel reaches it.
        file = joinpath(workdir, "tunnel_head.jl")
        write(file, TUNNEL_HEAD)
        code, out = run_child(`$JULIA --startup-file=no --project=$PROJECT $file $dir $REMOTE_JULIA`, 60;
                              env = Dict("LIBCLUSTER_LISTEN" => "127.0.0.1", "LIBCLUSTER_TLS" => "on"))
        R = child_result(out)
        (code == 0 && R !== nothing) || println(out)
        @test code == 0
        @test R isa Dict
        if R isa Dict
            @info "addprocs over ssh, tunnel mode (2 Julia workers): $(round(R[:t], digits = 2)) s"
            @test R[:head] == "127.0.0.1"
            @test R[:hosts] == names[1:2]
            @test R[:sum] == 3
            @test R[:encrypted] == [false, false]       # tunnelled: loopback at both ends
            # The workers listen on their own loopback: reached only through the head.
            @test R[:listen] == "127.0.0.1"
            @test occursin("cannot reach", R[:notunnel]) && occursin("listen_host", R[:notunnel])
            @test R[:after] == [1]
        end
    finally
        run_child(`$HOSTS_SH down $HOSTS_NAME`, 30)
    end
    end
end

@testset "addprocs(SlurmManager())" begin
    @progress "addprocs(SlurmManager())"
    # Outside an allocation, as SlurmClusterManager.jl: an error naming what is missing.
    e = withenv("SLURM_JOB_ID" => nothing, "SLURM_JOBID" => nothing) do
        try SlurmManager() catch e; e end
    end
    @test e isa ErrorException && occursin("SLURM_JOB_ID", e.msg)
    ok, why = harness_check(SLURM_SH; env = SLURM_ENV)
    if !ok
        @info "SKIPPED: addprocs(SlurmManager()): Slurm cannot run here: $why"
        @test_skip false
    else
    up = run_child(`$SLURM_SH up`, 40; env = SLURM_ENV)
    try
        @test up[1] == 0
        envfile = strip(split(strip(up[2]), '\n')[end])
        conf = Dict(String(kv[1]) => String(kv[2])
                    for kv in (split(l, '=', limit = 2) for l in readlines(envfile)) if length(kv) == 2)
        workdir = realpath(mktempdir())
        file = joinpath(workdir, "slurm_head.jl")
        write(file, SLURM_HEAD)
        # The head inside an allocation of 2 tasks, as `salloc -n 2 julia script.jl`.
        code, out = run_child(`salloc -n 2 -- $JULIA --startup-file=no --project=$PROJECT $file $REMOTE_JULIA $workdir`, 90;
                              env = merge(SLURM_ENV, conf))
        R = child_result(out)
        (code == 0 && R !== nothing) || println(out)
        @test code == 0
        @test R isa Dict
        if R isa Dict
            @info "addprocs(SlurmManager()) in salloc -n 2: $(round(R[:t], digits = 2)) s; " *
                  "workers left $(round(R[:left_t], digits = 2)) s after scancel"
            @test R[:ntasks] == 2 && R[:jobid]
            @test R[:ids] == [2, 3]
            jobs = unique(first.(R[:tasks]))
            @test length(jobs) == 1                        # the head's allocation
            @test sort([t[2] for t in R[:tasks]]) == ["0", "1"]   # one task each, one step
            @test length(unique(t[3] for t in R[:tasks])) == 1
            @test all(t -> t[4] == "1", R[:tasks])         # srun_args passed through
            @test all(t -> t[5] == "slurm" && t[6] == workdir, R[:tasks])
            @test R[:cross] == 3
            @test R[:after] == [1]
            @test R[:left_t] < 15
            @test R[:dead] == "ProcessExitedException"
        end
    finally
        run_child(`$SLURM_SH down`, 40; env = SLURM_ENV)
    end
    end
end

end # testset "launchers"
