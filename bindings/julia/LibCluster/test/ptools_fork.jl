# LibCluster.PTools: pfork and pfork_shm (issue 9). Expected results are
# PTools' (amitmurthy/PTools.jl: README.md, src/pfork.jl, test/test_pfork.jl),
# with what PTools lacks: a clear error per failed child (never a hang or a
# garbage value), no zombie, children that compile code, and forking with
# workers (PTools refused). Included from runtests.jl (uses its `within`,
# `@progress`); runs on the suite's head, which has workers.

using LibCluster.PTools
const PT = LibCluster.PTools

"This process's children: (pid, state letter), from /proc/*/stat."
function fork_children()
    me = getpid()
    kids = Tuple{Int,Char}[]
    for d in readdir("/proc")
        all(isdigit, d) || continue
        s = try read("/proc/$d/stat", String) catch; continue end
        rest = split(s[findlast(')', s)+2:end])    # state, ppid, ...
        parse(Int, rest[2]) == me && push!(kids, (parse(Int, d), rest[1][1]))
    end
    kids
end

"In a child: its stderr goes to /dev/null (Julia's crash report of a segfault is long)."
quiet_stderr() = ccall(:dup2, Cint, (Cint, Cint), ccall(:open, Cint, (Cstring, Cint), "/dev/null", 1), 2)

# A null pointer the compiler cannot see (a constant one compiles to a trap, SIGILL).
const FORK_NULL = Ref(0)

# pfork blocks this thread (`within` could not interrupt it): each call here
# is bounded by its own timeout, the rest by the suite's watchdog.
pf(n, f, args...; kw...) = pfork(n, f, args...; timeout = 20, kw...)

"/dev/shm's entries made by this process (the library's names carry the creator's pid)."
fork_shm_here() = filter(n -> startswith(n, "lcshm.$(getpid())-"), readdir("/dev/shm"))

"Whether process `p` exists and is not a zombie."
fork_alive(p) = try
    s = read("/proc/$p/stat", String)
    strip(s[findlast(')', s) + 1:end])[1] != 'Z'
catch
    false
end

