# LibCluster.ClusterDicts (issue 8), included from runtests.jl (uses its
# `within` and `@progress`). Expected results are ClusterDicts.jl's test
# matrix (amitmurthy/ClusterDicts.jl, test/runtests.jl) with every operation
# checked against a plain Dict, and beyond it what ClusterDicts lists as
# TODO: concurrent writers, a member's death, a release that leaves nothing.
# The workers killed here are this file's own.

using LibCluster.ClusterDicts
const CD = LibCluster.ClusterDicts

"ClusterDicts' test keys and values: `i` as the type (as a string for String and Any)."
function getkv(i, K, V)
    k = K in (String, Any) ? "$i" : convert(K, i)
    v = V in (String, Any) ? "$i" : convert(V, i)
    k, v
end

"The same contents as the reference Dict, through every reading function."
function same_as(d, ref)
    ok = length(d) == length(ref) && isempty(d) == isempty(ref)
    ok &= Dict(collect(d)) == ref
    ok &= sort!(collect(keys(d)), by = repr) == sort!(collect(keys(ref)), by = repr)
    ok &= sort!(collect(values(d)), by = repr) == sort!(collect(values(ref)), by = repr)
    ok &= all(k -> haskey(d, k) && d[k] == ref[k] && get(d, k, nothing) == ref[k], keys(ref))
    ok
end

function common_tests(d, K, V)
    ref = Dict{K,V}()
    @test isempty(d) && length(d) == 0 && collect(d) == Pair{K,V}[]
    k, v = getkv(0, K, V)
    d[k] = v; ref[k] = v
    @test !isempty(d)
    @test d[k] == v
    @test length(d) == 1
    k, v = getkv(1, K, V)
    @test (d[k] = v) == v
    ref[k] = v
    @test length(d) == 2 && d[k] == v
    k, v = getkv(2, K, V)
    @test_throws KeyError d[k]
    e = try d[k] catch e; e end
    @test e == KeyError(k)
    @test !haskey(d, k)
    @test get(d, k, 1234) == get(ref, k, 1234) == 1234
    @test get(() -> :f, d, k) == :f
    @test get!(d, k, v) == get!(ref, k, v) == v
    @test get(d, k, 1234) == v
    @test get!(d, k, getkv(7, K, V)[2]) == v          # there: not replaced
    @test get!(() -> error("not called"), d, k) == v
    newv = V in (String, Any) ? "3" : convert(V, 3)
    d[k] = newv; ref[k] = newv
    @test d[k] == newv
    @test same_as(d, ref)
    k4, v4 = getkv(4, K, V)
    @test get!(() -> v4, d, k4) == get!(() -> v4, ref, k4) == v4
    @test pop!(d, k4) == pop!(ref, k4) == v4
    @test_throws KeyError pop!(d, k4)
    @test pop!(d, k4, :none) == pop!(ref, k4, :none) == :none
    @test delete!(d, k4) === d                       # not there: nothing happens
    @test delete!(d, getkv(0, K, V)[1]) === d
    delete!(ref, getkv(0, K, V)[1])
    @test same_as(d, ref)
    if K !== Any && V !== Any
        # Dict's conversions: a key or value that does not convert is an error...
        @test_throws Exception d[:TYPEERR] = v
        @test_throws Exception d[k] = :TYPEERR
        @test_throws Exception d[:TYPEERR] = :TYPEERR
        # ... and a lookup of a key no key can equal finds nothing.
        @test !haskey(d, :TYPEERR) && get(d, :TYPEERR, 0) == 0 && pop!(d, :TYPEERR, 0) == 0
        @test_throws KeyError d[:TYPEERR]
        if K === Int
            @test d[1.0] == ref[1.0]                 # equal keys (isequal) of another type, as Dict
            @test !haskey(d, 1.5)
        end
    end
    @test same_as(d, ref)
    ref
end

function test_d(d, K, V)
    ref = common_tests(d, K, V)
    members = d.pids
    if d isa GlobalDict
        # the same everywhere, and read there without a message
        k, v = getkv(100, K, V)
        d[k] = v
        k, v = getkv(101, K, V)
        d[k] = v
        ref[k] = v
        @test all(p -> remotecall_fetch((D, K) -> D[K], p, d, k) == v, members)
        parts = [remotecall_fetch(localpart, p, d) for p in members]
        @test all(==(parts[1]), parts)
        # ValueF: computed on each member
        k, _ = getkv(102, K, V)
        vf = V in (String, Any) ? ValueF(() -> string(myid())) : ValueF(() -> convert(V, myid()))
        d[k] = vf
        got = [remotecall_fetch((D, K) -> (D[K], localpart(D)[K]), p, d, k) for p in members]
        @test got == [(x, x) for x in (V in (String, Any) ? string.(members) : convert.(V, members))]
    else
        # spread over the members by hash, each key on `r` of them
        r = min(2, length(members))
        for i in 1001:1030
            k, v = getkv(i, K, V)
            d[k] = v
            ref[k] = v
        end
        @test sum(p -> remotecall_fetch(D -> length(localpart(D)), p, d), members) == r * length(d)
        @test same_as(d, ref)
        # ValueF: computed on the key's owner
        results = Int[]
        owners = Int[]
        for i in 1200:1229
            k, _ = getkv(i, K, V)
            d[k] = V in (String, Any) ? ValueF(() -> string(myid())) : ValueF(() -> convert(V, myid()))
            push!(results, V in (String, Any) ? parse(Int, d[k]) : convert(Int, d[k]))
            push!(owners, CD.owner(d, k))
        end
        @test results == owners
        @test all(in(members), results)
        length(members) > 1 && @test length(unique(results)) > 1
    end
