# LibCluster.PTools: shared memory and server tasks (issue 9). Expected
# results are PTools' (amitmurthy/PTools.jl: README.md, test/test1.jl,
# src/j_shm.jl, src/srvr_task.jl), with what PTools lacks: the orphans of a
# crashed run found and removed, a full /dev/shm an error at creation, a
# failing call or a dead worker reported per task without a hang.
# Included from runtests.jl (uses its `within`, `@progress`, JULIA, PROJECT,
# LAST_ID). Every segment made here has the prefix SHM_PFX and is removed.

using LibCluster.PTools

const SHM_PFX = "jltest$(getpid())"

"This test's segments in /dev/shm (their names there)."
shm_here(what = "") = filter(n -> startswith(n, "lcshm.$(getpid())-") && occursin(".$SHM_PFX.$what", n), readdir("/dev/shm"))

"The other cluster's (see the orphans' test)."
shm_theirs(what = "") = filter(n -> startswith(n, "lcshm.") && !startswith(n, "lcshm.$(getpid())-") &&
                                    occursin(".$SHM_PFX.$what", n), readdir("/dev/shm"))

"After a collection, how many mappings of segments with prefix `pfx` this process has (in /proc/self/maps)."
const shm_mappings = pfx -> (GC.gc(); count(l -> occursin("/dev/shm/lcshm.", l) && occursin(".$pfx.", l),
                                            readlines("/proc/self/maps")))

"/dev/shm's total size in bytes."
function dev_shm_bytes()
    blocks, bsize = parse.(Int, split(read(`stat -f -c "%b %S" /dev/shm`, String)))
    blocks * bsize
end