@testset "PTools: pfork" begin
    @progress "PTools: pfork"
    shm_before = fork_shm_here()
    # A process whose children sleep in its pfork, SIGKILLed below: they die
    # with it. Started first, it loads while the rest runs.
    orphan_file = tempname() * ".jl"
    write(orphan_file, """
        using LibCluster.PTools
        # One write per line (at most PIPE_BUF: atomic), so the two children's lines never interleave.
        pfork(2, i -> (write(stdout, string("child ", getpid(), "\\n")); flush(stdout); sleep(120); i))
        """)
    forker = open(`$JULIA --startup-file=no --project=$PROJECT $orphan_file`, "r")
    seen_pids = Int[]           # the children's, all to be gone at the end
    begin
        @testset "results in index order, with arguments" begin
            @test pf(5, (i, a, b) -> (i, a * i, b), 10, "x") == [(i, 10i, "x") for i in 1:5]
            # PTools' own tests (test/test_pfork.jl)
            @test pfork(2, ind -> ind) == [1, 2]
            @test pfork(20, ind -> ind) == collect(1:20)
            fm = ind -> ones(10, 100) * ind
            @test pfork(4, fm) == map(fm, 1:4)
            r = pf(3, i -> nothing)
            @test r == [nothing, nothing, nothing] && r isa Vector{Any}    # PTools' `cell(n)`
            @test pf(0, i -> i) == Any[]
            # 8 MiB from each child: every pipe is read at once.
            big = pf(3, i -> fill(i, 1 << 20))
            @test length.(big) == fill(1 << 20, 3) && all(i -> all(==(i), big[i]), 1:3)
            # A child's memory is its own copy; its parent is this process.
            a = [0]
            kids = pf(3, i -> (a[1] = i; (getpid(), Int(ccall(:getppid, Cint, ())), a[1])))
            @test a == [0]
            @test allunique(first.(kids)) && all(k -> k[2] == getpid(), kids) && last.(kids) == [1, 2, 3]
            append!(seen_pids, first.(kids))
            # Finalizers do not run in a child (they would release the parent's things).
            flag = tempname()
            holder = Ref{Any}(finalizer(x -> touch(flag), Ref(1)))
            @test pf(1, i -> (holder[] = nothing; GC.gc(); GC.gc(); isfile(flag))) == [false]
            @test !isfile(flag)
            holder[] = nothing
            GC.gc(); GC.gc()
            @test isfile(flag)                    # here they do
            rm(flag; force = true)
            # Each child's random numbers are its own, and new at each call.
            r1, r2 = pf(3, i -> rand()), pf(3, i -> rand())
            @test allunique([r1; r2])
            @test_throws ArgumentError pfork(-1, i -> i)
            @test_throws ArgumentError pfork(1, i -> i; timeout = -1)
        end

        @testset "a child that throws, exits, is killed or crashes gives its own error" begin
            e = try
                pf(8, i -> i == 2 ? error("child two fails") :
                              i == 3 ? exit(3) :                              # Julia's exit: atexit hooks run
                              i == 4 ? ccall(:_exit, Cvoid, (Cint,), 4) :
                              i == 5 ? ccall(:kill, Cint, (Cint, Cint), getpid(), 9) :
                              i == 6 ? (quiet_stderr(); unsafe_load(Ptr{Int}(FORK_NULL[]))) :
                              i == 7 ? (ccall(:signal, Ptr{Cvoid}, (Cint, Ptr{Cvoid}), 11, C_NULL);
                                        ccall(:raise, Cint, (Cint,), 11)) :
                              i == 8 ? ccall(:_exit, Cvoid, (Cint,), 0) : 10i)
            catch e
                e
            end
            @test e isa PT.PForkError
            @test e.results[1] == 10
            @test [(x.index, x.reason, x.code) for x in e.exceptions] ==
                  [(2, :exception, 0), (3, :exited, 3), (4, :exited, 4), (5, :signaled, 9), (6, :signaled, 11),
                   (7, :signaled, 11), (8, :no_result, 0)]
            @test all(i -> e.results[i] === e.exceptions[i-1], 2:8)
            @test all(x -> x.os_pid > 0, e.exceptions)
            append!(seen_pids, [x.os_pid for x in e.exceptions])
            x2 = e.exceptions[1]
            @test startswith(x2.text, "child two fails\nStacktrace:")
            text = sprint(showerror, e)
            @test startswith(text, "PForkError: 7 of 8 pfork children failed")
            pid(i) = e.exceptions[i-1].os_pid
            @test occursin("ForkChildError: child 2 (pid $(pid(2))) threw: child two fails", text)
            @test occursin("child 3 (pid $(pid(3))) exited with status 3 before returning a result", text)
            @test occursin("child 4 (pid $(pid(4))) exited with status 4", text)
            @test occursin("child 5 (pid $(pid(5))) was killed by signal 9 (SIGKILL)", text)
            @test occursin("child 6 (pid $(pid(6))) was killed by signal 11 (SIGSEGV)", text)
            @test occursin("child 8 (pid $(pid(8))) exited with status 0 without a complete result", text)
            # Julia's own SIGSEGV handler survives a raise(SIGSEGV): no crash, a value.
            @test pf(1, i -> (quiet_stderr(); ccall(:raise, Cint, (Cint,), 11))) == [0]
            # on_error: a value in place of each failed child's (as pmap's).
            @test pf(3, i -> i == 2 ? error("no") : i; on_error = err -> (err.index, err.reason)) ==
                  [1, (2, :exception), 3]
            # A timeout: the child still running is killed; the others' values stay.
            t = @elapsed e = try pfork(2, i -> i == 2 ? (sleep(30); i) : i; timeout = 0.5) catch e; e end
            @test e isa PT.PForkError && e.results[1] == 1
            @test (e.exceptions[1].index, e.exceptions[1].reason, e.exceptions[1].code) == (2, :timeout, 9)
            @test t < 10
            push!(seen_pids, e.exceptions[1].os_pid)
            # A value of a type only the child has: an error, not a garbage value.
            e = try
                pf(1, i -> (Core.eval(Main, :(struct OnlyInForkChild; x::Int; end));
                               Base.invokelatest(() -> Main.OnlyInForkChild(i))))
            catch e
                e
            end
            @test e isa PT.PForkError && e.exceptions[1].reason == :undecodable
            @test !isdefined(Main, :OnlyInForkChild)
            # A value that cannot be serialized at all: the child's error.
            e = try pf(1, i -> current_task()) catch e; e end
            @test e isa PT.PForkError && e.exceptions[1].reason == :exception &&
                  occursin("cannot be serialized", e.exceptions[1].text)
        end

        @testset "a child compiles new code" begin
            # Julia 1.5's code generator would write through the parent's
            # /proc/<pid>/mem descriptor and abort: fixed in each child.
            @test pf(3, i -> (Core.eval(Main, :(fork_made(x) = x * $i)); Base.invokelatest(Main.fork_made, 7))) ==
                  [7, 14, 21]
            @test !isdefined(Main, :fork_made)
            @test pf(2, i -> Base.invokelatest(Core.eval(Main, Meta.parse("v -> sum(abs2, v) + $i")), [1.0, 2.0])) ==
                  [6.0, 7.0]
            Core.eval(Main, :(made_after_fork(x) = x + 1))
            @test Base.invokelatest(Main.made_after_fork, 1) == 2      # the parent compiles as before
            # The fix has a descriptor to replace on Julia versions that keep one.
            mem = filter(f -> (try readlink("/proc/self/fd/$f") catch; "" end) == "/proc/$(getpid())/mem",
                         readdir("/proc/self/fd"))
            if !isempty(mem)
                fd = parse(Int, mem[1])
                @test pf(1, i -> readlink("/proc/self/fd/$fd") == "/proc/$(getpid())/mem") == [true]   # the child's
            end
        end

        @testset "a child prints, sleeps and yields" begin
            @test pf(2, i -> (println("pfork child $i writes a line"); sleep(0.01); yield(); i)) == [1, 2]
        end

        @testset "with workers: the head and a worker fork, the cluster works on" begin
            w = first(workers())
            @test w != 1 && nprocs() > 1          # PTools refused to fork here
            @test pf(3, i -> i^2) == [1, 4, 9]
            @test remotecall_fetch(myid, w) == w
            # Julia's exit in a child closes every libuv handle (the eventfd
            # watcher's too): with libuv's epoll instance shared, the parent's
            # event loop would stop watching the library's eventfd, and hang.
            backend = ccall(:uv_backend_fd, Cint, (Ptr{Cvoid},), Base.eventloop())
            watched() = [parse(Int, m[1]) for m in eachmatch(r"tfd:\s+(\d+)", read("/proc/self/fdinfo/$backend", String))]
            efd = LibCluster.RT.event_fd
            timedwait(() -> efd in watched(), 5.0; pollint = 0.05)     # the event loop parks on it
            @test efd in watched()
            e = try pf(2, i -> exit(3)) catch e; e end
            @test e isa PT.PForkError && all(x -> x.reason == :exited && x.code == 3, e.exceptions)
            @test pf(2, i -> (GC.gc(); sleep(0.01); i)) == [1, 2]
            @test efd in watched()
            sleep(0.2)
            @test remotecall_fetch(+, w, 1, 2) == 3
            # A child cannot use the cluster (nor fork again); myid is its parent's.
            e = try pf(1, i -> remotecall_fetch(myid, w)) catch e; e end
            @test e isa PT.PForkError && occursin("a pfork child cannot use the cluster", e.exceptions[1].text)
            e = try pf(1, i -> pfork(1, j -> j)) catch e; e end
            @test e isa PT.PForkError && occursin("cannot fork children of its own", e.exceptions[1].text)
            @test pf(2, i -> myid()) == [1, 1]
            # A worker forks inside a call it serves, and serves on.
            @test within(30, "a worker to fork") do
                remotecall_fetch(() -> LibCluster.PTools.pfork(3, i -> (i, myid()); timeout = 20), w)
            end == [(i, w) for i in 1:3]
            @test remotecall_fetch(myid, w) == w
            # A cluster segment mapped before the fork: the head's children
            # write it, a worker reads it.
            pmap_shm_create(ShmCfg(:fork_out, Int, 8), "jlfork$(getpid())")
            pf(4, i -> (Main.fork_out[i] = 100i; nothing))
            @test Main.fork_out[1:5] == [100, 200, 300, 400, 0]
            @test remotecall_fetch(() -> Main.fork_out[1:4], w) == [100, 200, 300, 400]
            unlink_shm(ShmCfg(:fork_out, Int, 8), "jlfork$(getpid())")
            @test remotecall_fetch(+, w, 2, 3) == 5
        end

        @testset "pfork_shm: children write shared output arrays" begin
            # PTools' own tests (test/test_pfork.jl)
            n = 10
            R = pfork_shm(n, Float32, (n,), (ind, r) -> r[ind] = ind)
            @test R == Float32.(1:n) && R isa Array{Float32} && size(R) == (n,)
            R = pfork_shm(n, Float32, (3, n), (ind, r) -> r[:, ind] .= ind)
            @test R == repeat(Float32.(1:n)', 3, 1) && size(R) == (3, n)
            param = 10
            R = pfork_shm(n, Float32, (3, n), (ind, r, param) -> r[:, ind] .= ind * param, param)
            @test R == repeat(Float32.(1:n)' * param, 3, 1)
            R1, R2 = pfork_shm(n, [(Float32, (3, n)), (Float64, (n,))],
                               (ind, r1, r2) -> (r1[:, ind] .= ind; r2[ind] = ind * ind))
            @test R1 == repeat(Float32.(1:n)', 3, 1) && R1 isa Array{Float32} && size(R1) == (3, n)
            @test R2 == (1:n) .^ 2 && R2 isa Array{Float64} && size(R2) == (n,)
            # Fresh zeroed arrays each time; an Int dims is a vector.
            @test pfork_shm(2, Int, 3, (i, r) -> nothing) == [0, 0, 0]
            # A failed child: the error, as pfork.
            e = try pfork_shm(2, Int, 2, (i, r) -> i == 2 ? error("shm child fails") : (r[i] = 1)) catch e; e end
            @test e isa PT.PForkError && occursin("shm child fails", e.exceptions[1].text)
            @test_throws ArgumentError pfork_shm(2, Vector{Int}, 2, (i, r) -> nothing)
            @test_throws ArgumentError pfork_shm(2, [(Int, (2,)), :bad], (i, r, s) -> nothing)
        end
    end
    @testset "children die with their parent" begin
        kids = within(120, "the forking process to start its children") do
            sort([parse(Int, split(readline(forker))[2]) for _ in 1:2])
        end
        @test length(kids) == 2 && all(fork_alive, kids)
        kill(forker, Base.SIGKILL)
        within(10, "the children to die with their parent") do
            while any(fork_alive, kids)
                sleep(0.02)
            end
        end
        @test !any(fork_alive, kids)
    end
    process_running(forker) && kill(forker, Base.SIGKILL)
    # The killed forker is this process's child until Julia reaps it.
    wait(forker)
    rm(orphan_file; force = true)
    # Every child was reaped: none is left, as a zombie or otherwise.
    kids = fork_children()
    @test !any(k -> k[2] == 'Z', kids)
    @test !any(k -> k[1] in seen_pids, kids)
    @test fork_shm_here() == shm_before
end
