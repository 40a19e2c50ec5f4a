# TLS between processes (issue 11), included from runtests.jl after
# launchers.jl (uses its `run_child` and `child_result`, and runtests.jl's
# JULIA, PROJECT, `@progress`). This suite's own cluster runs plain on
# loopback, so a head with `init(tls = :always)` runs in a child process
# and prints what it saw as a `RESULT` line, tested here. (Across hosts,
# cross-host, is launchers.jl's SSH test, with LIBCLUSTER_TLS=on.)

const TLS_HEAD = raw"""
    using LibCluster, LibCluster.API
    LibCluster.init(tls = :always)
    R = Dict{Symbol,Any}()
    ids = addprocs(2)
    R[:ids] = ids
    R[:ospids] = [remotecall_fetch(getpid, p) for p in ids]
    R[:encrypted] = [LibCluster.connection_encrypted(p) for p in ids]
    R[:env] = [remotecall_fetch(() -> get(ENV, "LIBCLUSTER_TLS", ""), p) for p in ids]
    R[:closure] = let k = 5
        remotecall_fetch(x -> x + k, ids[1], 37)
    end
    big = rand(UInt8, 8 << 20)
    R[:big] = remotecall_fetch(identity, ids[2], big) == big
    @everywhere status_of(f) = try f(); "no error" catch e; e isa ClusterError ? e.status : string(nameof(typeof(e))) end
    # A worker connects to another on first use: no connection before it.
    R[:before] = remotecall_fetch(q -> status_of(() -> LibCluster.connection_encrypted(q)), ids[1], ids[2])
    R[:w2w] = remotecall_fetch(q -> (remotecall_fetch(myid, q), LibCluster.connection_encrypted(q)), ids[1], ids[2])
    R[:self] = status_of(() -> LibCluster.connection_encrypted(myid()))
    R[:unknown] = status_of(() -> LibCluster.connection_encrypted(99))
    # What TLS costs here (compared with this suite's plain connections).
    R[:rt_us] = minimum(@elapsed(remotecall_fetch(myid, ids[1])) for _ in 1:300) * 1e6
    R[:big_ms] = minimum(@elapsed(remotecall_fetch(identity, ids[2], big)) for _ in 1:5) * 1e3
    rmprocs(ids[2])
    R[:gone] = status_of(() -> LibCluster.connection_encrypted(ids[2]))
    println("RESULT ", repr(R))
    """

@testset "TLS" begin
    @progress "TLS"
    workdir = mktempdir()
    file = joinpath(workdir, "tls_head.jl")
    write(file, TLS_HEAD)
    # init's tls wins over the environment, for the head and its workers.
    code, out = run_child(`$JULIA --startup-file=no --project=$PROJECT $file`, 120;
                          env = Dict("LIBCLUSTER_TLS" => "off"))
    R = child_result(out)
    (code == 0 && R !== nothing) || println(out)
    @test code == 0
    @test R isa Dict
    if R isa Dict
        @test R[:ids] == [2, 3]
        @test R[:encrypted] == [true, true]
        @test R[:env] == ["always", "always"]        # the head told its workers
        @test R[:closure] == 42
        @test R[:big]
        @test R[:before] == LC.CAPI.CLUSTER_ERR_NOT_READY
        @test R[:w2w] == (3, true)                     # worker to worker, under TLS too
        @test R[:self] == "ArgumentError"
        @test R[:unknown] == "ErrorException"
        @test R[:gone] == "ProcessExitedException"
        # The child's workers left with it.
        within(15, "the TLS head's workers to exit") do
            while any(p -> success(`kill -0 $p`), R[:ospids])
                sleep(0.05)
            end
        end
        @test !any(p -> success(`kill -0 $p`), R[:ospids])

        # This suite's cluster: plain on loopback (unless LIBCLUSTER_TLS says always).
        w = workers()[1]
        always = lowercase(strip(get(ENV, "LIBCLUSTER_TLS", ""))) in ("always", "all")
        @test LC.connection_encrypted(w) == always
        big = rand(UInt8, 8 << 20)
        @test remotecall_fetch(identity, w, big) == big
        rt_us = minimum(@elapsed(remotecall_fetch(myid, w)) for _ in 1:300) * 1e6
        big_ms = minimum(@elapsed(remotecall_fetch(identity, w, big)) for _ in 1:5) * 1e3
        @info "TLS on loopback (best of runs; 8 MiB there and back): round trip " *
              "$(round(R[:rt_us], digits = 1)) µs, 8 MiB $(round(R[:big_ms], digits = 1)) ms; plain " *
              "$(round(rt_us, digits = 1)) µs, $(round(big_ms, digits = 1)) ms"
    end

    @test LC.tls_code(:off) == LC.CAPI.CLUSTER_TLS_OFF
    @test LC.tls_code(:cross_host) == LC.CAPI.CLUSTER_TLS_CROSS_HOST
    @test LC.tls_code(:always) == LC.CAPI.CLUSTER_TLS_ALWAYS
    # Wrong values are errors, even once the cluster runs (init changes nothing then).
    e = try LC.init(tls = :on) catch e; e end
    @test e isa ArgumentError && occursin(":off, :cross_host or :always", e.msg)
    @test_throws ArgumentError LC.tls_code("always")
    @test_throws ArgumentError LC.tls_code(true)
    @test_throws ArgumentError LC.connection_encrypted(myid())
    @test_throws ErrorException LC.connection_encrypted(LAST_ID[] + 1000)
    @test !(:connection_encrypted in names(LibCluster.API))     # not a Distributed name
end
