# Worker pools, pmap and @distributed (issue 7), included from runtests.jl.
# Expected results are Distributed's documented behaviour. The workers
# killed here are this file's own (added here), so that the other tests
# keep theirs.

@testset "pools and pmap" begin
    @progress "pools and pmap"
    ws = within(120, "addprocs for the pool tests") do
        # (with the settings of the workers running now, which earlier tests chose)
        addprocs(3; topology = LibCluster.TOPOLOGY[], lazy = something(LibCluster.LAZY[], true))
    end
    LAST_ID[] = max(LAST_ID[], maximum(ws))
    # A value that counts its deserializations on each process (CachingPool).
    @everywhere procs() begin
        using Serialization
        struct PoolTracked
            x::Int
        end
        const POOL_TRACKED_LOADS = Ref(0)
        pool_tracked_loads() = POOL_TRACKED_LOADS[]
        function Serialization.deserialize(s::Serialization.AbstractSerializer, ::Type{PoolTracked})
            POOL_TRACKED_LOADS[] += 1
            PoolTracked(Serialization.deserialize(s))
        end
        function Serialization.serialize(s::Serialization.AbstractSerializer, t::PoolTracked)
            Serialization.serialize_type(s, PoolTracked, false)
            Serialization.serialize(s, t.x)
        end
    end

    try

    @testset "WorkerPool" begin
        p = WorkerPool(ws[1:2])
        @test length(p) == 2
        @test isready(p)
        @test sort(workers(p)) == ws[1:2]
        a = take!(p)
        b = take!(p)
        @test sort([a, b]) == ws[1:2]
        @test !isready(p)
        @test length(p) == 2                 # busy members count
        # take! waits in its task only, until a put!
        t = @async take!(p)
        sleep(0.1)
        @test !istaskdone(t)
        put!(p, a)
        @test within(10, "a waiting take!") do
            fetch(t)
        end == a
        put!(p, a)
        put!(p, b)
        push!(p, ws[3])
        @test length(p) == 3
        @test sort(workers(p)) == ws
        # Calls on a pool: the worker is busy until the call completes.
        q = WorkerPool([ws[3]])
        f = remotecall(() -> (sleep(0.3); myid()), q)
        sleep(0.05)
        @test !isready(q)
        @test fetch(f) == ws[3]
        within(10, "the worker back in the pool") do
            while !isready(q)
                sleep(0.01)
            end
        end
        @test remotecall_fetch(+, q, 1, 2) == 3
        @test fetch(remotecall_wait(myid, q)) == ws[3]
        @test isready(q)
        @test remote_do(x -> nothing, q, 1) === nothing
        @test within(10, "remote_do on a pool") do
            take!(q)
        end == ws[3]
        put!(q, ws[3])
        e = try remotecall_fetch(() -> error("boom"), q) catch e; e end
        @test e isa RemoteException && e.captured.ex.msg == "boom"
        @test isready(q)                      # a failed call gives its worker back
        @test remote(q, x -> 2x)(21) == 42
        @test nworkers(p) == 3
    end

    @testset "default_worker_pool" begin
        d = default_worker_pool()
        @test d isa AbstractWorkerPool
        @test sort(workers(d)) == sort(workers())
        @test default_worker_pool() === d
        @test remotecall_fetch(myid, d) in workers()
        @test remote(x -> myid())(0) in workers()
    end

    @testset "pmap: order, shape, collections" begin
        p = WorkerPool(ws[1:2])
        @test pmap(x -> 2x, p, 1:100) == collect(2:2:200)
        @test pmap(x -> 2x, 1:10) == collect(2:2:20)               # default pool
        @test pmap(x -> 2x, 1:10) isa Vector{Int}
        @test pmap(x -> myid(), p, 1:20) ⊆ ws[1:2]
        # several collections are zipped
        @test pmap(+, p, 1:4, 11:14) == [12, 14, 16, 18]
        @test pmap((a, b, c) -> a * b + c, p, 1:3, [10, 20, 30], (1, 1, 1)) == [11, 41, 91]
        # the shape of the input, as Distributed's (map's)
        m = pmap(x -> x^2, p, reshape(1:6, 2, 3))
        @test m == reshape((1:6) .^ 2, 2, 3) && size(m) == (2, 3)
        @test pmap(x -> x, p, Int[]) == Any[]
        @test pmap(string, p, [:a, :b]) == ["a", "b"]
        # values without the compact encoding, and generators
        @test pmap(x -> (x, [x], Dict(x => x)), p, 1:3) == [(i, [i], Dict(i => i)) for i in 1:3]
        @test pmap(x -> x + 1, p, (i for i in 1:5 if isodd(i))) == [2, 4, 6]
        # results come in input order whatever the time each element takes
        @test pmap(x -> (sleep(rand() * 0.01); x), p, 1:50) == collect(1:50)
        # a global used by the function travels with it
        global pool_test_offset = 1000
        @test pmap(x -> x + pool_test_offset, p, 1:3) == [1001, 1002, 1003]
        @test pmap(x -> x, p, 1:3; distributed = false) == [1, 2, 3]
        # a pmap inside a pmap (its pool has the worker running the outer element)
        r = within(60, "a pmap inside a pmap") do
            pmap(x -> sum(pmap(y -> y * x, 1:4)), p, 1:6)
        end
        @test r == [10x for x in 1:6]
    end

    @testset "pmap: batch_size" begin
        p = WorkerPool(ws[1:2])
        @test pmap(x -> 3x, p, 1:1000; batch_size = :auto) == collect(3:3:3000)
        @test pmap(x -> 3x, p, 1:101; batch_size = 7) == collect(3:3:303)
        @test pmap(x -> 3x, p, 1:3; batch_size = 10) == [3, 6, 9]
        @test_throws ArgumentError pmap(x -> x, p, 1:3; batch_size = 0)
        # errors in batch mode: on_error per failed element
        r = pmap(x -> iseven(x) ? error("foo") : x, p, 1:10; batch_size = 3, on_error = e -> -1)
        @test r == [isodd(i) ? i : -1 for i in 1:10]
        # no handler: the first error, as a RemoteException
        e = try pmap(x -> x == 5 ? error("five") : x, p, 1:10; batch_size = 3) catch e; e end
        @test e isa RemoteException && e.captured.ex.msg == "five"
    end

    @testset "pmap: on_error, retry_delays, retry_check" begin
        p = WorkerPool(ws[1:2])
        # Distributed's documented examples
        r = pmap(x -> iseven(x) ? error("foo") : x, p, 1:4; on_error = identity)
        @test r[[1, 3]] == [1, 3] && r[2] isa ErrorException && r[4] == ErrorException("foo")
        @test pmap(x -> iseven(x) ? error("foo") : x, p, 1:4; on_error = ex -> 0) == [1, 0, 3, 0]
        # no handler: the error is thrown as a RemoteException from its worker
        e = try pmap(x -> x == 3 ? error("three") : x, p, 1:6) catch e; e end
        @test e isa RemoteException && e.pid in ws[1:2] && e.captured.ex == ErrorException("three")
        # retries: a failure that goes away
        @everywhere pool_flaky = Dict{Int,Int}()
        flaky = x -> (n = get(pool_flaky, x, 0); pool_flaky[x] = n + 1; n < 2 && x == 4 ? error("flaky") : x)
        q = WorkerPool([ws[1]])
        @test pmap(flaky, q, 1:6; retry_delays = [0.01, 0.01]) == collect(1:6)
        @test remotecall_fetch(() -> pool_flaky[4], ws[1]) == 3        # 1 + 2 retries
        # retries exhausted: the exception itself (Distributed's retry unwraps it)
        e = try pmap(x -> x == 2 ? error("always") : x, p, 1:3; retry_delays = zeros(2)) catch e; e end
        @test e == ErrorException("always")
        # retry_check sees (state, exception) and decides
        seen = Any[]
        e = try
            pmap(x -> x == 2 ? throw(ArgumentError("no")) : x, p, 1:3; retry_delays = zeros(3),
                 retry_check = (s, ex) -> (push!(seen, ex); (s, false)))
        catch e
            e
        end
        @test e == ArgumentError("no") && length(seen) == 1 && seen[1] == ArgumentError("no")
        empty!(seen)
        e = try
            pmap(x -> x == 2 ? error("again") : x, p, 1:3; retry_delays = zeros(3),
                 retry_check = (s, ex) -> (push!(seen, ex); (s, true)))
        catch e
            e
        end
        @test e == ErrorException("again") && length(seen) == 3
        # a check returning a Bool only
        @test pmap(x -> x, p, 1:3; retry_delays = [0.0], retry_check = (s, ex) -> true) == [1, 2, 3]
        # on_error before retrying (documented): a value means no retry
        calls = Ref(0)
        r = pmap(x -> x == 2 ? error("x") : x, p, 1:3; retry_delays = zeros(3), on_error = e -> (calls[] += 1; -2))
        @test r == [1, -2, 3] && calls[] == 1
        # on_error that rethrows: retried, then thrown
        e = try
            pmap(x -> x == 2 ? error("y") : x, p, 1:3; retry_delays = zeros(1), on_error = e -> rethrow())
        catch e
            e
        end
        @test e == ErrorException("y")
    end

    @testset "CachingPool" begin
        cp = CachingPool(ws[1:2])
        @test length(cp) == 2 && sort(workers(cp)) == ws[1:2]
        before = Dict(w => remotecall_fetch(pool_tracked_loads, w) for w in ws[1:2])
        t = PoolTracked(5)
        g = let t = t
            y -> t.x + y
        end
        @test pmap(g, cp, 1:50) == collect(6:55)
        @test pmap(g, cp, 1:50) == collect(6:55)
        @test remotecall_fetch(g, cp, 1) == 6
        @test fetch(remotecall(g, cp, 2)) == 7
        loads = Dict(w => remotecall_fetch(pool_tracked_loads, w) - before[w] for w in ws[1:2])
        # what g captures went to each worker once
        @test all(n -> n <= 1, values(loads)) && sum(values(loads)) >= 1
        owner = myid()
        # the cache entries of this process on worker w (named functions stay for good)
        cached(w) = remotecall_fetch(o -> sort([k[2] for k in keys(LibCluster.FN_CACHE) if k[1] == o]), w, owner)
        mine = collect(values(cp.ids))
        ofpool() = sum(count(in(mine), cached(w)) for w in ws[1:2])
        @test ofpool() >= 1
        @test clear!(cp) === cp
        within(10, "clear! to free the cached functions") do
            while ofpool() > 0
                sleep(0.02)
            end
        end
        @test ofpool() == 0
        @test isempty(cp.ids)
        # still usable after clear!: sent again
        @test pmap(g, cp, 1:3) == [6, 7, 8]
        clear!(cp)
        # a map over a plain pool leaves nothing cached behind
        p = WorkerPool(ws[1:2])
        before = Dict(w => cached(w) for w in ws[1:2])
        pmap(g, p, 1:10)
        within(10, "a map's function to be freed") do
            while any(w -> cached(w) != before[w], ws[1:2])
                sleep(0.02)
            end
        end
        @test all(w -> cached(w) == before[w], ws[1:2])
        @test_throws ErrorException serialize(IOBuffer(), cp)
    end

    @testset "a WorkerPool passed to another process is the same pool there" begin
        shared = WorkerPool(ws[1:2])
        isremote, w = remotecall_fetch(sp -> (sp isa LibCluster.RemotePool, take!(sp)), ws[3], shared)
        @test isremote
        @test w in ws[1:2]
        other = take!(shared)                       # the worker ws[3] took is out here too
        @test other != w && other in ws[1:2]
        @test !isready(shared)
        remotecall_fetch((sp, x) -> put!(sp, x), ws[3], shared, w)
        @test isready(shared)
        @test take!(shared) == w
        put!(shared, w); put!(shared, other)
        @test remotecall_fetch(sp -> (length(sp), sort(workers(sp))), ws[3], shared) == (2, sort(ws[1:2]))
        @test remotecall_fetch(sp -> remotecall_fetch(myid, sp), ws[3], shared) in ws[1:2]
        @test remotecall_fetch(sp -> pmap(x -> 2x, sp, 1:10), ws[3], shared) == collect(2:2:20)
        @test length(shared) == 2 && isready(shared)   # every worker given back
        # Back on its owner, the copy is the pool itself.
        back = remotecall_fetch(identity, ws[3], shared)
        @test back isa LibCluster.RemotePool && take!(back) in ws[1:2]
    end

    @testset "progress" begin
        p = WorkerPool(ws[1:2])
        reports = Tuple{Int,Int}[]
        r = pmap(x -> (sleep(0.002); x), p, 1:200; progress = (d, n) -> push!(reports, (d, n)))
        @test r == collect(1:200)
        @test !isempty(reports) && reports[end] == (200, 200)
        @test all(t -> t[2] == 200, reports) && issorted(first.(reports))
        out = mktemp() do path, io
            redirect_stderr(io) do
                pmap(x -> x, p, 1:10; progress = true)
            end
            flush(io)
            read(path, String)
        end
        @test occursin("10/10", out)
    end

    @testset "@distributed" begin
        @test LibCluster.splitrange(1, 11, 3) == [1:4, 5:8, 9:11]
        @test LibCluster.splitrange(1, 2, 3) == [1:1, 2:2]
        @test LibCluster.splitrange(1, 0, 3) == UnitRange{Int}[]
        @test !isdefined(LibCluster.API, :splitrange) || !(:splitrange in names(LibCluster.API))
        @test (@distributed (+) for i in 1:100
            i
        end) == 5050
        global pool_test_scale = 3
        @test (@distributed (+) for i in 1:10
            i * pool_test_scale
        end) == 165
        @test (@distributed vcat for i in 1:6
            [i]
        end) == collect(1:6)                   # reduced in range order
        r = @distributed vcat for i in 1:nworkers()
            [myid()]
        end
        @test length(r) == nworkers() && r ⊆ workers()     # chunks run on workers
        # without a reducer: returns at once a Task; @sync waits
        t = @distributed for i in 1:4
            sleep(0.3)
        end
        @test t isa Task
        @test !istaskdone(t)
        wait(t)
        @test istaskdone(t)
        el = @elapsed @sync @distributed for i in 1:2
            sleep(0.5)
        end
        @test el >= 0.5
        # errors: the worker's exception
        e = try
            @distributed (+) for i in 1:4
                i == 3 ? error("dfor") : i
            end
        catch e
            e
        end
        @test e isa RemoteException && e.captured.ex.msg == "dfor"
        # dynamic balancing: chunks of 2
        @test (@distributed chunk = 2 (+) for i in 1:21
            i
        end) == 231
        @test LibCluster.distributed_for(x -> x^2, 1:10; reducer = +, chunk = 3) == 385
        @test LibCluster.distributed_for(x -> x^2, 1:10; reducer = +) == 385
        @test LibCluster.distributed_for(x -> x, 1:3) isa Task
    end

    @testset "pmap with workers killed" begin
        # A worker SIGKILLed mid-map: retries run only the lost elements, on
        # the workers left, and every result is right.
        victim = ws[1]
        p = WorkerPool(ws)
        f = x -> (myid() == victim && x >= 40 && run(`kill -9 $(getpid())`); sleep(0.001); 10x)
        r = within(60, "pmap with a worker killed, under retry_delays") do
            pmap(f, p, 1:300; retry_delays = [0.05, 0.05])
        end
        @test r == collect(10:10:3000)
        @test !(victim in workers(p)) && length(p) == 2
        # pool skipping the dead worker
        @test sort(workers(p)) == ws[2:3]
        @test remotecall_fetch(myid, p) in ws[2:3]
        # under on_error: each result right or an error value
        victim = ws[2]
        f2 = x -> (myid() == victim && x >= 40 && run(`kill -9 $(getpid())`); sleep(0.001); 10x)
        r = within(60, "pmap with a worker killed, under on_error") do
            pmap(f2, p, 1:300; on_error = identity)
        end
        @test length(r) == 300
        @test all(i -> r[i] == 10i || r[i] isa ProcessExitedException, 1:300)
        @test any(x -> x isa ProcessExitedException && x.worker_id == victim, r)
        # no handler: the death is the error
        q = WorkerPool([ws[3]])
        victim = ws[3]
        e = within(60, "pmap with its only worker killed") do
            try
                pmap(x -> (x == 5 && run(`kill -9 $(getpid())`); x), q, 1:20)
            catch e
                e
            end
        end
        @test e isa ProcessExitedException && e.worker_id == ws[3]
        # every worker dead: a clear error, no hang
        e = within(30, "pmap with every worker dead") do
            try pmap(x -> x, q, 1:10) catch e; e end
        end
        @test e isa ErrorException && e.msg == "No active worker available in pool"
        e = try take!(q) catch e; e end
        @test e isa ErrorException && e.msg == "No active worker available in pool"
        r = within(30, "pmap with every worker dead, on_error") do
            pmap(x -> x, q, 1:3; on_error = identity)
        end
        @test all(x -> x isa ErrorException, r)
        e = within(30, "pmap with every worker dead, retries") do
            try pmap(x -> x, q, 1:3; retry_delays = [0.01, 0.01]) catch e; e end
        end
        @test e isa ErrorException && e.msg == "No active worker available in pool"
        within(10, "the deaths to be noticed") do
            while any(w -> w in procs(), ws)
                sleep(0.05)
            end
        end
    end

    finally
        live = filter(w -> w in procs(), ws)
        isempty(live) || rmprocs(live)
    end
end
