# LibCluster.ClusterUtils (issue 10), included from runtests.jl (uses its
# `within`, `@progress`, JULIA, PROJECT, LAST_ID). Expected results are
# ClusterUtils.jl's (pearcemc/ClusterUtils.jl: its README examples are its
# tests, adapted to one machine), with what it lacks or gets wrong at its
# HEAD: hosts told apart for real (two workers in a UTS namespace of their
# own, under another host name), a working broadcast_shared, an exchange
# that fails naming a participant killed during it, save/load refusing
# damaged files and surviving a writer killed mid-save.
# The workers started here are this file's own, and are removed at its end.

using LibCluster.ClusterUtils
const CU = LibCluster.ClusterUtils

const OTHER_HOST = "cu-otherhost"

"A program running Julia in a UTS namespace of its own named `host` (nothing if unshare cannot)."
function namespaced_julia(host)
    ok = try
        success(pipeline(`unshare --uts sh -c "hostname $host && test \$(hostname) = $host"`; stdout = devnull, stderr = devnull))
    catch
        false
    end
    ok || return nothing
    file = joinpath(mktempdir(), "julia-$host")
    write(file, """
        #!/bin/sh
        exec unshare --uts sh -c 'hostname "\$0" && exec "\$@"' $host $(Base.julia_cmd().exec[1]) "\$@"
        """)
    chmod(file, 0o755)
    file
end

"This cluster's segments of broadcast_shared in /dev/shm (their names there)."
shared_here(name = "") = filter(n -> startswith(n, "lcshm.$(getpid())-") && occursin(".clusterutils.$name", n),
                                readdir("/dev/shm"))

