# RemoteChannel: Distributed's behaviour as the expected results. Included
# from runtests.jl (uses its `within`, `@progress` and `LAST_ID`).

"Whether `e` is Distributed's closed-channel error (wrapped when the owner is `owner` != caller)."
is_closed_error(e, owner) = owner == myid() ?
    (e isa InvalidStateException && e.state === :closed) :
    (e isa RemoteException && e.pid == owner && e.captured.ex isa InvalidStateException &&
     e.captured.ex.state === :closed)

struct NotAChannel <: AbstractChannel{Int} end

@testset "RemoteChannel" begin
    @progress "RemoteChannel"
    ws = addprocs(4; lazy = false)      # as the workers the suite runs by now
    LAST_ID[] = ws[end]
    w1, w2, producer, owner = ws
    @everywhere begin
        keep_channel(c) = (global KEPT_CHANNEL = c; nothing)
        drop_channel() = (global KEPT_CHANNEL = nothing; GC.gc(); GC.gc(); nothing)
        put_kept(x) = (put!(KEPT_CHANNEL, x); nothing)
        forward_channel(c, to) = (remotecall_fetch(keep_channel, to, c); nothing)
    end
    # The channels each worker keeps before these tests (none; read, not assumed).
    base = Dict(p => remotecall_fetch(LC.channel_count, p) for p in ws)

    @testset "made here, Distributed's defaults" begin
        c = RemoteChannel()
        @test c isa RemoteChannel{Channel{Any}}
        @test eltype(c) === Any && eltype(typeof(c)) === Any
        @test c.where == 1 && c.whence == 1 && c.id > 0
        @test sprint(show, c) == "RemoteChannel{Channel{Any}}(1, 1, $(c.id))"
        @test !isready(c) && isempty(c) && isopen(c)
        @test put!(c, :a) === c
        @test isready(c) && !isempty(c)
        @test fetch(c) === :a && fetch(c) === :a           # fetch peeks
        @test isready(c)                                   # isready never takes
        @test wait(c) === c
        @test take!(c) === :a
        @test !isready(c) && isempty(c)
        d = RemoteChannel(w1)
        @test d.where == w1 && d.whence == 1 && d != c
        @test c == c && hash(c) == hash(c)
        copy_of_c = deserialize(IOBuffer(sprint(serialize, c)))   # a second reference, here
        @test copy_of_c == c && hash(copy_of_c) == hash(c) && copy_of_c !== c
        put!(copy_of_c, 5)
        @test take!(c) == 5
        @test_throws ArgumentError RemoteChannel(() -> NotAChannel())
        e = try RemoteChannel(() -> NotAChannel()) catch e; e end
        @test occursin("supports only Channel", sprint(showerror, e))
    end

    @testset "capacity: put! waits while full, in its task only" begin
        c = RemoteChannel(() -> Channel{Int}(2), w1)
        @test c isa RemoteChannel{Channel{Int}} && c.where == w1
        put!(c, 1); put!(c, 2)
        ticks = Ref(0)
        ticker = @async while ticks[] >= 0
            ticks[] += 1
            sleep(0.001)
        end
        t = @async put!(c, 3)
        sleep(0.3)
        @test !istaskdone(t)                     # full: waits
        @test ticks[] > 20                       # and other tasks kept running
        @test take!(c) == 1
        within(10, "the waiting put!") do
            wait(t)
        end
        @test fetch(t) === c
        @test take!(c) == 2 && take!(c) == 3
        # A take! waiting on an empty channel does not hold up other tasks either.
        before = ticks[]
        t = @async take!(c)
        sleep(0.3)
        @test !istaskdone(t) && ticks[] - before > 20
        put!(c, 4)
        @test within(() -> fetch(t), 10, "the waiting take!") == 4
        ticks[] = -10
        wait(ticker)
    end

    @testset "element types convert as Channel's put!" begin
        c = RemoteChannel(() -> Channel{Float64}(4), w1)
        put!(c, 1)
        @test take!(c) === 1.0
        e = try put!(c, "x") catch e; e end
        @test e isa RemoteException && e.pid == w1 && e.captured.ex isa MethodError
        l = RemoteChannel(() -> Channel{Int}(1))
        @test_throws MethodError put!(l, "x")
        @test_throws InexactError put!(l, 1.5)
        put!(l, 2.0)
        @test take!(l) === 2
        v = RemoteChannel(() -> Channel{Vector{Any}}(1), w1)
        put!(v, Any[1, "two", (3, :four), Dict(5 => 6)])
        @test take!(v) == Any[1, "two", (3, :four), Dict(5 => 6)]
    end

    @testset "close: buffered elements can still be taken" begin
        for where in (1, w1)
            c = RemoteChannel(() -> Channel{Int}(10), where)
            put!(c, 1); put!(c, 2)
            close(c)
            @test !isopen(c) && isready(c)
            e = try put!(c, 3) catch e; e end
            @test is_closed_error(e, where)
            @test take!(c) == 1 && fetch(c) == 2 && take!(c) == 2
            e = try take!(c) catch e; e end
            @test is_closed_error(e, where)
            e = try fetch(c) catch e; e end
            @test is_closed_error(e, where)
            e = try wait(c) catch e; e end
            @test is_closed_error(e, where)
            close(c)                                # again: nothing
        end
        # A waiting take! fails when the channel is closed.
        c = RemoteChannel(w1)
        t = @async try take!(c) catch e; e end
        sleep(0.2)
        close(c)
        @test is_closed_error(within(() -> fetch(t), 10, "a take! on a closed channel"), w1)
    end

    @testset "iteration takes until closed and empty" begin
        c = RemoteChannel(() -> Channel{Int}(10), w1)
        foreach(i -> put!(c, i), 1:3)
        close(c)
        @test collect(c) == [1, 2, 3]
        @test isempty(c)
        # A producer on a worker, a consumer here.
        c = RemoteChannel(() -> Channel{Int}(2))
        remote_do(ch -> (foreach(i -> put!(ch, i), 1:20); close(ch)), w2, c)
        @test within(() -> [x for x in c], 20, "iterating a channel") == collect(1:20)
    end

    @testset "unbuffered and unbounded" begin
        c = RemoteChannel(() -> Channel{Symbol}(0), w1)
        t = @async put!(c, :x)
        sleep(0.2)
        @test !istaskdone(t)                     # waits for a taker
        @test isready(c)                         # a put is waiting
        @test take!(c) === :x
        within(10, "the unbuffered put!") do
            wait(t)
        end
        @test !isready(c)
        e = try fetch(c) catch e; e end
        @test e isa RemoteException && occursin("unbuffered", e.captured.ex.msg)
        u = RemoteChannel(() -> Channel(Inf), w1)
        @test eltype(u) === Any
        within(20, "1000 puts into an unbounded channel") do
            foreach(i -> put!(u, i), 1:1000)
        end
        @test [take!(u) for _ in 1:1000] == collect(1:1000)
    end

    @testset "used from other processes" begin
        # Kept by w1, made here, used here and from w2.
        c = RemoteChannel(() -> Channel{Int}(10), w1)
        @test remotecall_fetch((ch, x) -> (put!(ch, x); isready(ch)), w2, c, 41)
        @test take!(c) == 41
        put!(c, 42)
        @test remotecall_fetch(ch -> take!(ch), w2, c) == 42
        # Inside other values.
        @test remotecall_fetch(t -> (put!(t.ch[1], t.v); :ok), w2, (ch = [c], v = 43)) === :ok
        @test take!(c) == 43
        # Made by w2, kept by w1, used here and by w2.
        d = remotecall_fetch(p -> (ch = RemoteChannel(() -> Channel{String}(4), p); put!(ch, "from w2"); ch), w2, w1)
        @test d isa RemoteChannel{Channel{String}} && d.where == w1 && d.whence == w2
        @test take!(d) == "from w2"
        put!(d, "from 1")
        @test remotecall_fetch(ch -> take!(ch), w2, d) == "from 1"
        # Kept here, used by a worker.
        h = RemoteChannel(() -> Channel{Int}(1))
        f = remotecall(ch -> take!(ch) + 1, w1, h)
        put!(h, 9)
        @test fetch(f) == 10
    end

    @testset "a forwarded reference is freed on its owner" begin
        # Kept by `owner`, which keeps no other channel.
        c = RemoteChannel(() -> Channel{Int}(4), owner)
        @test remotecall_fetch(LC.channel_count, owner) == base[owner] + 1
        # Here -> w2 -> producer; every holder but the last lets go.
        remotecall_fetch(forward_channel, w2, c, producer)
        c = nothing
        GC.gc(); GC.gc()
        remotecall_fetch(drop_channel, w2)
        remotecall_fetch(put_kept, producer, 7)   # the last holder uses it
        @test remotecall_fetch(LC.channel_count, owner) == base[owner] + 1
        remotecall_fetch(drop_channel, producer)
        within(10, "the owner to free the channel") do
            while remotecall_fetch(LC.channel_count, owner) != base[owner]
                sleep(0.02)
            end
        end
        @test remotecall_fetch(LC.channel_count, owner) == base[owner]
        # A holder that dies releases what it held (the producer, below).
        d = RemoteChannel(owner)
        remotecall_fetch(keep_channel, producer, d)
        d = nothing
        GC.gc(); GC.gc()
        @test remotecall_fetch(LC.channel_count, owner) == base[owner] + 1
    end

    @testset "bind: a killed producer closes the channel" begin
        c = RemoteChannel(() -> Channel{Int}(4))          # kept here
        bind(c, producer)
        r = RemoteChannel(() -> Channel{Int}(4), w1)      # kept by w1
        @test bind(r, producer) === r
        remotecall_fetch((a, b) -> (put!(a, 1); put!(b, 1); nothing), producer, c, r)
        @test take!(c) == 1 && take!(r) == 1
        waiting_here = @async try take!(c) catch e; e end
        waiting_remote = @async try take!(r) catch e; e end
        waiting_on_w2 = remotecall(ch -> try take!(ch); :took catch e; e end, w2, r)
        sleep(0.3)
        @test !istaskdone(waiting_here) && !istaskdone(waiting_remote) && !isready(waiting_on_w2)
        ospid = remotecall_fetch(getpid, producer)
        t0 = time()
        run(`kill -9 $ospid`)
        e1 = within(() -> fetch(waiting_here), 10, "a consumer of a killed producer (kept here)")
        e2 = within(() -> fetch(waiting_remote), 10, "a consumer of a killed producer (kept by a worker)")
        e3 = within(() -> fetch(waiting_on_w2), 10, "a consumer on a worker of a killed producer")
        @info "consumers of a killed producer failed after $(round(time() - t0, digits = 2)) s"
        @test time() - t0 < 5
        @test is_closed_error(e1, 1)
        @test is_closed_error(e2, w1)
        @test is_closed_error(e3, w1)
        @test !isopen(c) && !isopen(r)
        # Bound to a process already gone: closed at once.
        g = RemoteChannel(w1)
        bind(g, producer)
        @test !isopen(g)
        # The producer held the only reference to a channel of `owner`: released.
        within(10, "the dead holder's reference to be released") do
            while remotecall_fetch(LC.channel_count, owner) != base[owner]
                sleep(0.02)
            end
        end
        @test remotecall_fetch(LC.channel_count, owner) == base[owner]
    end

    @testset "a killed owner: waiters fail naming it" begin
        empty = RemoteChannel(() -> Channel{Int}(1), owner)
        full = RemoteChannel(() -> Channel{Int}(1), owner)
        put!(full, 1)
        waiting_take = @async try take!(empty) catch e; e end
        waiting_put = @async try put!(full, 2) catch e; e end
        sleep(0.3)
        @test !istaskdone(waiting_take) && !istaskdone(waiting_put)
        ospid = remotecall_fetch(getpid, owner)
        t0 = time()
        run(`kill -9 $ospid`)
        e1 = within(() -> fetch(waiting_take), 10, "a take! from a killed owner")
        e2 = within(() -> fetch(waiting_put), 10, "a put! into a killed owner")
        @info "waiters on a killed owner failed after $(round(time() - t0, digits = 2)) s"
        @test time() - t0 < 5
        @test e1 isa ProcessExitedException && e1.worker_id == owner
        @test e2 isa ProcessExitedException && e2.worker_id == owner
        e = try take!(full) catch e; e end
        @test e isa ProcessExitedException && e.worker_id == owner
    end

    # (Channels kept here stay until the suite ends: the locals of a
    # top-level testset stay rooted while it runs.)
    alive = filter(p -> p in procs(), ws)
    rmprocs(alive)
    within(10, "the killed workers to be noticed") do
        while any(p -> p in procs(), ws)
            sleep(0.05)
        end
    end
end