@testset "PTools: shared memory and server tasks" begin
    @progress "PTools: shared memory and server tasks"
    # A cluster of its own (a head alone), killed with SIGKILL below: its
    # segment is then an orphan. Started first, it loads while the rest runs.
    child_file = tempname() * ".jl"
    write(child_file, """
        using LibCluster, LibCluster.API, LibCluster.PTools
        h = start_stasks(ShmCfg(:orphan, Int32, 1000), "$SHM_PFX")   # alone: its one task on process 1
        r = pmap_stasks(h, () -> (a = task_local_storage(:orphan); a .= Int32(7); sum(a)))
        println("ready ", count_stasks(h), " ", r[1], " ", r[2][1], " ", task_local_storage(:orphan)[1])
        flush(stdout)
        sleep(120)
        """)
    child = open(`$JULIA --startup-file=no --project=$PROJECT $child_file`, "r")
    mine = addprocs(2; lazy = something(LibCluster.LAZY[], true))
    LAST_ID[] = max(LAST_ID[], maximum(mine))
    @everywhere struct ShmPoint     # an element type without a tag (opaque bytes)
        x::Float64
        k::Int32
    end
    everyone = procs()
    try
        @testset "a segment is seen by every local process" begin
            pmap_shm_create(ShmCfg(:shm_ints, Int, 64), SHM_PFX)
            @test length(shm_here("shm_ints")) == 1
            @test shm_ints isa Vector{Int} && length(shm_ints) == 64
            @test all(iszero, shm_ints)                  # new pages are zero
            # Each process writes its slot, through a closure using the
            # global: each has its own binding, the closure carries none.
            for p in everyone
                remotecall_fetch(() -> (shm_ints[myid()] = 100 * myid(); nothing), p)
            end
            want = [i in everyone ? 100i : 0 for i in 1:64]
            @test shm_ints == want
            @test all(p -> remotecall_fetch(() -> shm_ints == want, p), everyone)
            # Same memory: a write on one worker is read on another at once.
            a, b = mine
            remotecall_fetch(() -> (shm_ints[64] = -1; nothing), a)
            @test remotecall_fetch(() -> shm_ints[64], b) == -1
            # Created again: replaced by a new segment (as PTools), bound everywhere.
            old = shm_ints
            pmap_shm_create(ShmCfg(:shm_ints, Int, 8), SHM_PFX)
            @test length(shm_ints) == 8 && all(iszero, shm_ints) && shm_ints !== old
            @test old[64] == -1                          # still valid while reachable
            @test all(p -> remotecall_fetch(() -> length(shm_ints), p) == 8, everyone)
            @test length(shm_here("shm_ints")) == 1
            shm_ints[2] = 5
            remotecall_fetch(() -> (global shm_kept = reshape(shm_ints, 2, 4); nothing), a)
            unlink_shm(ShmCfg(:shm_ints, Int, 8), SHM_PFX)
            @test shm_ints === nothing
            @test all(p -> remotecall_fetch(() -> shm_ints === nothing, p), everyone)
            @test isempty(shm_here())
            # A reshaped array still reaches the memory: mapped until it goes.
            @test remotecall_fetch(shm_mappings, a, SHM_PFX) == 1
            @test remotecall_fetch(() -> shm_kept[2, 1], a) == 5
            remotecall_fetch(() -> (global shm_kept = nothing), a)
            # Unreachable now on the workers: their mappings go with the arrays.
            @test all(p -> remotecall_fetch(shm_mappings, p, SHM_PFX) == 0, mine)
        end

        @testset "element types and 1, 2 and 3 dimensions" begin
            cfgs = [ShmCfg(:shm_i8, Int8, 5), ShmCfg(:shm_u16, UInt16, (2, 3)), ShmCfg(:shm_f32, Float32, (2, 3, 4)),
                    ShmCfg(:shm_c64, ComplexF64, 7), ShmCfg(:shm_bool, Bool, (4, 4)), ShmCfg(:shm_pt, ShmPoint, 3),
                    ShmCfg(:shm_f64, Float64, (10, 10))]
            pmap_shm_create(cfgs, SHM_PFX)
            @test length(shm_here()) == length(cfgs)
            for c in cfgs
                want = (Array{c.stype,length(PTools.dims_of(c))}, PTools.dims_of(c))
                @test (typeof(getfield(Main, c.sname)), size(getfield(Main, c.sname))) == want
                @test remotecall_fetch(s -> (v = getfield(Main, s); (typeof(v), size(v))), mine[1], c.sname) == want
            end
            remotecall_fetch(mine[2]) do
                shm_i8 .= Int8.(-2:2)
                shm_u16 .= reshape(UInt16(1):UInt16(6), 2, 3)
                shm_f32 .= reshape(Float32.(1:24) ./ 2, 2, 3, 4)
                shm_c64 .= (1:7) .+ 2im
                shm_bool .= [isodd(i + j) for i in 1:4, j in 1:4]
                shm_pt .= [ShmPoint(i / 4, Int32(-i)) for i in 1:3]
                shm_f64[3, 7] = pi
                nothing
            end
            @test shm_i8 == Int8.(-2:2)
            @test shm_u16 == reshape(UInt16(1):UInt16(6), 2, 3)
            @test shm_f32[2, 3, 4] == 12f0 && shm_f32 == reshape(Float32.(1:24) ./ 2, 2, 3, 4)
            @test shm_c64 == (1:7) .+ 2im
            @test shm_bool == [isodd(i + j) for i in 1:4, j in 1:4]
            @test shm_pt == [ShmPoint(i / 4, Int32(-i)) for i in 1:3]
            @test shm_f64[3, 7] == Float64(pi)
            @test count(!iszero, shm_f64) == 1
            @test remotecall_fetch(() -> shm_pt[2].k + shm_f32[1, 1, 2], mine[1]) == -2 + 3.5f0
            # A segment of no element, and a zero-dimensional one (one element).
            pmap_shm_create([ShmCfg(:shm_empty, Float64, (0, 3)), ShmCfg(:shm_scalar, Int, ())], SHM_PFX)
            @test size(shm_empty) == (0, 3) && size(shm_scalar) == () && shm_scalar[] == 0
            remotecall_fetch(() -> (shm_scalar[] = 42; nothing), mine[1])
            @test shm_scalar[] == 42
            unlink_shm([cfgs; :shm_empty; :shm_scalar], SHM_PFX)
            @test isempty(shm_here())
            @test all(s -> getfield(Main, s) === nothing, [:shm_i8, :shm_pt, :shm_scalar])
            @test_throws ArgumentError ShmCfg(:bad, Vector{Int}, 3)      # not a bits type
            @test_throws ArgumentError ShmCfg(:bad, Int, (2, -1))
            e = try pmap_shm_create(ShmCfg(Symbol("bad.name"), Int, 1), SHM_PFX) catch e; e end
            @test e isa ClusterError && occursin("letters, digits", e.msg)
            # A name Main cannot rebind: an error, and nothing is left.
            Core.eval(Main, :(const shm_taken = 1))
            e = try pmap_shm_create(ShmCfg(:shm_taken, Int, 2), SHM_PFX) catch e; e end
            @test e isa ErrorException && occursin("cannot be bound to Main.shm_taken on process 1", e.msg)
            @test isempty(shm_here()) && shm_taken === 1
            unlink_shm(:never_made, SHM_PFX)              # ignored, as PTools
            @test isempty(shm_here())
        end

        @testset "a segment larger than /dev/shm is an error at creation" begin
            too_big = dev_shm_bytes() + 64 << 20
            e = try pmap_shm_create([ShmCfg(:shm_small, UInt8, 16), ShmCfg(:shm_huge, UInt8, too_big)], SHM_PFX) catch e; e end
            @test e isa ClusterError && e.status == LibCluster.CAPI.CLUSTER_ERR_IO
            @test occursin("no room in /dev/shm", e.msg) && occursin(string(too_big), e.msg)
            @test isempty(shm_here())                     # the first one is gone too
            @test !isdefined(Main, :shm_huge) && !isdefined(Main, :shm_small)
        end

        @testset "server tasks: PTools' example" begin
            shmcfg = [ShmCfg(:svar1, Int32, 64 * 1024), ShmCfg(:svar2, UInt8, (100, 100))]
            h = start_stasks(shmcfg, SHM_PFX)
            ntasks = count_stasks(h)
            @test ntasks == nworkers() && h.pids == workers()
            @test length(shm_here()) == 2
            svar1 = task_local_storage(:svar1)
            @test svar1 isa Vector{Int32} && length(svar1) == 64 * 1024 && all(iszero, svar1)
            @test size(task_local_storage(:svar2)) == (100, 100)
            offset_list = [i for i in 1:ntasks]
            ntasks_list = [ntasks for i in 1:ntasks]
            resp = pmap_stasks(h, (offset, ntasks) -> begin
                                   svar1 = task_local_storage(:svar1)
                                   svar2 = task_local_storage(:svar2)
                                   mypid = myid()
                                   for x in offset:ntasks:64*1024
                                       svar1[x] = mypid
                                   end
                                   true
                               end, offset_list, ntasks_list)
            @test resp == (:ok, Any[true for _ in 1:ntasks])
            @test all(x -> svar1[x] == h.pids[mod1(x, ntasks)], 1:64*1024)
            stop_stasks(h, shmcfg, SHM_PFX)
            @test isempty(shm_here())
            @test !haskey(task_local_storage(), :svar1)
            e = try pmap_stasks(h, () -> 1) catch e; e end
            @test e isa ErrorException && occursin("stopped", e.msg)
        end

        @testset "server tasks keep state, check lists, report errors" begin
            h = start_stasks()
            n = count_stasks(h)
            # State kept with task_local_storage is there in the next call:
            # the same task serves every call.
            @test pmap_stasks(h, x -> (task_local_storage(:acc, x); objectid(current_task())), 1:n)[1] == :ok
            ids = pmap_stasks(h, () -> objectid(current_task()))[2]
            @test pmap_stasks(h, () -> objectid(current_task())) == (:ok, ids)
            for round in 1:3
                @test pmap_stasks(h, x -> task_local_storage(:acc, task_local_storage(:acc) + x), fill(10, n)) ==
                      (:ok, Any[i + 10round for i in 1:n])
            end
            @test pmap_stasks(h, (p, q) -> (myid(), p * q), 1:n, 2:n+1) == (:ok, Any[(h.pids[i], i * (i + 1)) for i in 1:n])
            # Lists of the wrong length are refused, every one of them.
            @test_throws DimensionMismatch pmap_stasks(h, x -> x, 1:n+1)
            @test_throws DimensionMismatch pmap_stasks(h, (x, y) -> x, 1:n, 1:n-1)
            e = try pmap_stasks(h, x -> x, Int[]) catch e; e end
            @test e isa DimensionMismatch && occursin("$n server tasks", e.msg)
            # A failing call is reported for its task, naming its worker; the task serves on.
            st, resp = pmap_stasks(h, i -> i == 2 ? error("task 2 fails") : i, 1:n)
            @test st == [i == 2 ? :err : :ok for i in 1:n]
            @test resp[2] isa RemoteException && resp[2].pid == h.pids[2]
            @test resp[2].captured.ex isa ErrorException && resp[2].captured.ex.msg == "task 2 fails"
            @test occursin("On worker $(h.pids[2])", sprint(showerror, resp[2]))
            @test [resp[i] for i in 1:n if i != 2] == [i for i in 1:n if i != 2]
            @test pmap_stasks(h, () -> task_local_storage(:acc)) == (:ok, Any[i + 30 for i in 1:n])
            @test pmap_stasks(h, () -> objectid(current_task())) == (:ok, ids)
            # A worker that dies: ProcessExitedException for its task, no hang.
            victim = mine[2]
            vi = findfirst(==(victim), h.pids)
            ospid = remotecall_fetch(getpid, victim)
            t = @async pmap_stasks(h, () -> (myid() == victim && sleep(60); myid()))
            sleep(0.5)
            run(`kill -9 $ospid`)
            st, resp = within(20, "pmap_stasks with a dead worker") do
                fetch(t)
            end
            @test st[vi] == :err && resp[vi] isa ProcessExitedException && resp[vi].worker_id == victim
            @test all(i -> st[i] == :ok && resp[i] == h.pids[i], setdiff(1:n, vi))
            stop_stasks(h)                                # the dead worker's task is skipped
        end

        @testset "the orphans of a SIGKILLed cluster are found and removed" begin
            pmap_shm_create(ShmCfg(:alive, UInt8, 16), SHM_PFX)
            line = within(120, "the other cluster to start") do
                readline(child)
            end
            @test line == "ready 1 ok 7000 7"             # alone, its server task on process 1
            @test length(shm_theirs("orphan")) == 1
            @test isempty(shm_orphans(SHM_PFX))           # its head lives
            kill(child, Base.SIGKILL)
            within(20, "the other cluster to die") do
                wait(child)
            end
            orphan = only(shm_theirs("orphan"))
            @test shm_orphans(SHM_PFX) == [orphan]       # this cluster's live one is not listed
            @test orphan in shm_orphans()
            @test isempty(shm_orphans("another$SHM_PFX"))
            @test remove_shm_orphans(SHM_PFX) == [orphan]
            @test isempty(shm_theirs()) && length(shm_here("alive")) == 1
            @test isempty(shm_orphans(SHM_PFX))
            unlink_shm(:alive, SHM_PFX)
            @test isempty(shm_here())
        end
    finally
        process_running(child) && kill(child, Base.SIGKILL)
        live = filter(in(procs()), mine)
        isempty(live) || rmprocs(live)
        for n in [shm_here(); shm_theirs()]
            rm(joinpath("/dev/shm", n); force = true)
        end
        rm(child_file; force = true)
    end
    @test isempty(shm_here()) && isempty(shm_theirs())
end