@testset "ClusterUtils" begin
    @progress "ClusterUtils"
    dir = mktempdir()
    # A head of its own (a child process) with a worker under another host
    # name: its broadcast_shared segments must go when it closes; then,
    # alone, it saves a large value and is killed with SIGKILL while it
    # writes. Started once this cluster's workers are up, it loads while
    # the tests run.
    exename = namespaced_julia(OTHER_HOST)
    target = joinpath(dir, "killed.jlf")
    save(target, "the old value")
    child_file = joinpath(dir, "child.jl")
    write(child_file, """
        using LibCluster, LibCluster.API, LibCluster.ClusterUtils
        $(exename === nothing ? "addprocs(1; env = [\"LIBCLUSTER_HOSTNAME\" => \"$OTHER_HOST\"])" :
                                "addprocs(1; exename = $(repr(exename)))")
        topo = describepids(remote = 2)
        broadcast_shared(topo, Int, collect(1:10), :closing)
        names = filter(n -> startswith(n, "lcshm.\$(getpid())-") && occursin(".clusterutils.closing", n), readdir("/dev/shm"))
        println("segments ", length(topo), " ", join(names, " "))
        LibCluster.shutdown()
        println("closed")
        value = ones(UInt8, 400_000_000)
        readline(stdin)                # until the parent watches
        println("saving"); flush(stdout)
        save($(repr(target)), value)
        println("saved"); flush(stdout)
        sleep(60)
        """)

    # Workers: local ones up to 6 processes with the head, two on another
    # host: 8 processes for the exchanges. The last local one is killed.
    flags = (topology = LibCluster.TOPOLOGY[], lazy = something(LibCluster.LAZY[], true))
    locals = addprocs(max(1, 6 - nprocs()); flags...)
    if exename === nothing
        @info "ClusterUtils tests: unshare --uts does not work here; the other host's workers are told apart by LIBCLUSTER_HOSTNAME only"
        others = addprocs(2; env = ["LIBCLUSTER_HOSTNAME" => OTHER_HOST], flags...)
    else
        others = addprocs(2; exename = exename, flags...)
    end
    victim = locals[end]
    child = open(`$JULIA --startup-file=no --project=$PROJECT $child_file`, "r+")
    mine = vcat(locals, others)
    LAST_ID[] = max(LAST_ID[], maximum(mine))
    @everywhere using LibCluster.ClusterUtils
    @everywhere module CUTestModule
        using LibCluster.API
    end
    # A dict whose getindex of its own process's entry waits (on the process
    # SLOW_PID only): that participant of an exchange is late to it.
    @everywhere struct SlowDict <: AbstractDict{Int,Any}
        d::Dict{Int,Any}
    end
    @everywhere begin
        Base.getindex(s::SlowDict, k) = (k == myid() && myid() == (isdefined(Main, :SLOW_PID) ? Main.SLOW_PID : 0) &&
                                         sleep(60); s.d[k])
        Base.setindex!(s::SlowDict, v, k) = (s.d[k] = v; s)
        Base.length(s::SlowDict) = length(s.d)
        Base.iterate(s::SlowDict, i...) = iterate(s.d, i...)
    end
    here = sort!(setdiff(procs(), others))      # the head's host
    Core.println("-- ClusterUtils: $(length(mine)) workers added (", round(Int, time() - T0), " s)")
    try
        @testset "README: reap and sow" begin
            @progress "ClusterUtils: reap and sow"
            pids = here[2:4]
            @test reap(pids[1], :(x = myid())) == Dict(pids[1] => pids[1])
            @test reap(pids[1], :(sqrt(x))) == Dict(pids[1] => sqrt(pids[1]))
            f = sow(pids[1], :y, myid())
            @test f isa Future && wait(f) === f
            @test reap(pids[1], :y) == Dict(pids[1] => 1)
            # map-reduce
            s = reduce(+, values(reap(pids, :(rand(5) .^ 2))))
            @test s isa Vector{Float64} && length(s) == 5 && all(0 .<= s .<= 3)
            sow(pids[2], :bob, pi^2)
            @test (@fetchfrom pids[2] bob) == pi^2
            refs = sow(pids, :morebob, :(100 + myid()))
            @test refs isa Dict && sort!(collect(keys(refs))) == pids && all(r -> r isa Future && isready(r), values(refs))
            r = reap(pids, :morebob)
            @test r == Dict(p => 100 + p for p in pids) && r isa Dict{Int,Any}
            @test reap(pids, :morebob; returntype = Int) isa Dict{Int,Int}
            # into a module of one's own (the README's mod = ClusterUtils)
            sow(pids[3], :specificbob, :(sqrt(myid())); mod = CUTestModule)
            @test reap(pids[3], :(CUTestModule.specificbob)) == Dict(pids[3] => sqrt(pids[3]))
            @test reap(pids[3], :(isdefined(Main, :specificbob))) == Dict(pids[3] => false)
            # slices and keys assign into what is there
            sow(pids, :bar, :(randn(4, 4)))
            before = reap(pids, :bar)
            sow(pids, :(bar[1:2, :]), 0)
            after = reap(pids, :bar)
            @test all(p -> after[p][1:2, :] == zeros(2, 4) && after[p][3:4, :] == before[p][3:4, :], pids)
            @test length(unique(after[p][3, 1] for p in pids)) == 3     # each drew its own
            sow(pids, :(bar[end, :]), [1.0, 2.0, 3.0, 4.0])             # an array into a row
            @test all(p -> reap(p, :(bar[4, :]))[p] == [1.0, 2.0, 3.0, 4.0], pids)
            sow(pids, :somedict, :(Dict(:buzz => randn(2, 2), :badger => "hello")))
            sow(pids, :(somedict[:buzz][:, :]), pi)
            @test reap(pids, :(somedict[:buzz]))[pids[1]] == fill(float(pi), 2, 2)
            @test reap(pids, :(somedict[:badger])) == Dict(p => "hello" for p in pids)
            sow(pids, :(somedict[:new]), :(myid()))                   # a new key
            @test reap(pids, :(somedict[:new])) == Dict(p => p for p in pids)
            # a value shipped as it is, one evaluated there
            v = [1, 2, 3]
            sow(pids, :shipped, v)
            @test reap(pids, :shipped) == Dict(p => v for p in pids)
            sow(pids, :evaluated, :(myid() * 2))
            @test reap(pids, :evaluated) == Dict(p => 2p for p in pids)
            sow(pids, :named, :evaluated)                             # a name: its value there
            @test reap(pids, :named) == Dict(p => 2p for p in pids)
            sow(pids, :quoted, QuoteNode(:evaluated))                 # a Symbol shipped
            @test reap(pids, :quoted) == Dict(p => :evaluated for p in pids)
            # forms without a pid list: every worker
            sow(:everyworker, :(myid() + 1))
            @test reap(:everyworker) == Dict(p => p + 1 for p in workers())
            @test reap(:(myid())) == Dict(p => p for p in workers())
            # concurrently: a reap of n processes each sleeping costs one sleep
            t = @elapsed reap(pids, :(sleep(0.5); myid()))
            @test t < 1.2
            t = @elapsed sow(pids, :slept, :(sleep(0.5); 1))
            @test t < 1.2
            # reaprefs: Futures of the values
            refs = reaprefs(pids, :(myid() * 3))
            @test all(p -> refs[p] isa Future && fetch(refs[p]) == 3p, pids)
            # failures come back, naming the process
            e = try reap(pids, :(myid() == $(pids[2]) ? error("boom") : 1)) catch e; e end
            @test e isa RemoteException && e.pid == pids[2] && occursin("boom", sprint(showerror, e))
            e = try sow(pids, :(nosuchthing[1]), 1) catch e; e end
            @test e isa RemoteException && e.pid == pids[1]
            e = try sow(pids, :(bar[1:2, :]), "text") catch e; e end   # neither = nor .= takes it
            @test e isa RemoteException
        end

        @testset "README: stitch" begin
            @progress "ClusterUtils: stitch"
            pids = here[2:4]
            sow(pids, :x, :(myid()^2 * randn(3)))
            parts = reap(pids, :x)
            st = stitch(pids, :x)
            @test st isa Vector{Float64} && length(st) == 9
            @test st == vcat((parts[p] for p in sort(pids))...)
            @test stitch(reverse(pids), :x) == st                    # ascending pid order
            @test stitch(pids, :(myid()), (a, b) -> 10a + b) == foldl((a, b) -> 10a + b, sort(pids))
            @test stitch(pids, :(fill(myid(), 1, 2)), hcat) == reshape(repeat(sort(pids), inner = 2), 1, 6)
            @test stitch(pids[1], :x) == parts[pids[1]]
            @test stitch(pids[1], :x, vcat) == parts[pids[1]]
            @test stitch(:(myid())) == sort(workers())
        end

        @testset "topology: describepids" begin
            @progress "ClusterUtils: topology: describepids"
            ws = workers()
            hosts = Dict(CU.host_names())
            @test sort!(collect(keys(hosts))) == procs()
            @test all(p -> hosts[p] == OTHER_HOST, others)
            @test all(p -> hosts[p] == gethostname(), here)
            if exename !== nothing
                # The workers really are elsewhere, by their own gethostname.
                @test all(p -> remotecall_fetch(gethostname, p) == OTHER_HOST, others)
            end
            remote0 = describepids()
            @test remote0 == Dict(minimum(others) => sort(others))
            @test remote0 isa Dict{Int,Vector{Int}}
            @test describepids(remote = 0) == remote0
            @test describepids(remote = 1) == Dict(1 => here)
            @test describepids(remote = 2) == Dict(1 => here, minimum(others) => sort(others))
            @test describepids(procs(); filterfn = x -> occursin(r"otherhost", x)) == remote0
            @test describepids(procs(); filterfn = x -> x == gethostname()) == Dict(1 => here)
            @test describepids(remote = 2, filterfn = x -> x == OTHER_HOST) == remote0
            @test describepids(remote = 1, filterfn = x -> false) == Dict{Int,Vector{Int}}()
            @test describepids([others[end], here[end]]) == Dict(others[end] => [others[end]], here[end] => [here[end]])
            @test_throws ArgumentError describepids(remote = 3)
            @test_throws ErrorException describepids([1, 10_000])
            @test localpids() == here
            # Anywhere the same: the hosts travel with membership.
            @test remotecall_fetch(() -> describepids(remote = 2), others[1]) == describepids(remote = 2)
            @test remotecall_fetch(() -> localpids(), others[2]) == here
            inv = invtopology(describepids(remote = 2))
            @test inv == Dict(vcat([p => 1 for p in here], [p => minimum(others) for p in others]))
            @test CU.preferredorder(Dict(1 => [1, 2], 3 => [3, 4])) == [1, 3, 2, 4]
        end

        @testset "README: broadcast_shared" begin
            @progress "ClusterUtils: broadcast_shared"
            topo = describepids(remote = 2)
            reps = sort!(collect(keys(topo)))
            @test length(reps) == 2
            value = rand(4, 4)
            broadcast_shared(topo, Float32, value, :foo)
            @test length(shared_here("foo")) == 2                       # one per host
            everyone = reduce(vcat, values(topo))
            @test all(p -> reap(p, :foo)[p] == Float32.(value), everyone)
            @test all(p -> reap(p, :(typeof(foo)))[p] == Matrix{Float32}, everyone)
            sow(reps, :(foo[1, :]), :(map(Float32, pi)))
            someworkers = [topo[r][2] for r in reps]                   # another process of each host
            workerslices = reap(someworkers, :(foo[1:2, :]))
            @test all(p -> workerslices[p] == vcat(fill(Float32(pi), 1, 4), Float32.(value[2:2, :])), someworkers)
            # A write on one process of a host is seen by the others there, not on the other host.
            a, b = topo[1][2], topo[1][end]
            remotecall_fetch(() -> (foo[3, 3] = -7f0; nothing), a)
            @test remotecall_fetch(() -> foo[3, 3], b) == -7f0
            @test foo[3, 3] == -7f0                                     # the head is on that host
            o1, o2 = topo[minimum(others)]
            @test remotecall_fetch(() -> foo[3, 3], o1) == Float32(value[3, 3])
            remotecall_fetch(() -> (foo[4, 4] = 5f0; nothing), o2)
            @test remotecall_fetch(() -> foo[4, 4], o1) == 5f0
            @test foo[4, 4] == Float32(value[4, 4])
            # Any shape; a second broadcast of the name replaces the first.
            old = foo
            cube = reshape(collect(1:24), 2, 3, 4)
            broadcast_shared(topo, Int16, cube, :foo)
            @test foo isa Array{Int16,3} && foo == cube && old[3, 3] == -7f0
            @test all(p -> reap(p, :foo)[p] == cube, everyone)
            @test length(shared_here("foo")) == 2
            remotecall_fetch(() -> (foo[2, 3, 4] = 0; nothing), o1)
            @test remotecall_fetch(() -> foo[2, 3, 4], o2) == 0 && foo[2, 3, 4] == 24
            # Only the hosts of topo.
            broadcast_shared(describepids(), Float64, [1.5, 2.5], :onlyother)
            @test all(p -> reap(p, :onlyother)[p] == [1.5, 2.5], others)
            @test !isdefined(Main, :onlyother)
            @test length(shared_here("onlyother")) == 1
            @test_throws ArgumentError broadcast_shared(topo, String, ["a"], :bad)
            @test_throws ArgumentError broadcast_shared(Dict(here[2] => [here[3]]), Int, [1], :bad)
        end

        @testset "README: MessageDict, swapmsgs, collectmsgs" begin
            @progress "ClusterUtils: MessageDict, swapmsgs, collectmsgs"
            # ClusterUtils' constructors
            m = MessageDict()
            @test m isa AbstractDict && m.pids == workers() && all(iszero, values(m))
            m = MessageDict(Dict(2 => "a", 3 => "b"))
            @test m[2] == "a" && m.pids == [2, 3] && length(m) == 2
            m[4] = "c"
            @test m.pids == [2, 3, 4] && haskey(m, 4) && get(m, 5, :none) == :none
            m = MessageDict([2, 3], randn(3))
            @test m[2] == zeros(3) && m[3] == zeros(3) && m[2] !== m[3]
            @test m.msgs isa Dict{Int,Any}
            # The README's exchange on 2 to 8 processes: with and without the
            # head, as a Dict and as a MessageDict.
            allp = sort!(vcat(here, others))
            @test length(allp) >= 8
            for k in 2:8
                ps = isodd(k) ? allp[1:k] : allp[end-k+1:end]
                msgmaster = iseven(k) ? Dict(q => 0 for q in ps) : MessageDict(Dict(q => 0 for q in ps))
                sow(ps, :somemsg, msgmaster)
                reap(ps, :(somemsg[myid()] = 2myid()))
                @test reap(ps[1], :(somemsg[$(ps[2])])) == Dict(ps[1] => 0)
                within(30, "swapmsgs over $k processes") do
                    swapmsgs(ps, :somemsg)
                end
                @test all(p -> reap(p, :(somemsg))[p] == Dict(q => 2q for q in ps), ps)
                @test all(p -> typeof(reap(p, :somemsg)[p]) == typeof(msgmaster), ps)
                @test collectmsgs(:somemsg, ps) == Dict(q => 2q for q in ps)
            end
            # swapmsgs(name): every worker; @timeit of it as the README.
            sow(procs(), :somemsg, Dict(q => 0 for q in workers()))
            reap(workers(), :(somemsg[myid()] = 2myid()))
            swapmsgs(:somemsg)
            @test reap(workers()[1], :somemsg)[workers()[1]] == Dict(q => 2q for q in workers())
            t = ClusterUtils.@timeit 10 swapmsgs(workers(), :somemsg)
            @test 0 < t < 1
            @info "swapmsgs over $(nworkers()) workers: $(round(t * 1e6, digits = 1)) µs (mean of 10)"
            # collectmsgs into this process's dict, and into one given.
            global somemsg = Dict(q => 0 for q in here[2:4])
            @test collectmsgs(:somemsg) == Dict(q => 2q for q in here[2:4]) && somemsg[here[3]] == 2here[3]
            given = Dict{Int,Any}(q => nothing for q in others)
            @test collectmsgs(:somemsg, given) === given && given == Dict(q => 2q for q in others)
            # Large entries (the library's ring algorithm), any values.
            ps = allp[2:6]
            sow(ps, :bigmsg, MessageDict())
            reap(ps, :(bigmsg[myid()] = fill(myid(), 20_000)))
            swapmsgs(ps, :bigmsg)
            @test all(p -> reap(p, :(all(q -> bigmsg[q] == fill(q, 20_000), $ps)))[p], ps)
            # Entries on either side of the library's size classes.
            reap(ps, :(bigmsg[myid()] = myid() == $(ps[2]) ? fill(myid(), 20_000) : myid()))
            within(30, "an exchange of mixed sizes") do
                swapmsgs(ps, :bigmsg)
            end
            want = Dict{Int,Any}(q => q == ps[2] ? fill(q, 20_000) : q for q in ps)
            @test all(p -> reap(p, :(Dict(q => bigmsg[q] for q in $ps)))[p] == want, ps)
            # Concurrent exchanges over the same set stay apart (one tag each).
            sow(ps, :msg_a, Dict(q => q for q in ps)); sow(ps, :msg_b, Dict(q => -q for q in ps))
            within(30, "two exchanges at once") do
                t1 = @async swapmsgs(ps, :msg_a)
                t2 = @async swapmsgs(ps, :msg_b)
                fetch(t1); fetch(t2)
            end
            @test reap(ps, :(msg_a[$(ps[1])], msg_b[$(ps[end])])) == Dict(p => (ps[1], -ps[end]) for p in ps)
            # A participant without the dict: every one fails, none waits.
            sow(ps[1:end-1], :partial, Dict(q => 1 for q in ps))
            e = within(30, "a failing exchange") do
                try swapmsgs(ps, :partial); nothing catch e; e end
            end
            @test e isa RemoteException && occursin("on process $(ps[end])", sprint(showerror, e))
            @test reap(ps[1], :(partial[$(ps[2])]))[ps[1]] == 1        # left as it was
        end

        @testset "swapmsgs with a participant killed during the exchange" begin
            @progress "ClusterUtils: swapmsgs with a participant killed during the exchange"
            ps = vcat(here[2:3], others[1], victim)
            @test victim == here[end]
            sow(ps, :SLOW_PID, victim)
            sow(ps, :slowmsg, :(SlowDict(Dict{Int,Any}(q => 2q for q in $ps))))
            ospid = remotecall_fetch(getpid, victim)
            t = @async try swapmsgs(ps, :slowmsg); nothing catch e; e end
            sleep(1.0)              # the others are in the all-gather, the victim sleeps
            @test !istaskdone(t)
            run(`kill -9 $ospid`)
            e = within(20, "swapmsgs to fail after a participant was killed") do
                fetch(t)
            end
            @test e isa ProcessExitedException && e.worker_id == victim
            @test occursin(string(victim), sprint(showerror, e))
            # The survivors carry on.
            rest = ps[1:end-1]
            sow(rest, :slowmsg, Dict(q => 0 for q in rest))
            reap(rest, :(slowmsg[myid()] = 2myid()))
            within(30, "swapmsgs among the survivors") do
                swapmsgs(rest, :slowmsg)
            end
            @test all(p -> reap(p, :slowmsg)[p] == Dict(q => 2q for q in rest), rest)
            # With the dead one still listed: a clear failure at once.
            e = within(20, "swapmsgs with a dead participant") do
                try swapmsgs(ps, :slowmsg); nothing catch e; e end
            end
            @test e isa ProcessExitedException && e.worker_id == victim
        end

        @testset "README: save and load" begin
            @progress "ClusterUtils: save and load"
            f = joinpath(dir, "temp.jlf")
            x = randn(5)
            @test save(f, x) === nothing
            @test load(f) == x
            global R = [1, 2, 3]
            global X = "Fnordic"
            save(f, :X, :R)
            d = load(f)
            @test d isa Dict{Symbol,Any} && d == Dict(:R => [1, 2, 3], :X => "Fnordic")
            @test dictify(:X, :R) == d && dictify(:X, :R) isa Dict{Symbol,Any}
            Core.eval(CUTestModule, :(inmodule = (1, "one")))
            save(f, :inmodule; mod = CUTestModule)
            @test load(f) == Dict{Symbol,Any}(:inmodule => (1, "one"))
            for v in (nothing, 1, "s", [1 2; 3 4], Dict("a" => [1.0]), (a = 1, b = :c), MessageDict(Dict(2 => 4)),
                      rand(UInt8, 3_000_000))
                save(f, v)
                @test isequal(load(f), v) && typeof(load(f)) == typeof(v)
            end
            # The container: damaged, truncated and foreign files are refused.
            save(f, collect(1:1000))
            good = read(f)
            corrupt(status) = e -> e isa ClusterError && e.status == status && !isempty(e.msg)
            bad = joinpath(dir, "bad.jlf")
            write(bad, good[1:end-100])
            e = try load(bad) catch e; e end
            @test corrupt(LibCluster.CAPI.CLUSTER_ERR_CORRUPT)(e)
            @info "load of a truncated file: $(sprint(showerror, e))"
            flipped = copy(good); flipped[end-50] ⊻= 0x01
            write(bad, flipped)
            e = try load(bad) catch e; e end
            @test corrupt(LibCluster.CAPI.CLUSTER_ERR_CORRUPT)(e)
            @info "load of a damaged file: $(sprint(showerror, e))"
            for foreign in (UInt8[], Vector{UInt8}("not a container at all, just some text"),
                            (io = IOBuffer(); serialize(io, collect(1:1000)); take!(io)))   # ClusterUtils' own format
                write(bad, foreign)
                e = try load(bad) catch e; e end
                @test corrupt(LibCluster.CAPI.CLUSTER_ERR_CORRUPT)(e)
            end
            # A container of another content type is named.
            data = Vector{UInt8}("plain text")
            LibCluster.CAPI.check(LibCluster.CAPI.cluster_save(bad, "text/plain", data, length(data)))
            e = try load(bad) catch e; e end
            @test e isa ErrorException && occursin("text/plain", e.msg) && occursin("julia.serialization", e.msg)
            e = try load(joinpath(dir, "nosuchfile")) catch e; e end
            @test corrupt(LibCluster.CAPI.CLUSTER_ERR_IO)(e)
            e = try save(joinpath(dir, "nosuchdir", "f.jlf"), 1) catch e; e end
            @test corrupt(LibCluster.CAPI.CLUSTER_ERR_IO)(e)
            @test load(f) == collect(1:1000)

            # The child's cluster closed: its segments are gone from /dev/shm.
            lines = String[]
            within(120, "the child to close its cluster") do
                while true
                    l = readline(child)
                    push!(lines, l)
                    (l == "closed" || isempty(l) && eof(child)) && break
                end
            end
            seg = filter(l -> startswith(l, "segments "), lines)
            @test length(seg) == 1 && lines[end] == "closed"
            if length(seg) == 1
                words = split(seg[1])
                @test words[2] == "2" && length(words) == 4            # two hosts, a segment each
                @test all(n -> !isfile(joinpath("/dev/shm", n)), words[3:end])
            else
                println(join(lines, "\n"))
            end
            # A save killed with SIGKILL while it writes leaves the old file.
            try
                known = readdir(dir)
                println(child, "go")
                @test within(120, "the child to start saving") do
                    readline(child)
                end == "saving"
                cpid = getpid(child)
                writing() = any(readdir("/proc/$cpid/fd")) do fd
                    startswith(try readlink("/proc/$cpid/fd/$fd") catch; "" end, realpath(dir))
                end
                caught = within(60, "the child to open its file") do
                    while !writing()
                        process_exited(child) && return false
                        sleep(0.001)
                    end
                    true
                end
                @test caught
                run(`kill -9 $cpid`)
                wait(child)
                @test load(target) == "the old value"
                strays = setdiff(readdir(dir), known)
                @info "save killed mid-write: the old file loads; $(length(strays)) temporary file(s) left: $strays"
            finally
                process_exited(child) || kill(child, Base.SIGKILL)
            end
        end

        @testset "lookup, filterpaths, chunkit, @timeit" begin
            @progress "ClusterUtils: lookup, filterpaths, chunkit, @timeit"
            Core.eval(CUTestModule, :(lookup_alpha = 1; lookup_beta = 2; other_gamma = 3))
            @test sort(lookup(CUTestModule, r"^lookup_")) == [:lookup_alpha, :lookup_beta]
            for n in ("a1.jlf", "a2.jlf", "b.txt")
                touch(joinpath(dir, n))
            end
            @test filterpaths(dir, "^a[0-9]\\.jlf\$") == [joinpath(abspath(dir), "a1.jlf"), joinpath(abspath(dir), "a2.jlf")]
            @test filterpaths(dir, r"\.txt$") == [joinpath(abspath(dir), "b.txt")]
            @test chunkit(10, 3) == [1:3, 4:7, 8:10]                 # ClusterUtils' split
            @test chunkit(9, 3) == [1:3, 4:6, 7:9]
            @test chunkit(2, 3) == [1:0, 1:1, 2:2]
            @test reduce(vcat, collect.(chunkit(100, 7))) == 1:100
            t = ClusterUtils.@timeit 5 sleep(0.02)
            @test 0.02 <= t < 0.2
            n = Ref(0)
            ClusterUtils.@timeit 3 (n[] += 1)
            @test n[] == 3
        end
    finally
        rmprocs(filter(p -> p in procs(), mine))
    end
    process_exited(child) || kill(child, Base.SIGKILL)

end