end

@testset "ClusterDicts" begin
    @progress "ClusterDicts"
    ws = within(120, "addprocs for the dict tests") do
        addprocs(3; topology = LibCluster.TOPOLOGY[], lazy = something(LibCluster.LAZY[], true))
    end
    LAST_ID[] = max(LAST_ID[], maximum(ws))
    @everywhere using LibCluster.ClusterDicts
    @everywhere struct DictKey
        a::Int
        b::String
    end
    try

    @testset "the original's matrix" begin
        @progress "ClusterDicts: the original's matrix"
        t = @elapsed for pids in Any[PidsAll(), PidsWorkers(), ws[1:2], :default],
                         KV in Any[(Int, Int), (Int, Float64), (String, String), :default],
                         name in Any["foobar", :default],
                         dtype in (GlobalDict, DistributedDict)
            kw = Pair{Symbol,Any}[]
            name != :default && push!(kw, :name => name)
            K, V = KV == :default ? (Any, Any) : KV
            KV != :default && push!(kw, :ktype => K, :vtype => V)
            d = pids == :default ? dtype(; kw...) : dtype(pids; kw...)
            @test d isa dtype{K,V}
            name != :default && @test d.name == name
            want = pids == :default || pids isa PidsWorkers ? workers() : pids isa PidsAll ? procs() : ws[1:2]
            @test d.pids == want
            test_d(d, K, V)
            delete!(d)
        end
        @info "ClusterDicts matrix (64 dicts) took $(round(t, digits = 1)) s"
    end

    @testset "member sets" begin
        @progress "ClusterDicts: member sets"
        @test collect(PidsAll()) == procs() && length(PidsWorkers()) == nworkers()
        @test 1 in PidsAll() && !(1 in PidsWorkers()) && collect(Pids([3, 2, 3])) == [3, 2]
        @test CD.pids_of(procs()) isa PidsAll && CD.pids_of(reverse(workers())) isa PidsWorkers
        @test CD.pids_of(ws[1:2]) isa Pids
        d = DistributedDict(ws; replication = 1)
        foreach(i -> d[i] = i, 1:30)
        @test sum(p -> remotecall_fetch(D -> length(localpart(D)), p, d), ws) == 30
        @test isempty(localpart(d))                  # the head is no member
        delete!(d)
        d = DistributedDict(ws; replication = 3)
        foreach(i -> d[i] = i, 1:30)
        @test all(p -> remotecall_fetch(D -> localpart(D), p, d) == Dict{Any,Any}(i => i for i in 1:30), ws)
        delete!(d)
    end

    @testset "the same name: the same spec opens, another is an error" begin
        @progress "ClusterDicts: the same name: the same spec opens, another is an error"
        a = GlobalDict(ws[1:2]; name = "spec", ktype = Int, vtype = Int)
        b = GlobalDict(ws[1:2]; name = "spec", ktype = Int, vtype = Int)
        a[1] = 10
        @test b[1] == 10 && b.name == a.name
        for other in (() -> GlobalDict(ws[1:2]; name = "spec", ktype = Int, vtype = Float64),
                      () -> GlobalDict(ws[1:2]; name = "spec", ktype = String, vtype = Int),
                      () -> GlobalDict(ws; name = "spec", ktype = Int, vtype = Int),
                      () -> DistributedDict(ws[1:2]; name = "spec", ktype = Int, vtype = Int))
            e = try other() catch e; e end
            @test e isa ErrorException && occursin("with name spec but different specifications", e.msg)
        end
        @test b[1] == 10                             # the failed creations changed nothing
        delete!(a)
        e = try b[1] catch e; e end                  # released: every handle to it fails
        @test e isa ArgumentError && occursin("released", e.msg)
        c = GlobalDict(ws[1:2]; name = "spec", ktype = Int, vtype = Float64)   # the name is free
        @test isempty(c)
        delete!(c)
        d = DistributedDict(ws; name = "rspec", replication = 2)
        @test DistributedDict(ws; name = "rspec").name == "rspec"      # 0: the default, 2
        e = try DistributedDict(ws; name = "rspec", replication = 1) catch e; e end
        @test e isa ErrorException
        delete!(d)
        g = GlobalDict(ws)                           # names made up by the head are unique
        h = GlobalDict(ws)
        @test g.name != h.name && !isempty(g.name)
        delete!(g); delete!(h)
    end

    @testset "keys encode alike in every process" begin
        @progress "ClusterDicts: keys encode alike in every process"
        samples = Any[1, -7, 2.5, -0.0, "s", "", :sym, (1, "a", :b), (1, (2.0, (3, (4,)))), Int32(7),
                      UInt8(3), 'c', nothing, true, [1, 2, 3], Any[1, "a"], DictKey(1, "x"), 1 // 3, (a = 1, b = "x")]
        mine = [CD.encode_bytes(k) for k in samples]
        @test all(w -> remotecall_fetch(ks -> [CD.encode_bytes(k) for k in ks], w, samples) == mine, ws)
        @test length(unique(mine)) == length(mine)
        # keys made on each process find the same entries
        for dtype in (GlobalDict, DistributedDict)
            d = dtype(ws[1:2])
            for (i, k) in enumerate(samples)
                d[k] = i
            end
            for p in [1; ws]
                got = remotecall_fetch(D -> [D[1], D[2.5], D["s"], D[:sym], D[(1, "a", :b)], D[(1, (2.0, (3, (4,))))],
                                             D[Int32(7)], D[DictKey(1, "x")], D[[1, 2, 3]], D[(a = 1, b = "x")]], p, d)
                @test got == [1, 3, 5, 7, 8, 9, 10, 17, 15, 19]
            end
            @test length(d) == length(samples)
            @test Set(keys(d)) == Set(samples)
            delete!(d)
        end
    end

    @testset "a handle passed to members and non-members" begin
        @progress "ClusterDicts: a handle passed to members and non-members"
        for dtype in (GlobalDict, DistributedDict)
            d = dtype(ws[1:2])                       # the head and ws[3] are no members
            i = 1
            for p in [1; ws]
                i += 1; k = i; v = string(i)
                d[k] = v
                @test remotecall_fetch((D, K) -> D[K], p, d, k) == v
                i += 1; k = i; v = string(i)
                remotecall_fetch((D, K, V) -> (D[K] = V; nothing), p, d, k, v)
                @test d[k] == v
                @test remotecall_fetch(D -> (D[:vf] = ValueF(myid); D[:vf]), p, d) in ws[1:2]
                @test remotecall_fetch((D, K) -> (get!(D, K, "x"), haskey(D, K), length(D)), p, d, k) ==
                      (v, true, length(d))
            end
            @test remotecall_fetch(D -> (D.name, D.pids, typeof(D)), ws[3], d) == (d.name, ws[1:2], typeof(d))
            # a handle passed on again, from a non-member
            @test remotecall_fetch(D -> remotecall_fetch((E, K) -> E[K], 1, D, 2), ws[3], d) == "2"
            delete!(d)
        end
    end

    @testset "errors" begin
        @progress "ClusterDicts: errors"
        d = DistributedDict(ws)
        e = try d[1] = ValueF(() -> error("boom")) catch e; e end
        @test e isa RemoteException && occursin("boom", sprint(showerror, e))
        @test !haskey(d, 1)
        g = GlobalDict(ws)
        e = try g[1] = ValueF(() -> error("boom")) catch e; e end
        @test e isa RemoteException && !haskey(g, 1)
        delete!(d); delete!(g)
        @test_throws ArgumentError d[1] = 2
        @test_throws ArgumentError length(g)
        @test_throws ArgumentError DistributedDict(ws; replication = -1)
        e = try DistributedDict([ws[1], 999]) catch e; e end
        @test e isa ErrorException && occursin("no process with id", e.msg)
        @test sprint(show, g) == "GlobalDict{Any,Any}($(repr(g.name)), $(ws))"
    end

    @testset "concurrent writers from every process" begin
        @progress "ClusterDicts: concurrent writers from every process"
        everyone = procs()
        for dtype in (GlobalDict, DistributedDict)
            d = dtype(PidsAll())
            writer = (D, n) -> (for i in 1:n; D[i % 10] = (myid(), i); end; myid())
            fs = [remotecall(writer, p, d, 150) for p in everyone]
            @test within(60, "the concurrent writers") do
                sort!(map(fetch, fs))
            end == everyone
            parts = [remotecall_fetch(localpart, p, d) for p in everyone]
            merged = Dict{Any,Any}()
            if dtype === GlobalDict
                @test all(==(parts[1]), parts)       # identical replicas
                @test length(parts[1]) == 10
            else                                     # every key's replicas agree
                agree = true
                for part in parts, (k, v) in part
                    agree &= get!(merged, k, v) == v
                end
                @test agree && length(merged) == 10
            end
            # each key ends with some writer's last write to it (every writer writes the same sequence)
            now = Dict(collect(d))
            @test length(now) == 10 && all(((k, v),) -> v[1] in everyone && v[2] == (k == 0 ? 150 : 140 + k), now)
            if dtype === GlobalDict
                @test now == parts[1]
            else
                @test now == merged
            end
            # concurrent get!: one value stored, every caller gets it
            gets = [remotecall(D -> [get!(D, "g$j", myid()) for j in 1:20], p, d) for p in everyone]
            got = within(60, "the concurrent get!s") do
                map(fetch, gets)
            end
            @test all(==(got[1]), got)
            @test got[1] == [d["g$j"] for j in 1:20]
            @test all(in(everyone), got[1])
            if dtype === GlobalDict
                parts = [remotecall_fetch(localpart, p, d) for p in everyone]
                @test all(==(parts[1]), parts)
            end
            delete!(d)
        end
    end

    @testset "a member killed: replication 2 loses no acknowledged write" begin
        @progress "ClusterDicts: a member killed: replication 2 loses no acknowledged write"
        d = DistributedDict(ws; replication = 2)
        g = GlobalDict(ws)
        for i in 1:100
            d[i] = i; g[i] = i
        end
        victim = ws[3]
        ospid = remotecall_fetch(getpid, victim)
        acked = Int[]
        failed = Any[]
        stop = Ref(false)
        # writes until told to stop (sets are retried by the library across the death)
        writer = @async begin
            i = 100
            while !stop[]
                i += 1
                try
                    d[i] = i
                    g[i] = -i
                    push!(acked, i)
                catch e
                    push!(failed, (i, e))
                end
            end
        end
        # and reads back what was acknowledged, at random
        bad = Any[]
        reader = @async while !stop[]
            if isempty(acked)
                sleep(0.001)
                continue
            end
            i = acked[rand(1:length(acked))]
            try
                d[i] == i || push!(bad, (i, :d, d[i]))
                g[i] == -i || push!(bad, (i, :g, g[i]))
            catch e
                push!(bad, (i, e))
            end
        end
        within(30, "the first writes") do
            while length(acked) < 20
                sleep(0.005)
            end
        end
        at = length(acked)
        run(`kill -9 $ospid`)
        t = @elapsed within(30, "the death to be noticed") do
            while victim in procs()
                sleep(0.005)
            end
        end
        noticed = length(acked)
        within(30, "writes after the death") do     # the dicts keep serving
            while length(acked) < noticed + 100 && isempty(failed)
                sleep(0.005)
            end
        end
        stop[] = true
        within(30, "the writer and the reader to stop") do
            wait(writer)
            wait(reader)
        end
        @info "ClusterDicts: $(victim) killed after $at acknowledged writes, noticed $(round(t, digits = 2)) s " *
              "and $(noticed - at) writes later; $(length(acked) - noticed) more since"
        @test isempty(failed)
        @test isempty(bad)
        survivors = ws[1:2]
        within(30, "the dicts to drop the dead member") do
            # (a handle learns of the new membership from its next operation)
            while (length(d); length(g); d.pids != survivors || g.pids != survivors)
                sleep(0.02)
            end
        end
        want = 100 + length(acked)
        @test length(d) == want && length(g) == want
        @test all(i -> d[i] == i, 1:100) && all(i -> d[i] == i, acked)
        @test all(i -> g[i] == -i, acked)
        # replication restored on the survivors; the GlobalDict whole on each
        within(30, "replication to be restored") do
            while sum(p -> remotecall_fetch(D -> length(localpart(D)), p, d), survivors) != 2 * want
                sleep(0.05)
            end
        end
        @test all(p -> length(remotecall_fetch(localpart, p, g)) == want, survivors)
        # and it keeps serving
        d[:after] = 1; g[:after] = 2
        @test d[:after] == 1 && remotecall_fetch(G -> G[:after], survivors[2], g) == 2
        delete!(d); delete!(g)
    end

    @testset "release leaves nothing anywhere" begin
        @progress "ClusterDicts: release leaves nothing anywhere"
        d = DistributedDict(PidsAll(); name = "gone")
        d[1] = 1
        @test "gone" in local_dicts()
        delete!(d)
        @test all(p -> remotecall_fetch(local_dicts, p) == String[], procs())
        e = DistributedDict(PidsAll(); name = "gone", ktype = Int)   # the name is free
        delete!(e)
        @test all(p -> remotecall_fetch(local_dicts, p) == String[], procs())
    end

    finally
        live = filter(w -> w in procs(), ws)
        isempty(live) || rmprocs(live)
    end
end
